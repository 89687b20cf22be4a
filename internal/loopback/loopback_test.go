package loopback

import "testing"

func TestCheck(t *testing.T) {
	for _, ok := range []string{"127.0.0.1:53", "127.1.2.3:1053", "127.9.9.9:0"} {
		if err := Check(ok); err != nil {
			t.Errorf("Check(%q) = %v, want nil", ok, err)
		}
	}
	for _, bad := range []string{"0.0.0.0:53", "192.0.2.1:53", "[::1]:53", "localhost:53", "127.0.0.1", "nope", "8.8.8.8:53"} {
		if err := Check(bad); err == nil {
			t.Errorf("Check(%q) = nil, want an error", bad)
		}
	}
}
