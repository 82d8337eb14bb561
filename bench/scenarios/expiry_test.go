package scenarios

import (
	"testing"
	"time"
)

func TestTickerLateness(t *testing.T) {
	base := time.Now()
	var ds []time.Time
	for i := range 1000 {
		ds = append(ds, base.Add(time.Duration(i)*10*time.Millisecond))
	}
	late := TickerLateness(ds, 60*time.Second, 5, 1)
	if len(late) != 5000 {
		t.Fatalf("%d samples", len(late))
	}
	for _, l := range late {
		if l < 0 || l > 61*time.Second {
			t.Fatalf("lateness %s outside [0, 61s]", l)
		}
	}
}

func TestExpiryQuick(t *testing.T) {
	if testing.Short() {
		t.Skip("a few seconds")
	}
	r, err := Expiry(t.Context(), ExpiryConfig{Sizes: []int{100}, MinTimeout: time.Second, MaxTimeout: 2 * time.Second, Creators: 4,
		TickerPeriods: []time.Duration{10 * time.Second}, TickerPhases: 2}, func(s string) { t.Log(s) })
	if err != nil {
		t.Fatal(err)
	}
	for _, row := range r.Rows() {
		t.Log(row)
	}
}
