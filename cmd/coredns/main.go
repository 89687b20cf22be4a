// Command coredns is a complete CoreDNS v1.15.0, with every standard plugin,
// plus the flatten plugin.
//
// The flatten directive goes directly after "minimal", before "template".
// Plugins listed earlier wrap the ones listed after them, which gives flatten
// this place in the chain:
//
//   - It sits below cache, dnssec and minimal. Flattened answers are cached by
//     cache and signed on the fly by dnssec, and the minimal and acl policies
//     apply to them.
//   - It sits above template, hosts, file, auto, secondary, etcd and forward.
//     Flatten sees an A/AAAA query for a flattened name before a backend can
//     answer it, usually with NODATA.
//
// Don't use COREDNS_PLUGINS for this. It appends the plugin after forward,
// which is the wrong place.
//
// "coredns -version" prints the version of flatten in the binary on a line of
// its own before CoreDNS's version lines; the release build stamps it with
// -ldflags "-X github.com/flattendns/flatten.Version=VERSION".
package main

import (
	"flag"
	"fmt"
	"slices"

	"github.com/coredns/coredns/core/dnsserver"
	_ "github.com/coredns/coredns/core/plugin" // all standard plugins
	"github.com/coredns/coredns/coremain"

	"github.com/flattendns/flatten"
)

// anchor is the directive that flatten is inserted directly after.
const anchor = "minimal"

func init() {
	i := slices.Index(dnsserver.Directives, anchor)
	if i < 0 {
		panic(`flatten: anchor directive "` + anchor + `" not found in dnsserver.Directives; cannot place "flatten" in the plugin chain`)
	}
	d := slices.Insert(slices.Clone(dnsserver.Directives), i+1, "flatten")
	if err := dnsserver.SetDirectives(d); err != nil { // rejects a duplicate "flatten"
		panic("flatten: " + err.Error())
	}
}

func main() {
	// coremain registered its flags on flag.CommandLine; Run parses them again, to the same
	// values, and prints CoreDNS's version lines and exits when -version is given.
	flag.Parse()
	if v := flag.Lookup("version"); v != nil && v.Value.String() == "true" {
		fmt.Printf("flatten-%s\n", flatten.FullVersion())
	}
	coremain.Run()
}
