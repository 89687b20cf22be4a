package flatten

import (
	"context"
	"strings"

	"github.com/coredns/coredns/plugin/metadata"
	"github.com/coredns/coredns/request"
)

// Metadata labels published for the *metadata* plugin, so that *log* can print, per query, what
// was followed and where the answer came from.
const (
	metaTarget = "flatten/target" // the target that answered (of an alias's several)
	metaSource = "flatten/source" // fresh, resolved, stale, fallback or servfail
	metaChain  = "flatten/chain"  // the chain followed: "a.example. -> b.example."
)

// Metadata implements metadata.Provider. It runs before ServeDNS for every query when *metadata*
// is in the server block. The labels are empty until a flattened answer sets them (noteAnswer).
func (f *Flatten) Metadata(ctx context.Context, _ request.Request) context.Context {
	f.metadataOn.Store(true)
	for _, label := range []string{metaTarget, metaSource, metaChain} {
		metadata.SetValueFunc(ctx, label, func() string { return "" })
	}
	return ctx
}

// noteAnswer records where a flattened answer came from, for the metadata functions: the target,
// the source, and the hops of e (nil when the answer is not from the cache). Without *metadata*
// it costs one atomic load. It takes the entry rather than its hops so that the answer path does
// not load the hops: they are an object of their own, and with 100,000 aliases loading them cost
// a cache miss per answer (about a tenth of BenchmarkManyAliases's time per hit).
func (f *Flatten) noteAnswer(ctx context.Context, target, source string, e *entry) {
	if !f.metadataOn.Load() {
		return
	}
	metadata.SetValueFunc(ctx, metaTarget, func() string { return target })
	metadata.SetValueFunc(ctx, metaSource, func() string { return source })
	metadata.SetValueFunc(ctx, metaChain, func() string {
		if e == nil {
			return chainString(target, nil)
		}
		return chainString(target, e.hops())
	})
}

// chainString spells a followed chain from target: every hop's name, ending at the name that
// owns the addresses.
func chainString(target string, hops []hop) string {
	if target == "" {
		return ""
	}
	var b strings.Builder
	b.WriteString(target)
	for _, h := range hops {
		b.WriteString(" -> ")
		b.WriteString(h.target)
	}
	return b.String()
}
