package flatten

import (
	"slices"
	"strings"
)

// aliasTable holds the configured aliases (`alias NAME TARGET...`) by name, a lowercased FQDN.
// It is built by parse and never changes after: queries read it without a lock.
//
// Nearly every alias has one target, and those are kept apart from the few with several: a map
// value of one pointer instead of a slice (8 bytes instead of 24, and no array of one pointer
// beside it) keeps 100,000 aliases at about 340 bytes each instead of 371 (TestMemoryPerAlias).
// Up to fewAliases of them are kept in a slice instead, searched in order: a Go map holds 8 of
// them in about 250 bytes, a quarter of what a server block with two aliases costs
// (TestMemoryPerBlock), where the slice takes 48.
type aliasTable struct {
	few  []oneTarget                // the aliases with a single target, while there are few
	one  map[string]*pinnedTarget   // the aliases with a single target, once there are more
	more map[string][]*pinnedTarget // the aliases with several, in order of preference
}

// fewAliases is the most single-target aliases kept in aliasTable.few.
const fewAliases = 8

// oneTarget is an alias with a single target.
type oneTarget struct {
	name   string
	target *pinnedTarget
}

func newAliasTable() aliasTable { return aliasTable{} }

// alias is the targets of one configured name, in order of preference: each target's pinned
// slots, which the cache resolves and refreshes and the alias reads its answer from. Aliases
// that name the same target share its slots.
type alias struct {
	one  *pinnedTarget   // the only target; nil when there are several
	more []*pinnedTarget // the targets, when there are several
}

// get returns the alias configured at name, in any case. strings.ToLower does not allocate for a
// name already in lower case, which is how resolvers ask.
func (t *aliasTable) get(name string) (alias, bool) {
	name = strings.ToLower(name)
	for i := range t.few {
		if t.few[i].name == name {
			return alias{one: t.few[i].target}, true
		}
	}
	if p, ok := t.one[name]; ok {
		return alias{one: p}, true
	}
	more, ok := t.more[name]
	return alias{more: more}, ok
}

// add configures the alias name (a lowercased FQDN) to targets, in order of preference.
func (t *aliasTable) add(name string, targets []*pinnedTarget) {
	switch {
	case len(targets) == 1 && t.one == nil && len(t.few) < fewAliases:
		t.few = append(t.few, oneTarget{name, targets[0]})
	case len(targets) == 1:
		if t.one == nil {
			t.one = make(map[string]*pinnedTarget, 2*fewAliases)
			for _, a := range t.few {
				t.one[a.name] = a.target
			}
			t.few = nil
		}
		t.one[name] = targets[0]
	case t.more == nil: // few blocks have one: with 10,000 blocks, an empty map each adds up
		t.more = map[string][]*pinnedTarget{name: targets}
	default:
		t.more[name] = targets
	}
}

// len is the number of aliases.
func (t *aliasTable) len() int { return len(t.few) + len(t.one) + len(t.more) }

// each calls fn for every alias and its name, in no particular order.
func (t *aliasTable) each(fn func(name string, a alias)) {
	for _, a := range t.few {
		fn(a.name, alias{one: a.target})
	}
	for name, p := range t.one {
		fn(name, alias{one: p})
	}
	for name, more := range t.more {
		fn(name, alias{more: more})
	}
}

// states counts the aliases whose every address type c answers fresh, and those with a type it
// answers stale, as a query would find them now: from the first target, in order, that has a
// fresh entry, else from one that has an entry within the stale window.
func (t *aliasTable) states(c *cache) (fresh, stale, unresolved int) {
	now := c.now()
	var buf [1]*slot
	t.each(func(_ string, a alias) {
		allFresh, anyStale := true, false
		for qi := range qtypes {
			typeFresh, typeStale := false, false
			for _, s := range a.slots(qi, buf[:0]) {
				e := s.good.Load()
				typeFresh = typeFresh || (e != nil && now.Before(e.expires()))
				typeStale = typeStale || c.usable(e, now)
			}
			allFresh = allFresh && typeFresh
			anyStale = anyStale || (!typeFresh && typeStale)
		}
		switch {
		case allFresh:
			fresh++
		case anyStale:
			stale++
		default:
			unresolved++
		}
	})
	return fresh, stale, unresolved
}

// repin points every alias at pin(target) for each of its targets instead of the target parse
// made: the pool's, shared with the other blocks that name it.
func (t *aliasTable) repin(pin func(*pinnedTarget) *pinnedTarget) {
	for i, a := range t.few {
		t.few[i].target = pin(a.target)
	}
	for name, p := range t.one {
		t.one[name] = pin(p)
	}
	for _, more := range t.more {
		for i, p := range more {
			more[i] = pin(p)
		}
	}
}

// targets returns every configured target, once each, sorted by name (parse makes one pinned
// target per name).
func (t *aliasTable) targets() []*pinnedTarget {
	out := make([]*pinnedTarget, 0, t.len())
	t.each(func(_ string, a alias) { out = append(out, a.pinned()...) })
	return slices.Compact(sortPins(out))
}

// sortPins sorts targets by name, as the cache searches its pinned targets.
func sortPins(targets []*pinnedTarget) []*pinnedTarget {
	slices.SortFunc(targets, func(a, b *pinnedTarget) int { return strings.Compare(a.name(), b.name()) })
	return targets
}

// pinned returns a's targets' slots, in order of preference. Not for the answer path: for a
// single target it allocates the slice.
func (a alias) pinned() []*pinnedTarget {
	if a.one != nil {
		return []*pinnedTarget{a.one}
	}
	return a.more
}

// targets returns a's target names, in order of preference.
func (a alias) targets() []string {
	var out []string
	for _, p := range a.pinned() {
		out = append(out, p.name())
	}
	return out
}

// slots appends to buf the slot of each target for an address type (qtypeIndex), in order of
// preference. The answer path passes an array on its stack, with room for a single target, so
// that it allocates nothing.
func (a alias) slots(qi int, buf []*slot) []*slot {
	if a.one != nil {
		return append(buf, &a.one.slots[qi])
	}
	for _, p := range a.more {
		buf = append(buf, &p.slots[qi])
	}
	return buf
}
