package state

import (
	"testing"
	"time"
)

func utc(s string) time.Time {
	t, err := time.Parse("2006-01-02 15:04", s)
	if err != nil {
		panic(err)
	}
	return t
}

func TestCalendarBoundaries(t *testing.T) {
	for _, tt := range []struct {
		spec, at, start, next string
	}{
		{"monthly", "2026-03-15 10:00", "2026-03-01 00:00", "2026-04-01 00:00"},
		{"monthly", "2026-03-01 00:00", "2026-03-01 00:00", "2026-04-01 00:00"},
		{"monthly", "2026-02-28 23:59", "2026-02-01 00:00", "2026-03-01 00:00"},
		{"monthly on 15 at 06:30", "2026-03-15 06:29", "2026-02-15 06:30", "2026-03-15 06:30"},
		{"monthly on 31", "2026-02-28 12:00", "2026-02-28 00:00", "2026-03-31 00:00"}, // past the end: the last day
		{"monthly on 31", "2026-03-30 12:00", "2026-02-28 00:00", "2026-03-31 00:00"},
		{"monthly on 31", "2028-02-29 00:00", "2028-02-29 00:00", "2028-03-31 00:00"}, // a leap year
		{"monthly", "2026-12-31 23:00", "2026-12-01 00:00", "2027-01-01 00:00"},
		{"monthly on 5", "2027-01-02 00:00", "2026-12-05 00:00", "2027-01-05 00:00"},
		{"weekly", "2026-12-07 00:00", "2026-12-07 00:00", "2026-12-14 00:00"}, // a Monday
		{"weekly on sunday at 23:00", "2026-12-07 10:00", "2026-12-06 23:00", "2026-12-13 23:00"},
		{"weekly on friday", "2026-12-03 10:00", "2026-11-27 00:00", "2026-12-04 00:00"},
		{"daily at 06:00", "2026-12-07 05:59", "2026-12-06 06:00", "2026-12-07 06:00"},
		{"daily", "2026-12-07 00:00", "2026-12-07 00:00", "2026-12-08 00:00"},
	} {
		c, err := ParseCalendar(tt.spec)
		if err != nil {
			t.Fatalf("%s: %v", tt.spec, err)
		}
		start := c.start(utc(tt.at))
		if !start.Equal(utc(tt.start)) || !c.next(start).Equal(utc(tt.next)) {
			t.Errorf("%s at %s: window %s .. %s, want %s .. %s", tt.spec, tt.at, start, c.next(start), tt.start, tt.next)
		}
		if back, _ := ParseCalendar(c.String()); back != c {
			t.Errorf("%s: %q reads back as %+v", tt.spec, c.String(), back)
		}
	}
	for _, bad := range []string{"yearly", "monthly on 0", "monthly on 32", "weekly on someday", "daily at 25:00", "monthly on", "daily on 3"} {
		if _, err := ParseCalendar(bad); err == nil {
			t.Errorf("%q was accepted", bad)
		}
	}
}

// A monthly token renews at the month's boundary of the leader's stamped
// time, and the decision's reset is that boundary; refunds from the old
// month give nothing back in the new one.
func TestMonthlyTokenRenewsOnTheFirst(t *testing.T) {
	tf := newTestFSM(t)
	created := utc("2026-01-20 09:00")
	if res := tf.create(created, TokenSpec{Name: "plan", UsageLimit: 2, RenewCalendar: "monthly"}); res.Err != nil || res.Token.ResetsAt == nil || !res.Token.ResetsAt.Equal(utc("2026-02-01 00:00")) {
		t.Fatalf("create: %+v %v", res.Token, res.Err)
	}
	old := NewRequestID()
	tf.consumeID(utc("2026-01-30 10:00"), old, "plan", 1, 0)
	tf.consume(utc("2026-01-31 23:00"), "plan", 1, 0)
	d := tf.consume(utc("2026-01-31 23:59"), "plan", 1, 0)
	if d.Allowed || d.ResetAt != utc("2026-02-01 00:00").UnixNano() || d.RenewEvery != Duration(31*24*time.Hour) {
		t.Fatalf("exhausted before the boundary: %+v", d)
	}
	d = tf.consume(utc("2026-02-01 00:00"), "plan", 1, 0)
	if !d.Allowed || d.UsageCount != 1 || d.ResetAt != utc("2026-03-01 00:00").UnixNano() {
		t.Fatalf("at the boundary: %+v", d)
	}
	tf.apply(&Command{Op: OpRefund, Time: utc("2026-02-01 00:01").UnixNano(), ID: old})
	if c, _ := tf.usage("plan"); c != 1 {
		t.Fatalf("a January refund changed February's usage: %d", c)
	}
	// A month with no use, then a charge: the window is the current month.
	d = tf.consume(utc("2026-04-10 00:00"), "plan", 1, 0)
	if !d.Allowed || d.UsageCount != 1 || d.ResetAt != utc("2026-05-01 00:00").UnixNano() {
		t.Fatalf("after a month with no use: %+v", d)
	}
}

// A pool renews on its calendar, and holds a daily cap inside a monthly
// token: the stacked windows of a "100 GB a month, 5 GB a day" plan.
func TestDailyPoolInsideAMonthlyPlan(t *testing.T) {
	tf := newTestFSM(t)
	day := tf.createPool(utc("2026-05-01 00:00"), PoolSpec{Name: "daily-cap", BytesLimit: 5, RenewCalendar: "daily"})
	tf.create(utc("2026-05-01 00:00"), TokenSpec{Name: "plan", BytesLimit: 100, RenewCalendar: "monthly", Pools: []string{day.ID}})
	at := utc("2026-05-01 08:00")
	used := int64(0)
	for d := range 25 {
		now := at.AddDate(0, 0, d)
		for range 7 {
			if dec := tf.consume(now, "plan", 1, 1); dec.Allowed {
				used++
			} else if dec.Quota != "pool:daily-cap" && dec.Quota != "token" {
				t.Fatalf("refused by %q", dec.Quota)
			}
		}
	}
	if used != 100 {
		t.Fatalf("%d bytes admitted in 25 days at 5 a day under 100 a month", used)
	}
	if d := tf.consume(utc("2026-06-01 00:00"), "plan", 1, 1); !d.Allowed {
		t.Fatalf("a new month and a new day: %+v", d)
	}
}
