package main

import (
	"net/http"
	"os"
	"runtime/pprof"
	"time"
)

func httpClient(conns int) *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConns: conns * 2, MaxIdleConnsPerHost: conns * 2}}
}

// startProfile writes a CPU profile until the returned func is called.
func startProfile(path string) func() {
	f, err := os.Create(path)
	check(err)
	check(pprof.StartCPUProfile(f))
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}
