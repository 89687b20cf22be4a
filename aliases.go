package flatten

import (
	"hash/maphash"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"unsafe"
)

// aliasTable holds the configured aliases by name. It is what every query for an address looks
// in first, so it is laid out for the answer path with many aliases, where the cost of an answer
// is the cache lines it loads that are not in the CPU's caches: with 100,000 aliases and 10,000
// of them queried, every line an answer loads for its alias pushes out something the server needs
// next (its code's tables, the kernel's socket buffers).
//
// A Go map from name to pinned slot, whose good entry holds the addresses, made an answer load
// four such lines: the map's control word and slot, the pinned slot, the entry. Served over
// 10,000 of 100,000 aliases that cost 13% of the queries per second of one alias (README,
// Performance). Here a name of up to maxShortName bytes, the usual, has a cell of its own: one
// cache line that holds the name, lowercased, and a copy of what a fresh answer needs for each
// address type (aliasCell). A fresh answer loads that line and the address RRset, which is
// shared and hot. A Go map could not hold the copy: its values cannot be updated while it is
// read, and its slots are not laid out a line each.
//
// The cells are laid out by a perfect hash of the short names (freeze): a name has exactly one
// cell it can be in, so a lookup loads one cell, holding the name or not, and the table has no
// empty cells to skip over. An open-addressing table kept at most half full, probed linearly,
// took 1.3 to 1.5 loads on average for a name it holds and 1.8 to 2.5 for one it does not
// (Knuth's estimates for a fill of 0.38 to 0.5), and 168 bytes per alias at 100,000 instead of
// 64. The names are known before the first query (add, then pin), so the table is built once.
// Longer names are kept by string in a map and answered through their pinned slots, as is an
// alias with more than one target: it refers to a targetList.
type aliasTable struct {
	adding map[shortName]aliasRef // the short names until freeze lays them out in cells; then nil
	cells  []aliasCell
	disp   []int32 // by bucket: where the bucket's names are (cell)
	used   int     // cells holding a name
	seed   maphash.Seed
	long   map[string]aliasRef // names over maxShortName bytes, lowercased
	lists  []*targetList       // by aliasRef &^ listRef
	pins   []pinnedTarget      // the cache's pinned targets (cache.pins), by aliasRef; set by pin

	// For each pinned target (by index in pins), the first cell that copies its entries, and for
	// each cell the next one that copies the same target's (the agency pattern: many aliases, one
	// target); -1 ends the list. Read by publish, which is called for every entry stored in a
	// pinned slot; set by pin.
	firstCell []int32
	nextCell  []int32
}

// aliasCell is an alias with a short name: its key and where its targets are, and, for a single
// target, a copy of the address RRset and expiry of the target's fresh entry for each address
// type, for the answer path (fresh). It is 64 bytes, one cache line.
//
// The copy is written by publish whenever the target's pinned slot gets a new entry, under a
// sequence lock: seq is odd while a writer changes exp and set, so a reader that sees the same
// even seq before and after reading them has read one entry's pair, never the expiry of one and
// the addresses of another. Every field a reader loads is atomic: the race detector stays quiet
// and Go's memory model orders them.
type aliasCell struct {
	key shortName
	ref aliasRef
	seq atomic.Uint32
	// exp is when the copied entry stops being fresh, in nanoseconds since clockBase, and set its
	// addresses; nil when there is nothing to answer from: no entry, a negative one, a list of
	// targets, a name not yet pinned.
	exp [2]atomic.Int64
	set [2]atomic.Pointer[addrSet]
}

// shortName is a name of up to maxShortName bytes as a key: its length, then its bytes in lower
// case (ASCII only: DNS names compare case-insensitively in ASCII alone, RFC 4343), then zeros.
// The length keeps "a." apart from "a.\x00", and a zero length marks an empty cell.
type shortName [24]byte

const maxShortName = len(shortName{}) - 1

// aliasRef says where an alias's targets are: with listRef set, in lists; otherwise its single
// target's pinned slots, by index in pins.
type aliasRef uint32

const listRef aliasRef = 1 << 31

func newAliasTable() aliasTable {
	return aliasTable{seed: maphash.MakeSeed(), adding: map[shortName]aliasRef{}, long: map[string]aliasRef{}}
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

// The perfect hash is "hash, displace" (Belazzougui, Botelho, Dietzfelbinger, 2009, without
// the compression): a name's 64-bit hash picks a bucket of about bucketLoad names; the bucket's
// displacement d, found by freeze, sends each of its names to a cell of its own (cellFor), or, for
// a bucket of one name placed last, is the cell itself (^d). disp is 4 bytes per bucket, 1 per
// alias, small enough to stay in the CPU's caches.
const bucketLoad = 4

// reduce maps x onto [0, n) without a division (Lemire, 2019).
func reduce(x uint32, n int) uint32 { return uint32(uint64(x) * uint64(n) >> 32) }

// bucketOf is the bucket of the name with hash h, among n buckets.
func bucketOf(h uint64, n int) uint32 { return reduce(uint32(h>>32), n) }

// cellFor is the cell, among m, of the name with hash h in a bucket displaced by d >= 0. The
// hash is remixed with d (the SplitMix64 finalizer), so each d is a new draw.
func cellFor(h uint64, d int32, m int) uint32 {
	x := h ^ uint64(d)*0x9e3779b97f4a7c15
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	return reduce(uint32(x^x>>31), m)
}

// cell returns the cell of the short name k, or nil: the one cell k can be in, holding k or not.
func (t *aliasTable) cell(k shortName) *aliasCell {
	if len(t.cells) == 0 {
		return nil
	}
	h := maphash.Bytes(t.seed, k[:])
	var i uint32
	if d := t.disp[bucketOf(h, len(t.disp))]; d >= 0 {
		i = cellFor(h, d, len(t.cells))
	} else {
		i = uint32(^d)
	}
	if c := &t.cells[i]; c.key == k {
		return c
	}
	return nil
}

// minCells is the smallest table: 32 KB, which the runtime allocates as a large object, on a page
// of its own, so that every cell starts a cache line. A smaller allocation of a type with
// pointers starts 8 bytes into its block, behind the allocator's header, and each cell would
// straddle two lines. A larger table is one cell per name.
const minCells = 32 << 10 / int(unsafe.Sizeof(aliasCell{}))

// freeze lays the short names out in cells, by a perfect hash of this table's seed. A layout can
// fail only when two names have the same 64-bit hash, which no displacement separates; the
// table then takes another seed. Called by pin, once every alias is added.
func (t *aliasTable) freeze() {
	if len(t.adding) == 0 {
		t.adding = nil // no short names: no cells (a lookup finds none)
		return
	}
	keys := make([]shortName, 0, len(t.adding))
	for k := range t.adding {
		keys = append(keys, k)
	}
	m := max(len(keys), minCells)
	for {
		at, disp, ok := layOut(keys, t.seed, m)
		if ok {
			t.cells, t.disp, t.used = make([]aliasCell, m), disp, len(keys)
			for i, k := range keys {
				t.cells[at[i]].key, t.cells[at[i]].ref = k, t.adding[k]
			}
			break
		}
		t.seed = maphash.MakeSeed()
	}
	t.adding = nil
}

// layOut places keys in m >= len(keys) cells: it returns each key's cell and the displacement of
// each bucket, or false when a bucket cannot be placed. Buckets are placed largest first, while
// most cells are free; each tries d = 0, 1, ... until all its names land in free cells, distinct.
// Buckets of one name are placed last, each in the next free cell, so the layout never searches
// long for the last few cells.
func layOut(keys []shortName, seed maphash.Seed, m int) (at []uint32, disp []int32, ok bool) {
	const maxTries = 1 << 20 // far above what a bucket needs (about 1 / free fraction^size)
	nb := max(1, len(keys)/bucketLoad)
	hash := make([]uint64, len(keys))
	start := make([]int32, nb+1) // the keys of bucket b are byBucket[start[b]:start[b+1]]
	for i := range keys {
		hash[i] = maphash.Bytes(seed, keys[i][:])
		start[bucketOf(hash[i], nb)+1]++
	}
	for b := range nb {
		start[b+1] += start[b]
	}
	byBucket := make([]int32, len(keys))
	fill := slices.Clone(start[:nb])
	for i := range keys {
		b := bucketOf(hash[i], nb)
		byBucket[fill[b]] = int32(i)
		fill[b]++
	}
	size := func(b int32) int32 { return start[b+1] - start[b] }
	order := make([]int32, nb)
	for b := range order {
		order[b] = int32(b)
	}
	slices.SortFunc(order, func(a, b int32) int { return int(size(b) - size(a)) })

	at = make([]uint32, len(keys))
	disp = make([]int32, nb)
	taken := make([]bool, m)
	free := 0 // every cell before it is taken, once the buckets of one name are placed
	for _, b := range order {
		names := byBucket[start[b]:start[b+1]]
		switch len(names) {
		case 0:
			continue // disp 0: a lookup lands in some cell, which does not hold its name
		case 1:
			for taken[free] {
				free++
			}
			taken[free], at[names[0]], disp[b] = true, uint32(free), ^int32(free)
			continue
		}
	try:
		for d := int32(0); ; d++ {
			if d == maxTries {
				return nil, nil, false
			}
			for j, i := range names {
				c := cellFor(hash[i], d, m)
				if taken[c] {
					for _, i := range names[:j] {
						taken[at[i]] = false
					}
					continue try
				}
				taken[c], at[i] = true, c
			}
			disp[b] = d
			break
		}
	}
	return at, disp, true
}

// ref returns where the alias of name, in any case, keeps its targets, and its cell for a short
// name (nil for a long one, and before freeze).
func (t *aliasTable) ref(name string) (aliasRef, *aliasCell, bool) {
	// Not the empty name, which no query has (the root is "."): its key would be an empty cell's.
	if 0 < len(name) && len(name) <= maxShortName {
		k := shortKey(name)
		if t.adding != nil {
			ref, ok := t.adding[k]
			return ref, nil, ok
		}
		if c := t.cell(k); c != nil {
			return c.ref, c, true
		}
		return 0, nil, false
	}
	ref, ok := t.long[longKey(name)]
	return ref, nil, ok
}

// get returns the alias configured at name, in any case. It does not allocate.
func (t *aliasTable) get(name string) (alias, bool) {
	ref, c, ok := t.ref(name)
	if !ok {
		return alias{}, false
	}
	a := t.alias(ref)
	a.cell = c
	return a, true
}

func (t *aliasTable) alias(ref aliasRef) alias {
	if ref&listRef != 0 {
		return alias{more: t.lists[ref&^listRef]}
	}
	return alias{one: &t.pins[ref]}
}

// add configures an alias at name (a lowercased FQDN) to targets, in order of preference. It
// reports false, changing nothing, when name has an alias already. Aliases are added before pin,
// which lays them out for good.
func (t *aliasTable) add(name string, targets []string) bool {
	if _, _, dup := t.ref(name); dup {
		return false
	}
	t.lists = append(t.lists, &targetList{targets: targets})
	ref := listRef | aliasRef(len(t.lists)-1)
	if len(name) <= maxShortName {
		t.adding[shortKey(name)] = ref
	} else {
		t.long[longKey(name)] = ref
	}
	return true
}

// len is the number of aliases.
func (t *aliasTable) len() int { return len(t.adding) + t.used + len(t.long) }

// eachShort calls fn for every short name's key and where its targets are.
func (t *aliasTable) eachShort(fn func(k shortName, ref aliasRef)) {
	for k, ref := range t.adding {
		fn(k, ref)
	}
	for i := range t.cells {
		if k := t.cells[i].key; k[0] != 0 {
			fn(k, t.cells[i].ref)
		}
	}
}

// each calls fn for every alias, in no particular order, with its name (lowercased FQDN). A short
// name is made into a string for each call: where the names are not needed, eachAlias.
func (t *aliasTable) each(fn func(name string, a alias)) {
	t.eachShort(func(k shortName, ref aliasRef) { fn(string(k[1:1+k[0]]), t.alias(ref)) })
	for name, ref := range t.long {
		fn(name, t.alias(ref))
	}
}

// eachAlias calls fn for every alias, in no particular order, without its name: pin at startup
// and the health checker on every round walk all of them, and would otherwise allocate a string
// per alias for nothing.
func (t *aliasTable) eachAlias(fn func(a alias)) {
	t.eachShort(func(_ shortName, ref aliasRef) { fn(t.alias(ref)) })
	for _, ref := range t.long {
		fn(t.alias(ref))
	}
}

// pin makes c's pinned slots for every alias's targets (cache.pinTargets) and points each alias
// at them: a single target by its index in c.pins, more than one by a list of their slots per
// address type. Every target is pinned, so a failover finds the next target already resolved,
// and a recovered primary is seen at its next refresh. The cells of single targets then copy
// their target's entries (publish), from what the slots hold now on. Called once, by initCache.
func (t *aliasTable) pin(c *cache) {
	t.freeze()
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
	for i := range t.cells {
		if t.cells[i].key[0] != 0 {
			t.cells[i].ref = repin(t.alias(t.cells[i].ref))
		}
	}
	for name, ref := range t.long {
		t.long[name] = repin(t.alias(ref))
	}
	t.lists, t.pins = lists, c.pins

	t.firstCell = make([]int32, len(t.pins))
	t.nextCell = make([]int32, len(t.cells))
	for i := range t.firstCell {
		t.firstCell[i] = -1
	}
	for i := range t.cells {
		t.nextCell[i] = -1
		if ref := t.cells[i].ref; t.cells[i].key[0] != 0 && ref&listRef == 0 {
			t.nextCell[i], t.firstCell[ref] = t.firstCell[ref], int32(i)
		}
	}
	c.onPinned = t.publish
	for i := range t.pins {
		for qi := range t.pins[i].slots {
			t.copyEntry(i, uint8(qi), t.pins[i].slots[qi].good.Load())
		}
	}
}

// publish copies e, just stored in the pinned slot s, to the cells of the aliases that answer
// from s. The cache calls it for every entry it stores in a pinned slot (cache.setGood).
func (t *aliasTable) publish(s *slot, e *entry) {
	i, ok := pinIndexIn(t.pins, s.name)
	if !ok || &t.pins[i].slots[s.qi] != s {
		return // a target pinned after pin (pinTarget), which only lists of targets use
	}
	t.copyEntry(i, s.qi, e)
}

// copyEntry copies e, the entry of type qi of the pinned target pins[i], to the cells of the
// aliases that answer from it.
func (t *aliasTable) copyEntry(i int, qi uint8, e *entry) {
	var exp int64
	var set *addrSet // nil for no entry or a negative one: the answer path then asks the slot
	if e != nil {
		exp, set = e.fetched+int64(e.lifetime()), e.set
	}
	for ci := t.firstCell[i]; ci >= 0; ci = t.nextCell[ci] {
		t.cells[ci].store(qi, exp, set)
	}
}

// store writes the copy for address type qi. Writers are rare (one per target, type and TTL)
// and may race with each other (a refresh of A and one of AAAA): each takes the cell by making
// seq odd, and spins while another has it.
func (c *aliasCell) store(qi uint8, exp int64, set *addrSet) {
	for {
		if s := c.seq.Load(); s&1 == 0 && c.seq.CompareAndSwap(s, s+1) {
			break
		}
		runtime.Gosched()
	}
	c.exp[qi].Store(exp)
	c.set[qi].Store(set)
	c.seq.Add(1)
}

// fresh returns the addresses of type qi an answer may be served from, and when they stop being
// fresh (nanoseconds since clockBase); false when the cell has none, or a writer is changing
// them. The caller compares the expiry with a time it takes after this call: the entry was
// stored before its copy, so that time is never before the entry was fetched.
func (c *aliasCell) fresh(qi int) (*addrSet, int64, bool) {
	s := c.seq.Load()
	exp, set := c.exp[qi].Load(), c.set[qi].Load()
	if s&1 != 0 || c.seq.Load() != s || set == nil {
		return nil, 0, false
	}
	return set, exp, true
}
