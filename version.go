package flatten

import "runtime/debug"

// Version is the version of flatten in the binary. The release build (release/build.sh) stamps it
// with -ldflags "-X github.com/flattendns/flatten.Version=v0.1.0"; left at "dev", FullVersion
// reads it from the build information instead.
var Version = "dev"

// FullVersion returns the version of flatten in the binary: Version when the build stamped it;
// otherwise the version the Go toolchain recorded for the module: the required version (a tag or
// a pseudo-version) in a CoreDNS tree that requires flatten, "dev (../flatten)" when a replace
// directive points it at a directory, the VCS stamp when the go command made one for a build in a
// clone; "dev" when none is known (go run, go test).
func FullVersion() string {
	if Version != "dev" && Version != "" {
		return Version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "dev"
	}
	return moduleVersion(bi)
}

// modulePath is flatten's module path.
const modulePath = "github.com/flattendns/flatten"

// moduleVersion is the version bi records for flatten's module: its version; "VERSION (PATH)"
// when another module replaces it, "dev (DIR)" when a directory does; "dev" when it records none.
func moduleVersion(bi *debug.BuildInfo) string {
	mods := append([]*debug.Module{&bi.Main}, bi.Deps...)
	for _, m := range mods {
		if m == nil || m.Path != modulePath {
			continue
		}
		if r := m.Replace; r != nil {
			if r.Version == "" || r.Version == "(devel)" { // a directory: its source is whatever it holds
				return "dev (" + r.Path + ")"
			}
			return r.Version + " (" + r.Path + ")"
		}
		if m.Version != "" && m.Version != "(devel)" {
			return m.Version
		}
	}
	return "dev"
}
