package flatten

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// TestAliasTableFindsEveryName: names of every length, on both sides of the short keys' bound,
// are found in any case and only as themselves; after pin, a single target answers from its
// pinned slots and several targets from their slots in order.
func TestAliasTableFindsEveryName(t *testing.T) {
	tab := newAliasTable()
	var names []string
	for n := 2; n <= 40; n++ {
		// "a.", "ab.", ... up to 40 bytes: lengths around maxShortName (23) included.
		name := strings.Repeat("a", n-2) + "b."
		names = append(names, name)
		targets := []string{"t" + name + "agency.test."}
		if n%5 == 0 {
			targets = append(targets, "u"+name+"agency.test.", "v"+name+"agency.test.")
		}
		if !tab.add(name, targets) {
			t.Fatalf("add %q: reported a duplicate", name)
		}
	}
	if tab.add(names[3], []string{"x.agency.test."}) {
		t.Errorf("add %q twice: not reported", names[3])
	}
	if tab.len() != len(names) {
		t.Fatalf("len %d, want %d", tab.len(), len(names))
	}

	check := func(stage string) {
		t.Helper()
		for _, name := range names {
			for _, spelled := range []string{name, strings.ToUpper(name), strings.ToUpper(name[:1]) + name[1:]} {
				a, ok := tab.get(spelled)
				if !ok {
					t.Errorf("%s: %q not found", stage, spelled)
					continue
				}
				if got := a.targets()[0]; got != "t"+name+"agency.test." {
					t.Errorf("%s: %q has target %q, want t%sagency.test.", stage, spelled, got, name)
				}
			}
			// Near misses: one byte more or less, a zero byte added (the key's padding), another
			// letter.
			for _, other := range []string{name[1:], "a" + name, name + "\x00", strings.Replace(name, "b", "c", 1)} {
				if a, ok := tab.get(other); ok && !isName(names, other) {
					t.Errorf("%s: %q found (targets %v), want none", stage, other, a.targets())
				}
			}
		}
		n := 0
		tab.each(func(name string, a alias) {
			n++
			if !isName(names, name) {
				t.Errorf("%s: each gives %q, not a configured name", stage, name)
			}
		})
		if n != len(names) {
			t.Errorf("%s: each gives %d aliases, want %d", stage, n, len(names))
		}
	}
	check("before pin")

	c := newCache(func(context.Context, cacheKey) (*chain, error) { return nil, errors.New("not asked") })
	tab.pin(c)
	check("after pin")
	for i, name := range names {
		a, _ := tab.get(name)
		want := 1
		if (i+2)%5 == 0 {
			want = 3
		}
		if got := len(a.targets()); got != want {
			t.Errorf("%q: %d targets after pin, want %d", name, got, want)
		}
		for qi, qtype := range qtypes {
			slots := a.slots(qi, nil)
			for j, s := range slots {
				if s.name != a.targets()[j] || s.qtype() != qtype || !s.pinned || c.existing(s.key()) != s {
					t.Errorf("%q: slot %d for %d is %s %d pinned %v, want the pinned slot of %s", name, j, qtype, s.name, s.qtype(), s.pinned, a.targets()[j])
				}
			}
		}
		if want == 1 && a.one == nil {
			t.Errorf("%q: a single target is not answered from its pinned pair", name)
		}
	}
}

func isName(names []string, name string) bool {
	for _, n := range names {
		if n == name {
			return true
		}
	}
	return false
}

// TestAliasTableHoldsNoPointers: the map every address query looks in first has neither keys nor
// values with pointers, so the collector does not scan it and a lookup loads no key bytes from
// elsewhere (aliasTable).
func TestAliasTableHoldsNoPointers(t *testing.T) {
	for _, typ := range []reflect.Type{reflect.TypeFor[shortName](), reflect.TypeFor[aliasRef]()} {
		if hasPointers(typ) {
			t.Errorf("%v holds pointers", typ)
		}
	}
	if n := reflect.TypeFor[shortName]().Size() + reflect.TypeFor[aliasRef]().Size(); n > 28 {
		t.Errorf("a short alias takes %d bytes in the map, want at most 28", n)
	}
}

func hasPointers(typ reflect.Type) bool {
	switch typ.Kind() {
	case reflect.Array:
		return hasPointers(typ.Elem())
	case reflect.Struct:
		for i := range typ.NumField() {
			if hasPointers(typ.Field(i).Type) {
				return true
			}
		}
		return false
	case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr,
		reflect.Float32, reflect.Float64, reflect.Complex64, reflect.Complex128:
		return false
	}
	return true
}
