package flatten

import "strings"

// aliasTable holds the configured aliases by name. It is what every query for an address looks
// in first, so it is laid out for the answer path with many aliases, where the cost of a lookup
// is the cache lines it loads that are not in the CPU's caches: with 100,000 aliases and 10,000
// of them queried, every line a lookup loads for its alias pushes out something the server needs
// next (its code's tables, the kernel's socket buffers).
//
// A Go map from string to alias loaded three lines per lookup: the map's slot, the key's bytes
// (a string is a pointer to them), and the pinned slot the alias points at. Here a name of up to
// maxShortName bytes, the usual, is its own key, lowercased into a fixed array held in the map's
// slot, and the value is a number: the pinned target's index in the cache's array. The map's
// slot is 28 bytes with no pointer in it, so a lookup loads the map's slot and then the pinned
// slot, no name is a heap object of its own, and the collector never scans the map. With 50,000
// aliases that is 35 bytes less per alias (TestMemoryPerAlias: 308, was 343). Served over 10,000
// of 100,000 aliases, the queries per second did not change beyond what two runs of one binary
// differ by (README, Performance).
//
// Longer names are kept by string in a second map. An alias with more than one target, and every
// alias until pin, refers to a targetList instead.
type aliasTable struct {
	short map[shortName]aliasRef
	long  map[string]aliasRef // names over maxShortName bytes, lowercased
	lists []*targetList       // by aliasRef &^ listRef
	pins  []pinnedTarget      // the cache's pinned targets (cache.pins), by aliasRef; set by pin
}

// shortName is a name of up to maxShortName bytes as a map key: its length, then its bytes in
// lower case (ASCII only: DNS names compare case-insensitively in ASCII alone, RFC 4343), then
// zeros. The length keeps "a." apart from "a.\x00".
type shortName [24]byte

const maxShortName = len(shortName{}) - 1

// aliasRef says where an alias's targets are: with listRef set, in lists; otherwise its single
// target's pinned slots, by index in pins.
type aliasRef uint32

const listRef aliasRef = 1 << 31

func newAliasTable() aliasTable {
	return aliasTable{short: make(map[shortName]aliasRef), long: make(map[string]aliasRef)}
}

// asciiLower is b in lower case, for ASCII letters only.
func asciiLower(b byte) byte {
	if 'A' <= b && b <= 'Z' {
		return b + 'a' - 'A'
	}
	return b
}

// shortKey returns the key of a name of up to maxShortName bytes, in any case.
func shortKey(name string) shortName {
	var k shortName
	k[0] = byte(len(name))
	for i := 0; i < len(name); i++ {
		k[i+1] = asciiLower(name[i])
	}
	return k
}

// longKey returns the key of a name over maxShortName bytes, in any case. strings.ToLower does
// not allocate for a name already in lower case.
func longKey(name string) string {
	return strings.ToLower(name)
}

// ref returns where the alias of name, in any case, keeps its targets.
func (t *aliasTable) ref(name string) (aliasRef, bool) {
	if len(name) <= maxShortName {
		ref, ok := t.short[shortKey(name)]
		return ref, ok
	}
	ref, ok := t.long[longKey(name)]
	return ref, ok
}

// setRef stores where the alias of name keeps its targets.
func (t *aliasTable) setRef(name string, ref aliasRef) {
	if len(name) <= maxShortName {
		t.short[shortKey(name)] = ref
	} else {
		t.long[longKey(name)] = ref
	}
}

// get returns the alias configured at name, in any case. It does not allocate.
func (t *aliasTable) get(name string) (alias, bool) {
	ref, ok := t.ref(name)
	if !ok {
		return alias{}, false
	}
	return t.alias(ref), true
}

func (t *aliasTable) alias(ref aliasRef) alias {
	if ref&listRef != 0 {
		return alias{more: t.lists[ref&^listRef]}
	}
	return alias{one: &t.pins[ref]}
}

// add configures an alias at name (a lowercased FQDN) to targets, in order of preference. It
// reports false, changing nothing, when name has an alias already.
func (t *aliasTable) add(name string, targets []string) bool {
	if _, dup := t.ref(name); dup {
		return false
	}
	t.lists = append(t.lists, &targetList{targets: targets})
	t.setRef(name, listRef|aliasRef(len(t.lists)-1))
	return true
}

// len is the number of aliases.
func (t *aliasTable) len() int { return len(t.short) + len(t.long) }

// each calls fn for every alias, in no particular order, with its name (lowercased FQDN). A short
// name is made into a string for each call: where the names are not needed, eachAlias.
func (t *aliasTable) each(fn func(name string, a alias)) {
	for k, ref := range t.short {
		fn(string(k[1:1+k[0]]), t.alias(ref))
	}
	for name, ref := range t.long {
		fn(name, t.alias(ref))
	}
}

// eachAlias calls fn for every alias, in no particular order, without its name: pin at startup
// and the health checker on every round walk all of them, and would otherwise allocate a string
// per alias for nothing.
func (t *aliasTable) eachAlias(fn func(a alias)) {
	for _, ref := range t.short {
		fn(t.alias(ref))
	}
	for _, ref := range t.long {
		fn(t.alias(ref))
	}
}

// pin makes c's pinned slots for every alias's targets (cache.pinTargets) and points each alias
// at them: a single target by its index in c.pins, more than one by a list of their slots per
// address type. Every target is pinned, so a failover finds the next target already resolved,
// and a recovered primary is seen at its next refresh. Called once, by initCache.
func (t *aliasTable) pin(c *cache) {
	var targets []string
	t.eachAlias(func(a alias) { targets = append(targets, a.targets()...) })
	c.pinTargets(targets)

	var lists []*targetList // only the aliases with more than one target keep a list
	repin := func(a alias) aliasRef {
		ts := a.targets()
		if len(ts) == 1 {
			if i, ok := c.pinIndex(ts[0]); ok {
				return aliasRef(i)
			}
		}
		n := len(ts)
		both := make([]*slot, 2*n) // one array for both types' pointers
		l := &targetList{targets: ts, slots: [2][]*slot{both[:n:n], both[n:]}}
		for i, target := range ts {
			p := c.pinTarget(target)
			l.slots[0][i], l.slots[1][i] = &p.slots[0], &p.slots[1]
		}
		lists = append(lists, l)
		return listRef | aliasRef(len(lists)-1)
	}
	// Values are read through the old lists and pins while the new refs are stored: the new
	// ones take effect together, below.
	for k, ref := range t.short {
		t.short[k] = repin(t.alias(ref))
	}
	for name, ref := range t.long {
		t.long[name] = repin(t.alias(ref))
	}
	t.lists, t.pins = lists, c.pins
}
