package wake

import (
	"testing"
	"time"
)

func TestRegularPeriod(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	at := func(secs ...float64) []time.Time {
		var out []time.Time
		for _, s := range secs {
			out = append(out, t0.Add(time.Duration(s*float64(time.Second))))
		}
		return out
	}
	for _, tc := range []struct {
		name     string
		arrivals []time.Time
		want     time.Duration
	}{
		{"every 10 minutes", at(0, 600, 1200, 1800), 10 * time.Minute},
		{"within 15%", at(0, 600, 1250, 1800), 10 * time.Minute},
		{"one interval off", at(0, 600, 1400, 1800), 0},
		{"too few", at(0, 600, 1200), 0},
		{"too fast to matter", at(0, 1, 2, 3), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := regularPeriod(tc.arrivals); got != tc.want {
				t.Fatalf("period %s, want %s", got, tc.want)
			}
		})
	}
}
