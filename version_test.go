package flatten

import (
	"runtime/debug"
	"testing"
)

// TestFullVersion: a version stamped by the release build wins; otherwise the module version the
// build recorded, as the main module or as a dependency (replaced or not); "dev" when there is none.
func TestFullVersion(t *testing.T) {
	old := Version
	t.Cleanup(func() { Version = old })
	Version = "v1.2.3"
	if got := FullVersion(); got != "v1.2.3" {
		t.Errorf("FullVersion with Version stamped v1.2.3 = %q", got)
	}

	dep := &debug.Module{Path: modulePath, Version: "v0.0.0-20261206230514-4e89d59b1c2a"}
	dir := &debug.Module{Path: modulePath, Version: "v0.0.0-00010101000000-000000000000",
		Replace: &debug.Module{Path: "../flatten", Version: "(devel)"}} // as go build records it
	fork := &debug.Module{Path: modulePath, Version: "v0.1.0",
		Replace: &debug.Module{Path: "example.org/fork/flatten", Version: "v0.1.1"}}
	for _, c := range []struct {
		name string
		bi   debug.BuildInfo
		want string
	}{
		{"clone, VCS stamped", debug.BuildInfo{Main: debug.Module{Path: modulePath, Version: "v0.1.1-0.20261206230514-4e89d59b1c2a+dirty"}}, "v0.1.1-0.20261206230514-4e89d59b1c2a+dirty"},
		{"clone, go run", debug.BuildInfo{Main: debug.Module{Path: modulePath, Version: "(devel)"}}, "dev"},
		{"CoreDNS tree, pseudo-version", debug.BuildInfo{Main: debug.Module{Path: "github.com/coredns/coredns", Version: "(devel)"},
			Deps: []*debug.Module{{Path: "github.com/miekg/dns", Version: "v1.1.73"}, dep}}, dep.Version},
		{"CoreDNS tree, replaced by a clone", debug.BuildInfo{Main: debug.Module{Path: "github.com/coredns/coredns"},
			Deps: []*debug.Module{dir}}, "dev (../flatten)"},
		{"CoreDNS tree, replaced by a fork", debug.BuildInfo{Main: debug.Module{Path: "github.com/coredns/coredns"},
			Deps: []*debug.Module{fork}}, "v0.1.1 (example.org/fork/flatten)"},
		{"CoreDNS tree, tagged", debug.BuildInfo{Main: debug.Module{Path: "github.com/coredns/coredns"},
			Deps: []*debug.Module{{Path: modulePath, Version: "v0.2.0"}}}, "v0.2.0"},
		{"not in the build", debug.BuildInfo{Main: debug.Module{Path: "example.org/x", Version: "v1.0.0"}}, "dev"},
	} {
		if got := moduleVersion(&c.bi); got != c.want {
			t.Errorf("%s: moduleVersion = %q, want %q", c.name, got, c.want)
		}
	}
}
