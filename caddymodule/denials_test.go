package caddymodule

import (
	"testing"
	"time"
)

func TestDenialLogIsBoundedAndCountsWhatItHolds(t *testing.T) {
	d := newDenialLog()
	t0 := time.Unix(1000, 0)
	// One token denied again and again: one line per interval, the next
	// line says how many were held back.
	if ok, _, _ := d.admit("fp/exhausted", false, t0); !ok {
		t.Fatal("first denial not logged")
	}
	for i := 1; i <= 50; i++ {
		if ok, _, _ := d.admit("fp/exhausted", false, t0.Add(time.Duration(i)*time.Millisecond)); ok {
			t.Fatalf("repeat %d logged within the interval", i)
		}
	}
	ok, held, _ := d.admit("fp/exhausted", false, t0.Add(denialLogInterval))
	if !ok || held != 50 {
		t.Fatalf("next interval: logged %v, held back %d, want true, 50", ok, held)
	}
	// Random keys: at most the budget per interval, the rest reported on
	// the next line that is written.
	logged := 0
	for i := 0; i < 1000; i++ {
		if ok, _, _ := d.admit(string(rune('a'+i%26))+time.Duration(i).String(), true, t0.Add(denialLogInterval+time.Millisecond)); ok {
			logged++
		}
	}
	if logged != denialLogBudget {
		t.Fatalf("%d lines for 1000 distinct keys in one interval, want the budget %d", logged, denialLogBudget)
	}
	ok, _, unlogged := d.admit("fresh", true, t0.Add(2*denialLogInterval))
	if !ok || unlogged != 1000-denialLogBudget {
		t.Fatalf("after the interval: logged %v, reported %d unlogged, want %d", ok, unlogged, 1000-denialLogBudget)
	}
	// Exceedances of distinct tokens are not budgeted: each is logged.
	for i := 0; i < 500; i++ {
		if ok, _, _ := d.admit(time.Duration(i).String()+"/exhausted", false, t0.Add(3*denialLogInterval)); !ok {
			t.Fatalf("exceedance of token %d not logged", i)
		}
	}
}
