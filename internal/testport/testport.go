// Package testport hands tests and benchmarks TCP ports on 127.0.0.1 that
// nothing listens on, for servers that must be told their port before they
// start (Caddy's admin endpoint, a Raft node in a config file).
//
// A port found by listening on port 0 and closing it is in the kernel's
// ephemeral range, where any other socket bound to port 0, or an outgoing
// connection, can take it before the server binds it: with tests of several
// packages running at once this happened. Ports here come from outside that
// range, which the kernel never hands out by itself, and each only once per
// test binary.
//
// It imports only the standard library, so any test or benchmark of the
// module can use it.
package testport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sync"
)

var (
	mu   sync.Mutex
	used = map[int]bool{}
)

// Free returns a free port. It panics when it finds none.
func Free() int {
	mu.Lock()
	defer mu.Unlock()
	lo, hi := span()
	for range 10000 {
		p := lo + rand.IntN(hi-lo)
		if used[p] {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		l.Close()
		used[p] = true
		return p
	}
	panic("testport: no free port")
}

// span is where Free picks: below the ephemeral range
// (/proc/sys/net/ipv4/ip_local_port_range), or above it when it starts low.
func span() (lo, hi int) {
	first, last := 32768, 60999
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		fmt.Sscan(string(b), &first, &last)
	}
	if first > 12000 {
		return 10000, first
	}
	return last + 1, 65535
}
