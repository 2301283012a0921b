package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/neonproxy/neonproxy/walkeeper"
)

// The keeper-loss part of the durability section: on the standalone
// keepers' serve (3 keepers, quorum 2), kill -9 one keeper while writers
// insert, measure the commits' stalls, restart it and time its return.
const (
	keeperLossBranch   = "keeperloss"
	keeperLossBefore   = 500 * time.Millisecond // writers' start → kill
	keeperLossLead     = 100 * time.Millisecond // the window starts this long before the kill
	keeperLossWindow   = 2 * time.Second        // kill → writers stop (the window's end)
	keeperStreamLimit  = 60 * time.Second       // restart → streaming; round start → all streaming
	keeperDownLimit    = 10 * time.Second       // kill → the branch JSON shows the keeper not streaming
	keeperCatchUpLimit = 10 * time.Second       // streaming → flush reaches the others'
	keeperPollEvery    = 20 * time.Millisecond
	stallGoal          = time.Second // the goal: no write stalls more than this
)

// keeperLossRound is one kill of a standalone keeper.
type keeperLossRound struct {
	n      int
	keeper string // wk1, wk2, …
	// In the window (kill − keeperLossLead … kill + keeperLossWindow):
	// INSERTs acknowledged, and the longest INSERT overlapping it.
	commits int
	longest time.Duration
	// longestFailed: the longest INSERT did not succeed (its time runs to
	// its error).
	longestFailed bool
	acked         int           // the round's acknowledged INSERTs
	unacked       int           // sent, no success seen
	down          time.Duration // kill → the branch JSON shows the keeper not streaming (0: not seen)
	streaming     time.Duration // restart → the branch JSON shows it streaming (0: not seen)
	caughtUp      time.Duration // restart → its flush ≥ the other keepers' (0: not within the limit)
	// The keepers' flush at the last catch-up check (killed keeper first).
	flushes   []uint64
	writerErr string // a writer's error (none expected)
	err       string // what ended the round early
}

// keeperLoss runs -keeper-kills rounds on the standalone keepers' serve,
// then checks that every acknowledged id is in the table.
func (s *durability) keeperLoss(ctx context.Context) error {
	px, ks := s.spx, s.keepers
	// The tpcb compute would only stream idle WAL; stop it (best effort).
	if err := px.suspendBranch(ctx, tpcbBranch); err == nil {
		_ = px.waitBranchState(ctx, tpcbBranch, "stopped", branchStopLimit)
	}
	if err := px.send(ctx, http.MethodPost, "/v1/branches", map[string]string{"name": keeperLossBranch, "parent": branch}, nil); err != nil {
		return err
	}
	dsn := px.branchURL(keeperLossBranch, "disable")
	const ddl = "CREATE TABLE acked (id bigint PRIMARY KEY)"
	if err := execOn(ctx, dsn, ddl); err != nil {
		return err
	}
	s.rep.keeperLossPort = px.port
	s.rep.command(fmt.Sprintf(`curl -X POST %s/v1/branches -d '{"name":"%s","parent":"%s"}'; psql … -c '%s'   # standalone keepers' serve`,
		px.admin, keeperLossBranch, branch, ddl))
	s.rep.command(fmt.Sprintf("%d × pgx 'postgres://postgres:…@127.0.0.1:%d/%s?sslmode=disable': INSERT INTO acked (id) VALUES (<next id>)   # autocommit, timed",
		chaosWriters, px.port, keeperLossBranch))
	s.rep.command(fmt.Sprintf("after %s: kill -9 <wkN pid>; %s later the writers stop; neonproxy walkeeper --config %s   # N = 1, 2, 3, 1, …",
		keeperLossBefore, keeperLossWindow, ks.configPath("wkN")))
	s.rep.command(fmt.Sprintf("poll curl %s/v1/branches/%s → wal_keeper.keepers[name=wkN].state == streaming", px.admin, keeperLossBranch))
	s.rep.command("poll curl http://<each keeper>/v1/wal/<timeline> → flush of wkN ≥ the others'")

	var next atomic.Int64
	var status []byte // by id: idAttempted or idAcked
	var errs []error
	for n := 1; n <= s.opts.keeperKills; n++ {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		i := (n - 1) % len(ks.procs)
		r, ws, err := s.keeperLossRound(ctx, n, i, dsn, &next)
		for _, w := range ws {
			for _, id := range w.attempted {
				status = growSet(status, id, idAttempted)
			}
			for _, id := range w.acked {
				status[id] = idAcked
			}
		}
		if err != nil {
			r.err = firstLine(err.Error())
		}
		s.rep.keeperLoss = append(s.rep.keeperLoss, r)
		logf("  keeper loss %d: kill -9 %s: %d commits in the window, longest %s; streaming after %s, caught up after %s",
			n, r.keeper, r.commits, ms(r.longest), msOrDash(r.streaming), msOrDash(r.caughtUp))
		if err != nil {
			// A keeper that did not come back: killing the next one
			// would leave no quorum.
			errs = append(errs, fmt.Errorf("round %d (%s): %w", n, r.keeper, err))
			break
		}
		if r.caughtUp == 0 {
			errs = append(errs, fmt.Errorf("round %d: %s did not catch up within %s of streaming", n, r.keeper, keeperCatchUpLimit))
		}
	}
	if err := s.keeperLossCheck(ctx, dsn, status); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// growSet sets status[id] = v, growing status as needed.
func growSet(status []byte, id int64, v byte) []byte {
	if need := int(id) + 1; len(status) < need {
		status = append(status, make([]byte, need-len(status))...)
	}
	status[id] = v
	return status
}

// keeperLossCheck reads the table and counts the acknowledged ids missing.
func (s *durability) keeperLossCheck(ctx context.Context, dsn string, status []byte) error {
	ctx, cancel := context.WithTimeout(ctx, connectLimit+time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return fmt.Errorf("final check: connect: %w", err)
	}
	defer closeConn(conn)
	rows, err := conn.Query(ctx, "SELECT id FROM acked", pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		return fmt.Errorf("final check: %w", err)
	}
	present := make([]bool, len(status))
	d := s.rep
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return err
		}
		d.keeperLossRows++
		if id > 0 && id < int64(len(present)) {
			present[id] = true
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("final check: %w", err)
	}
	for id, st := range status {
		if st != idAcked {
			continue
		}
		d.keeperLossAcked++
		if !present[id] {
			d.keeperLossMissing++
			if len(d.keeperLossMissingIDs) < chaosMissingShown {
				d.keeperLossMissingIDs = append(d.keeperLossMissingIDs, int64(id))
			}
		}
	}
	d.keeperLossChecked = true
	return nil
}

// execOn runs statements on dsn.
func execOn(ctx context.Context, dsn string, sqls ...string) error {
	ctx, cancel := context.WithTimeout(ctx, connectLimit+time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer closeConn(conn)
	for _, q := range sqls {
		if _, err := conn.Exec(ctx, q, pgx.QueryExecModeSimpleProtocol); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
	}
	return nil
}

// keeperLossRound kills keeper i while writers insert, restarts it and
// waits for it to stream and catch up. It returns the writers for their
// ids even on error.
func (s *durability) keeperLossRound(ctx context.Context, n, i int, dsn string, next *atomic.Int64) (keeperLossRound, []*writer, error) {
	ks := s.keepers
	r := keeperLossRound{n: n, keeper: ks.names[i]}
	conns, err := connectWriters(ctx, dsn, chaosWriters)
	if err != nil {
		return r, nil, err
	}
	// Every keeper streams before the kill (the first round's connect
	// started the compute).
	info, err := s.awaitKeepers(ctx, keeperStreamLimit, func(st map[string]string) bool {
		for _, name := range ks.names {
			if st[name] != "streaming" {
				return false
			}
		}
		return true
	})
	if err != nil {
		for _, c := range conns {
			closeConn(c)
		}
		return r, nil, fmt.Errorf("before the kill: %w", err)
	}
	var stop atomic.Bool
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	ws, done := runWriters(wctx, conns, next, &stop, true)

	time.Sleep(keeperLossBefore)
	killedAt := time.Now()
	if err := ks.kill(i); err != nil {
		stop.Store(true)
		wcancel()
		<-done
		return r, ws, err
	}
	// The serve notices the loss (else "streaming" after the restart
	// would mean nothing): watched from the kill on.
	downCh := make(chan time.Duration, 1)
	go func() {
		_, err := s.awaitKeepers(ctx, keeperDownLimit, func(st map[string]string) bool { return st[r.keeper] != "streaming" })
		if err != nil {
			downCh <- 0
			return
		}
		downCh <- time.Since(killedAt)
	}()
	time.Sleep(time.Until(killedAt.Add(keeperLossWindow)))
	stop.Store(true)
	select {
	case <-done:
	case <-time.After(chaosStopLimit): // an INSERT hangs: count it as failed
		wcancel()
		<-done
	}
	r.tally(ws, killedAt.Add(-keeperLossLead), killedAt.Add(keeperLossWindow))

	if r.down = <-downCh; r.down == 0 {
		s.rep.note(fmt.Sprintf("keeper loss %d: the branch JSON showed %s streaming %s after its kill -9", n, r.keeper, keeperDownLimit))
	}

	restartAt := time.Now()
	if err := ks.restart(ctx, i); err != nil {
		return r, ws, err
	}
	if _, err := s.awaitKeepers(ctx, keeperStreamLimit, func(st map[string]string) bool { return st[r.keeper] == "streaming" }); err != nil {
		return r, ws, fmt.Errorf("after the restart: %w", err)
	}
	r.streaming = time.Since(restartAt)

	// Catch-up: the restarted keeper's flush reaches the others'.
	deadline := time.Now().Add(keeperCatchUpLimit)
	noted := false
	for {
		fl, err := keeperFlushes(ctx, ks, info.Timeline, i)
		if err == nil {
			r.flushes = fl
			if fl[0] >= slices.Max(fl[1:]) {
				r.caughtUp = time.Since(restartAt)
				break
			}
		} else if !noted {
			noted = true
			s.rep.note(fmt.Sprintf("keeper loss %d: catch-up check: %v", n, err))
		}
		if time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return r, ws, ctx.Err()
		case <-time.After(keeperPollEvery):
		}
	}
	return r, ws, nil
}

// tally counts the writers' INSERTs of the window [from, to].
func (r *keeperLossRound) tally(ws []*writer, from, to time.Time) {
	for _, w := range ws {
		r.acked += len(w.acked)
		r.unacked += len(w.attempted) - len(w.acked)
		for _, sp := range w.spans {
			if !sp.end.Before(from) && !sp.end.After(to) {
				r.commits++
			}
			if sp.start.Before(to) && sp.end.After(from) && sp.end.Sub(sp.start) > r.longest {
				r.longest, r.longestFailed = sp.end.Sub(sp.start), false
			}
		}
		if w.err != nil {
			if r.writerErr == "" {
				r.writerErr = firstLine(w.err.Error())
			}
			if !w.pending.IsZero() && w.pending.Before(to) && w.errAt.After(from) && w.errAt.Sub(w.pending) > r.longest {
				r.longest, r.longestFailed = w.errAt.Sub(w.pending), true
			}
		}
	}
}

// awaitKeepers polls the keeper-loss branch's JSON on the standalone
// keepers' serve until ok(keeper name → state) holds.
func (s *durability) awaitKeepers(ctx context.Context, limit time.Duration, ok func(map[string]string) bool) (branchInfo, error) {
	deadline := time.Now().Add(limit)
	var last string
	for {
		info, err := s.spx.branchInfo(ctx, keeperLossBranch)
		if err == nil {
			st := map[string]string{}
			if info.WALKeeper != nil {
				for _, k := range info.WALKeeper.Keepers {
					st[k.Name] = k.State
				}
			}
			if ok(st) {
				return info, nil
			}
			last = fmt.Sprintf("compute %s, keepers %v", info.Compute.State, st)
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return info, fmt.Errorf("branch %s: not as awaited after %s (last: %s)", keeperLossBranch, limit, last)
		}
		select {
		case <-ctx.Done():
			return info, ctx.Err()
		case <-time.After(keeperPollEvery):
		}
	}
}

// keeperFlushes reads each keeper's flush for namespace ns, keeper i's
// first, the others after in order.
func keeperFlushes(ctx context.Context, ks *walkeepers, ns uint64, i int) ([]uint64, error) {
	order := []int{i}
	for j := range ks.addrs {
		if j != i {
			order = append(order, j)
		}
	}
	out := make([]uint64, 0, len(order))
	for _, j := range order {
		f, err := keeperFlush(ctx, ks.addrs[j], ks.token, ns)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", ks.names[j], err)
		}
		out = append(out, f)
	}
	return out, nil
}

// keeperFlush is GET http://addr/v1/wal/NS's flush.
func keeperFlush(ctx context.Context, addr, token string, ns uint64) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/v1/wal/"+strconv.FormatUint(ns, 10), nil)
	if err != nil {
		return 0, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET /v1/wal/%d: %s: %s", ns, resp.Status, strings.TrimSpace(string(body)))
	}
	var info walkeeper.Info
	if err := json.Unmarshal(body, &info); err != nil {
		return 0, fmt.Errorf("GET /v1/wal/%d: %w", ns, err)
	}
	return info.Flush, nil
}
