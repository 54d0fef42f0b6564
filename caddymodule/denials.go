package caddymodule

import (
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// denialLog keeps denial logging bounded however clients behave. Each token
// fingerprint and reason gets at most one line per interval, which carries
// how many of its denials were held back since its previous line; refusals
// of unknown, revoked, expired or malformed tokens also share a budget of
// lines per interval, so a flood of random keys writes a few lines, not one
// per request. Counts stay exact in raftquota_decisions_total.
type denialLog struct {
	interval time.Duration
	budget   int

	mu          sync.Mutex
	keys        *simplelru.LRU[string, *denialKey]
	windowStart time.Time
	lines       int
	// overBudget counts lines not written for want of budget since the last
	// line that reported them.
	overBudget int
}

type denialKey struct {
	last      time.Time
	heldBack  int
	firstSeen bool
}

const (
	denialLogInterval = 10 * time.Second
	denialLogBudget   = 100
	denialLogKeys     = 10000
)

func newDenialLog() *denialLog {
	keys, _ := simplelru.NewLRU[string, *denialKey](denialLogKeys, nil)
	return &denialLog{interval: denialLogInterval, budget: denialLogBudget, keys: keys}
}

// admit says whether to log a denial of key now. When it does, heldBack is
// how many denials of the same key were not logged since its last line,
// and unlogged how many budgeted denials of any key were not logged.
func (d *denialLog) admit(key string, budgeted bool, now time.Time) (ok bool, heldBack, unlogged int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if now.Sub(d.windowStart) >= d.interval {
		d.windowStart, d.lines = now, 0
	}
	k, seen := d.keys.Get(key)
	if seen && now.Sub(k.last) < d.interval {
		k.heldBack++
		return false, 0, 0
	}
	if budgeted && d.lines >= d.budget {
		d.overBudget++
		return false, 0, 0
	}
	if budgeted {
		d.lines++
	}
	if seen {
		heldBack = k.heldBack
	}
	d.keys.Add(key, &denialKey{last: now})
	unlogged, d.overBudget = d.overBudget, 0
	return true, heldBack, unlogged
}
