package raftstore

import (
	"testing"
	"time"

	"github.com/raftquota/raftquota/internal/clustertest"
	"github.com/raftquota/raftquota/raftstore/state"
)

// TestCalendarMonthBoundaryOnThreeNodes: the leader's clock, set by the
// test, crosses a month boundary; the monthly token exhausted in the old
// month admits again in the new one, decided alike by every replica.
func TestCalendarMonthBoundaryOnThreeNodes(t *testing.T) {
	c := newTestCluster(t, 3)
	ctx := clustertest.Within(t, 60*time.Second)
	setClock := func(at time.Time) {
		for i := range c.skew {
			c.skew[i].Store(int64(time.Until(at)))
		}
	}
	setClock(utc("2027-03-31 23:59")) // after today: the FSM's time never moves back
	if _, err := c.nodes[0].CreateToken(ctx, state.TokenSpec{Name: "monthly", UsageLimit: 3, RenewCalendar: "monthly on 1"}); err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		d, err := c.nodes[i%3].Consume(ctx, state.ConsumeRequest{ID: state.NewRequestID(), Token: "monthly", Units: 1})
		if err != nil || d.Allowed != (i < 3) {
			t.Fatalf("consume %d in March: %+v %v", i, d, err)
		}
		if !d.Allowed && d.ResetAt != utc("2027-04-01 00:00").UnixNano() {
			t.Fatalf("the refusal resets at %s, want April 1st", time.Unix(0, d.ResetAt).UTC())
		}
	}
	setClock(utc("2027-04-01 00:00").Add(2 * time.Second))
	d, err := c.nodes[1].Consume(ctx, state.ConsumeRequest{ID: state.NewRequestID(), Token: "monthly", Units: 1})
	if err != nil || !d.Allowed || d.UsageCount != 1 || d.ResetAt != utc("2027-05-01 00:00").UnixNano() {
		t.Fatalf("the first upload of April: %+v %v", d, err)
	}
	for _, s := range c.nodes {
		tok, err := s.Lookup(ctx, "monthly")
		if err != nil || tok.UsageCount != 1 || tok.ResetsAt == nil || !tok.ResetsAt.Equal(utc("2027-05-01 00:00")) {
			t.Fatalf("%s sees %+v %v", s.NodeID(), tok, err)
		}
	}
}

func utc(s string) time.Time {
	t, err := time.Parse("2006-01-02 15:04", s)
	if err != nil {
		panic(err)
	}
	return t
}
