package state

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Calendar windows: usage returns to zero at boundaries of the UTC
// calendar — every day at a time, every week on a weekday, every month on
// a day — rather than every fixed duration from the token's creation.
// Plans are sold per month; a renew_every of 720h drifts off the 1st.
// Boundaries are computed from the leader's stamped time, the same on
// every replica, in UTC only: no time zones, no daylight saving.

// calUnit is a calendar window's period. Values are written in snapshots.
type calUnit uint8

const (
	calNone calUnit = iota
	calDaily
	calWeekly
	calMonthly
)

// Calendar is a renewal on the UTC calendar. The zero value renews never.
type Calendar struct {
	Unit calUnit
	// Day is the weekday (0 Sunday .. 6 Saturday) of a weekly window, or
	// the day of the month (1 .. 31; past a month's end, its last day) of
	// a monthly one.
	Day int8
	// Minute is the time of day of the boundary, in minutes after 00:00 UTC.
	Minute int16
}

// IsZero reports whether c renews never.
func (c Calendar) IsZero() bool { return c.Unit == calNone }

var weekdays = []string{"sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"}

// ParseCalendar reads "daily [at HH:MM]", "weekly [on WEEKDAY] [at HH:MM]"
// or "monthly [on DAY] [at HH:MM]" (UTC; defaults: Monday, the 1st,
// 00:00). "" is no calendar window.
func ParseCalendar(s string) (Calendar, error) {
	f := strings.Fields(strings.ToLower(s))
	if len(f) == 0 {
		return Calendar{}, nil
	}
	var c Calendar
	switch f[0] {
	case "daily":
		c.Unit = calDaily
	case "weekly":
		c.Unit, c.Day = calWeekly, 1
	case "monthly":
		c.Unit, c.Day = calMonthly, 1
	default:
		return c, Invalidf("renew_calendar %q: start with daily, weekly or monthly", s)
	}
	f = f[1:]
	for len(f) > 0 {
		if len(f) < 2 {
			return c, Invalidf("renew_calendar %q: %q needs a value", s, f[0])
		}
		switch word, v := f[0], f[1]; {
		case word == "on" && c.Unit == calWeekly:
			i := indexOf(weekdays, v)
			if i < 0 {
				return c, Invalidf("renew_calendar %q: %q is not a weekday", s, v)
			}
			c.Day = int8(i)
		case word == "on" && c.Unit == calMonthly:
			d, err := strconv.Atoi(v)
			if err != nil || d < 1 || d > 31 {
				return c, Invalidf("renew_calendar %q: the day of the month is 1 to 31 (past a month's end: its last day)", s)
			}
			c.Day = int8(d)
		case word == "at":
			t, err := time.Parse("15:04", v)
			if err != nil {
				return c, Invalidf("renew_calendar %q: the time is HH:MM, UTC", s)
			}
			c.Minute = int16(t.Hour()*60 + t.Minute())
		default:
			return c, Invalidf("renew_calendar %q: unexpected %q (write e.g. \"monthly on 1 at 00:00\", \"weekly on monday\", \"daily at 06:00\")", s, word)
		}
		f = f[2:]
	}
	return c, nil
}

func indexOf(list []string, s string) int {
	for i, x := range list {
		if x == s {
			return i
		}
	}
	return -1
}

// String is c in the form ParseCalendar reads.
func (c Calendar) String() string {
	at := fmt.Sprintf(" at %02d:%02d", c.Minute/60, c.Minute%60)
	switch c.Unit {
	case calDaily:
		return "daily" + at
	case calWeekly:
		return "weekly on " + weekdays[c.Day] + at
	case calMonthly:
		return fmt.Sprintf("monthly on %d%s", c.Day, at)
	}
	return ""
}

// valid reports whether c's fields are in range (entries and snapshots are
// checked as they are read).
func (c Calendar) valid() bool {
	switch c.Unit {
	case calNone:
		return c.Day == 0 && c.Minute == 0
	case calDaily:
		return c.Day == 0 && c.Minute >= 0 && c.Minute < 1440
	case calWeekly:
		return c.Day >= 0 && c.Day <= 6 && c.Minute >= 0 && c.Minute < 1440
	case calMonthly:
		return c.Day >= 1 && c.Day <= 31 && c.Minute >= 0 && c.Minute < 1440
	}
	return false
}

// monthBoundary is the boundary of c in month m of year y.
func (c Calendar) monthBoundary(y int, m time.Month) time.Time {
	last := time.Date(y, m+1, 0, 0, 0, 0, 0, time.UTC).Day()
	return time.Date(y, m, min(int(c.Day), last), 0, int(c.Minute), 0, 0, time.UTC)
}

// start is the latest boundary of c at or before t.
func (c Calendar) start(t time.Time) time.Time {
	t = t.UTC()
	day := time.Date(t.Year(), t.Month(), t.Day(), 0, int(c.Minute), 0, 0, time.UTC)
	switch c.Unit {
	case calDaily:
		if day.After(t) {
			day = day.AddDate(0, 0, -1)
		}
		return day
	case calWeekly:
		b := day.AddDate(0, 0, -((int(t.Weekday()) - int(c.Day) + 7) % 7))
		if b.After(t) {
			b = b.AddDate(0, 0, -7)
		}
		return b
	case calMonthly:
		b := c.monthBoundary(t.Year(), t.Month())
		if b.After(t) {
			b = c.monthBoundary(t.Year(), t.Month()-1)
		}
		return b
	}
	return time.Time{}
}

// next is the first boundary of c after the boundary b.
func (c Calendar) next(b time.Time) time.Time {
	switch c.Unit {
	case calDaily:
		return b.AddDate(0, 0, 1)
	case calWeekly:
		return b.AddDate(0, 0, 7)
	case calMonthly:
		return c.monthBoundary(b.Year(), b.Month()+1)
	}
	return time.Time{}
}

// windowAt renews a window that starts at ws (has tells whether there is
// one yet) for now: the start of the window now falls in, and whether
// usage returns to zero (a boundary was passed since ws).
func (c Calendar) windowAt(ws int64, has bool, now time.Time) (int64, bool) {
	if !has {
		return c.start(now).UnixNano(), false
	}
	if now.Before(c.next(time.Unix(0, ws).UTC())) {
		return ws, false
	}
	return c.start(now).UnixNano(), true
}
