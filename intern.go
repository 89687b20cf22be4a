package flatten

import (
	"sync"

	"github.com/miekg/dns"
)

// maxInterned bounds the address RRsets and the names remembered for sharing.
const maxInterned = 1 << 16

// shared is the process's interner.
var shared interner

// interner lets entries share one copy of what repeats between them. Many aliases typically end
// at a few servers (the agency pattern: every client's name follows one of a handful of server
// names): an address RRset unpacked from each upstream answer costs about 250 bytes, and with
// 100,000 aliases sharing saves most of the cache's memory; the names that chains lead to repeat
// the same way. What is shared is never modified (renamed copies the records for each answer).
// Both maps are bounded: when one is full it starts over, and later entries share with each other.
// There is one for the process (shared), so that blocks that follow the same servers share too.
//
// Go's unique package would share names without a bound, but its canonical copy is dropped once
// no Handle refers to it, and entries keep the string, not a Handle: after the next collection
// the same name would be copied again.
type interner struct {
	mu    sync.Mutex
	sets  map[string]*addrSet
	names map[string]string
}

// addrs returns the shared set holding rrs; nil for none.
func (in *interner) addrs(rrs []dns.RR) *addrSet {
	if len(rrs) == 0 {
		return nil
	}
	// The key is everything an answer uses: owner, type, TTL and the addresses in order.
	h := rrs[0].Header()
	key := make([]byte, 0, len(h.Name)+8+16*len(rrs))
	key = append(key, h.Name...)
	key = append(key, byte(h.Rrtype>>8), byte(h.Rrtype), byte(h.Ttl>>24), byte(h.Ttl>>16), byte(h.Ttl>>8), byte(h.Ttl))
	for _, rr := range rrs {
		if rr.Header().Ttl != h.Ttl {
			return &addrSet{rrs: rrs} // TTLs that differ within the set: rare; not shared
		}
		switch v := rr.(type) {
		case *dns.A:
			key = append(key, v.A.To16()...)
		case *dns.AAAA:
			key = append(key, v.AAAA.To16()...)
		default:
			return &addrSet{rrs: rrs}
		}
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if shared, ok := in.sets[string(key)]; ok {
		return shared
	}
	if in.sets == nil || len(in.sets) >= maxInterned {
		in.sets = make(map[string]*addrSet)
	}
	set := &addrSet{rrs: rrs}
	in.sets[string(key)] = set
	return set
}

// name returns the shared copy of name.
func (in *interner) name(name string) string {
	in.mu.Lock()
	defer in.mu.Unlock()
	if shared, ok := in.names[name]; ok {
		return shared
	}
	if in.names == nil || len(in.names) >= maxInterned {
		in.names = make(map[string]string)
	}
	in.names[name] = name
	return name
}
