package flatten

import "runtime/debug"

// Version is the version of flatten in the binary. The release build (release/build.sh) stamps it
// with -ldflags "-X github.com/flattendns/flatten.Version=v0.1.0"; left at "dev", FullVersion
// reads it from the build information instead.
var Version = "dev"

// FullVersion returns the version of flatten in the binary: Version when the build stamped it;
// otherwise the version the Go toolchain recorded for the module, which is the required version
// (a tag or a pseudo-version) in a CoreDNS tree that requires flatten, or the VCS stamp of a build
// in a clone ("v0.0.0-20261206230514-4e89d59b1c2a+dirty"); "dev" when neither is known (go run,
// go test).
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

// moduleVersion is the version bi records for flatten's module, replaced or not; "dev" when it
// records none.
func moduleVersion(bi *debug.BuildInfo) string {
	mods := append([]*debug.Module{&bi.Main}, bi.Deps...)
	for _, m := range mods {
		if m == nil || m.Path != modulePath {
			continue
		}
		if m.Version != "" && m.Version != "(devel)" {
			return m.Version
		}
	}
	return "dev"
}
