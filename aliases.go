package flatten

import (
	"slices"
	"strings"
)

// aliasTable holds the configured aliases (`alias NAME TARGET...`) by name, a lowercased FQDN.
// It is built by parse and never changes after: queries read it without a lock.
type aliasTable map[string]alias

// alias is the targets of one configured name, in order of preference: each target's pinned
// slots, which the cache resolves and refreshes and the alias reads its answer from. Aliases
// that name the same target share its slots.
type alias []*pinnedTarget

// get returns the alias configured at name, in any case. strings.ToLower does not allocate for a
// name already in lower case, which is how resolvers ask.
func (t aliasTable) get(name string) (alias, bool) {
	a, ok := t[strings.ToLower(name)]
	return a, ok
}

// len is the number of aliases.
func (t aliasTable) len() int { return len(t) }

// targets returns every configured target, once each, sorted by name: the cache's pinned targets.
func (t aliasTable) targets() []*pinnedTarget {
	var out []*pinnedTarget
	for _, a := range t {
		out = append(out, a...)
	}
	slices.SortFunc(out, func(a, b *pinnedTarget) int { return strings.Compare(a.name(), b.name()) })
	return slices.Compact(out)
}

// targets returns a's target names, in order of preference.
func (a alias) targets() []string {
	out := make([]string, len(a))
	for i, p := range a {
		out[i] = p.name()
	}
	return out
}

// slots appends to buf the slot of each target for an address type (qtypeIndex), in order of
// preference. The answer path passes an array on its stack, with room for the usual single
// target, so that it allocates nothing.
func (a alias) slots(qi int, buf []*slot) []*slot {
	for _, p := range a {
		buf = append(buf, &p.slots[qi])
	}
	return buf
}
