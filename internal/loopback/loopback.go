// Package loopback holds the one check the benchmark and load tools share: they never send
// traffic anywhere but 127.0.0.0/8.
package loopback

import (
	"fmt"
	"net"
)

// Check refuses hostport unless its host is an address on 127.0.0.0/8.
func Check(hostport string) error {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return err
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() || ip.To4() == nil {
		return fmt.Errorf("%s is not a 127.0.0.0/8 address", hostport)
	}
	return nil
}
