//go:build race

package main

// raceEnabled: this test binary was built with -race, so a binary built with -race too reuses its
// compiled packages and is only linked.
const raceEnabled = true
