package main

import (
	"context"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
)

const (
	connectLimit = 60 * time.Second // one connect + first row, cold wake included
	closeLimit   = 5 * time.Second
)

// target is one way to reach the compute.
type target struct {
	name string
	dsn  string // pgx connection string
}

// connectFirstRow opens a new connection to dsn, runs SELECT 1 and returns
// the time from dialling to the first row. The connection is closed
// afterwards (not timed). Queries use the simple protocol: one round trip,
// the same on every path.
func connectFirstRow(ctx context.Context, dsn string) (time.Duration, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return 0, fmt.Errorf("parse connection string: %w", err)
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	ctx, cancel := context.WithTimeout(ctx, connectLimit)
	defer cancel()
	start := time.Now()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return 0, fmt.Errorf("connect: %w", err)
	}
	var one int
	err = conn.QueryRow(ctx, "SELECT 1").Scan(&one)
	elapsed := time.Since(start)
	closeConn(conn)
	if err != nil {
		return 0, fmt.Errorf("SELECT 1: %w", err)
	}
	return elapsed, nil
}

func closeConn(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), closeLimit)
	defer cancel()
	_ = conn.Close(ctx)
}

// roundTrips opens one connection to dsn and times n sequential SELECT 1
// on it: the per-query cost of the path without connection setup.
func roundTrips(ctx context.Context, dsn string, n int) ([]time.Duration, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("parse connection string: %w", err)
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	ctx, cancel := context.WithTimeout(ctx, connectLimit+time.Duration(n)*10*time.Millisecond)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	defer closeConn(conn)
	out := make([]time.Duration, 0, n)
	var one int
	for range n {
		start := time.Now()
		if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
			return nil, fmt.Errorf("SELECT 1: %w", err)
		}
		out = append(out, time.Since(start))
	}
	return out, nil
}

// stats summarises a sample of durations.
type stats struct {
	n                          int
	min, median, p90, p99, max time.Duration
}

func summarize(d []time.Duration) stats {
	if len(d) == 0 {
		return stats{}
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return stats{n: len(s), min: s[0], median: percentile(s, 50), p90: percentile(s, 90),
		p99: percentile(s, 99), max: s[len(s)-1]}
}

// percentile is the nearest-rank percentile of sorted (p in (0,100]).
func percentile(sorted []time.Duration, p float64) time.Duration {
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = max(1, min(rank, len(sorted)))
	return sorted[rank-1]
}
