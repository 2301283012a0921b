package main

import (
	"testing"
	"time"
)

func TestParsePgbench(t *testing.T) {
	out := `pgbench (15.18 (Debian 15.18-0+deb12u1))
transaction type: <builtin: select only>
scaling factor: 10
number of clients: 8
number of threads: 2
duration: 3 s
number of transactions actually processed: 158602
number of failed transactions: 2 (0.000%)
latency average = 0.151 ms
initial connection time = 15.026 ms
tps = 52867.123456 (without initial connection time)
`
	r, err := parsePgbench(out)
	if err != nil {
		t.Fatal(err)
	}
	if r.tps != 52867.123456 || r.latencyMS != 0.151 || r.failed != 2 {
		t.Errorf("got %+v", r)
	}
	if _, err := parsePgbench("connection to server failed\n"); err == nil {
		t.Error("want an error without a tps line")
	}
}

func TestSummarize(t *testing.T) {
	var d []time.Duration
	for i := 100; i >= 1; i-- {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	s := summarize(d)
	want := stats{n: 100, min: time.Millisecond, median: 50 * time.Millisecond, p90: 90 * time.Millisecond,
		p99: 99 * time.Millisecond, max: 100 * time.Millisecond}
	if s != want {
		t.Errorf("summarize = %+v, want %+v", s, want)
	}
	if got := summarize([]time.Duration{7}); got.median != 7 || got.p99 != 7 {
		t.Errorf("one sample: %+v", got)
	}
}
