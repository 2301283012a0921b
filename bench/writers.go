package main

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// The INSERT writers of the durability section (chaos cycles and keeper
// loss): each inserts consecutive ids into `acked`, one autocommit INSERT
// at a time, as fast as it can.

// writer is one goroutine's INSERT loop.
type writer struct {
	acked     []int64
	attempted []int64
	err       error
	errAt     time.Time
	// spans are the acknowledged INSERTs' start and end (timed writers).
	spans []span
	// pending is the start of the INSERT in flight when the writer
	// stopped on an error (zero otherwise).
	pending time.Time
}

// span is one INSERT: sent at start, result at end.
type span struct{ start, end time.Time }

// connectWriters opens n connections to dsn (within chaosConnectLimit:
// the first may start the compute); on error none stays open.
func connectWriters(ctx context.Context, dsn string, n int) ([]*pgx.Conn, error) {
	cctx, cancel := context.WithTimeout(ctx, chaosConnectLimit)
	defer cancel()
	conns := make([]*pgx.Conn, n)
	for i := range conns {
		c, err := pgx.Connect(cctx, dsn)
		if err != nil {
			for _, c := range conns[:i] {
				closeConn(c)
			}
			return nil, fmt.Errorf("writer connect: %w", err)
		}
		conns[i] = c
	}
	return conns, nil
}

// runWriters starts one writer per connection (each closes its own). Ids
// come from next (next.Add(1)). A writer stops at its first error (ctx's
// end included) or, when stop is not nil, once stop is set (after the
// INSERT in flight). With timed, each acknowledged INSERT's span is kept.
// done is closed when every writer has stopped.
func runWriters(ctx context.Context, conns []*pgx.Conn, next *atomic.Int64, stop *atomic.Bool, timed bool) (ws []*writer, done <-chan struct{}) {
	ws = make([]*writer, len(conns))
	var wg sync.WaitGroup
	for i, conn := range conns {
		w := &writer{}
		ws[i] = w
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer closeConn(conn)
			for stop == nil || !stop.Load() {
				id := next.Add(1)
				w.attempted = append(w.attempted, id)
				var start time.Time
				if timed {
					start = time.Now()
				}
				_, err := conn.Exec(ctx, "INSERT INTO acked (id) VALUES ("+strconv.FormatInt(id, 10)+")", pgx.QueryExecModeSimpleProtocol)
				if err != nil {
					w.err, w.errAt, w.pending = err, time.Now(), start
					return
				}
				w.acked = append(w.acked, id)
				if timed {
					w.spans = append(w.spans, span{start, time.Now()})
				}
			}
		}()
	}
	ch := make(chan struct{})
	go func() { wg.Wait(); close(ch) }()
	return ws, ch
}
