package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/neonproxy/neonproxy/wake"
)

// The cluster section's commit failover (issue 6): "kill -9 node A while
// it runs the branch's compute and a client commits in a loop through B:
// the lock moves to B, the compute restarts on B, every acknowledged
// commit is there; report the failover time (last ack before → first ack
// after)". Each round kills the node that runs main (the owner) while
// writers commit through the other one, then restarts the killed node, so
// that the owners alternate: A, B, A, …
const (
	commitFailoverRounds = 5
	commitWriters        = chaosWriters // 4
	commitAcksEach       = 300          // acknowledgements before the kill, and after it
	commitReconnectEvery = 20 * time.Millisecond
	commitInsertLimit    = 30 * time.Second // one INSERT
	commitBeforeLimit    = time.Minute      // writers' start → commitAcksEach acknowledgements
	commitAfterLimit     = 2 * time.Minute  // kill → commitAcksEach acknowledgements after it
	commitPollEvery      = 10 * time.Millisecond
	commitErrsKept       = 100 // writer errors kept per round (the first after the kill is reported)
	commitTable          = "acked"
)

// commitRound is one kill -9 of main's node under writes.
type commitRound struct {
	n          int
	killed     string // the owner, killed: "A" or "B"
	via        string // the node the writers commit through, the survivor
	computePID int    // the killed node's compute of main
	// Acknowledgements on connections opened before the kill (served by
	// the killed owner) and after it (served by the survivor).
	ackedBefore, ackedAfter int
	// lastBefore and firstAfter are those acknowledgements' last and
	// first, relative to the kill (lastBefore is normally negative).
	lastBefore, firstAfter time.Duration
	// late: acknowledgements on connections opened before the kill that
	// arrived after it (replies already on their way).
	late int
	// lockFree: kill → main's lock key without a session (0: not seen
	// between two polls); lockTaken: kill → held by the survivor.
	lockFree, lockTaken time.Duration
	// The survivor's log lines for main during the round: starts that
	// materialized main, replayed the keepers' WAL, failed, and were
	// refused because the killed node still held the lock.
	materialized, replayed, startFailed, refused int
	connectFails, insertFails                    int    // the writers' failed connects and INSERTs
	firstErr                                     string // the first writer error after the kill
	check                                        ackCheck
	checked                                      bool   // the check ran
	holder                                       string // main's lock holder after the check: "A", "B", else the raw value
	restart                                      time.Duration
	rebootstrapped                               bool   // the restarted node logged "bootstrapping branch" again
	restartedState                               string // the restarted node's compute of main after its restart
	err                                          string // what ended the round early
}

// failover is the clients' wait: last acknowledgement before the kill →
// first after (0 when either is missing).
func (r commitRound) failover() time.Duration {
	if r.ackedBefore == 0 || r.ackedAfter == 0 {
		return 0
	}
	return r.firstAfter - r.lastBefore
}

// ackCheck is the table read back through the survivor.
type ackCheck struct {
	rows       int     // rows of the table
	acked      int     // ids acknowledged so far, all rounds
	missing    int     // of those, not in the table
	missingIDs []int64 // the first chaosMissingShown of them
}

// nodeName is "A" or "B" for a node, else the address.
func (s *cluster) nodeName(addr string) string {
	switch {
	case s.a != nil && addr == s.a.listenAddr():
		return "A"
	case s.b != nil && addr == s.b.listenAddr():
		return "B"
	case addr == "":
		return "nobody"
	}
	return addr
}

// commitFailover creates the table through the node that runs main and
// runs commitFailoverRounds rounds. A round that cannot go on (its
// writers get no acknowledgements, the lock is not on the survivor, the
// killed node does not come back) ends the phase; acknowledged commits
// missing make it fail at the end.
func (s *cluster) commitFailover(ctx context.Context) error {
	if s.a == nil || s.b == nil || !s.a.running() || !s.b.running() {
		return errors.New("both nodes must be running (an earlier phase failed)")
	}
	if s.ps == nil || s.keepers == nil {
		return errors.New("no shared pagestore and keepers")
	}
	owner, err := s.owner(ctx, s.a)
	if err != nil {
		return err
	}
	ddl := "CREATE TABLE " + commitTable + " (id bigint PRIMARY KEY)"
	if err := execOn(ctx, owner.url("disable"), ddl); err != nil {
		return err
	}
	s.rep.command(fmt.Sprintf("psql 'postgres://postgres:…@%s/%s?sslmode=disable' -c '%s'   # through main's node", owner.listenAddr(), branch, ddl))
	s.rep.command(fmt.Sprintf("%d × pgx 'postgres://postgres:…@<the other node>/%s?sslmode=disable': INSERT INTO %s (id) VALUES (<next id>)   # autocommit, simple protocol; reconnect every %s while it fails",
		commitWriters, branch, commitTable, commitReconnectEvery))
	s.rep.command(fmt.Sprintf("after %d acks: curl <owner admin>/v1/branches/%s → compute.pid; kill -9 <owner's neonproxy pid>; kill -9 -<compute.pid>   # at once",
		commitAcksEach, branch))
	s.rep.command(fmt.Sprintf("every %s from the kill: curl http://%s/v1/kv/%s   # free, then held by the survivor", clusterPollEvery, s.agent.addr, lockKey(branch)))
	s.rep.command(fmt.Sprintf("after %d more acks (on connections opened after the kill): stop the writers; SELECT id FROM %s through the survivor; curl http://%s/v1/kv/%s",
		commitAcksEach, commitTable, s.agent.addr, lockKey(branch)))
	s.rep.command("neonproxy serve --config <killed node's neonproxy.yaml>   # same config, ports, data dir; must not bootstrap or take main")

	var next atomic.Int64
	var status []byte // by id: idAttempted or idAcked
	var lost []error
	for n := 1; n <= commitFailoverRounds; n++ {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		prefer := s.a // where main starts if nobody runs it: A in odd rounds
		if n%2 == 0 {
			prefer = s.b
		}
		r, err := s.commitRound(ctx, n, prefer, &next, &status)
		if err != nil {
			r.err = firstLine(err.Error())
		}
		s.rep.commitRounds = append(s.rep.commitRounds, r)
		logf("  round %d: kill -9 %s, writers via %s: %d acks before, %d after; failover %s; lock on %s after %s; rows %d, missing %d; restart %s",
			n, r.killed, r.via, r.ackedBefore, r.ackedAfter, msOrDash(r.failover()), r.via, msOrDash(r.lockTaken),
			r.check.rows, r.check.missing, msOrDash(r.restart))
		if r.check.missing > 0 {
			lost = append(lost, fmt.Errorf("round %d: DATA LOSS: %d acknowledged commit(s) missing (ids %v)", n, r.check.missing, r.check.missingIDs))
		}
		if err != nil {
			return errors.Join(append(lost, fmt.Errorf("round %d: %w", n, err))...)
		}
	}
	return errors.Join(lost...)
}

// owner returns the node that holds main's lock, main's compute running
// there; when nobody holds it, a query through prefer starts main there.
func (s *cluster) owner(ctx context.Context, prefer *proxy) (*proxy, error) {
	l, err := s.agent.lock(ctx, branch)
	if err != nil {
		return nil, err
	}
	if l.session == "" {
		conn, _, _, err := awaitSelect(ctx, prefer.url("disable"), clusterHoldLimit)
		if err != nil {
			return nil, fmt.Errorf("start main through %s: %w", s.nodeName(prefer.listenAddr()), err)
		}
		closeConn(conn)
		if l, err = s.agent.lock(ctx, branch); err != nil {
			return nil, err
		}
	}
	var px *proxy
	switch {
	case l.session == "":
		return nil, errors.New("main's lock is free although main answered a query")
	case l.holder == s.a.listenAddr():
		px = s.a
	case l.holder == s.b.listenAddr():
		px = s.b
	default:
		return nil, fmt.Errorf("main's lock is held by %q, neither A nor B", l.holder)
	}
	if err := px.waitState(ctx, "running", clusterHoldLimit); err != nil {
		return nil, fmt.Errorf("%s holds main's lock: %w", s.nodeName(px.listenAddr()), err)
	}
	return px, nil
}

// commitRound kills main's node while writers commit through the other
// one, checks the acknowledged ids and the lock on the survivor, and
// restarts the killed node. status gathers every round's ids.
func (s *cluster) commitRound(ctx context.Context, n int, prefer *proxy, next *atomic.Int64, status *[]byte) (commitRound, error) {
	r := commitRound{n: n}
	owner, err := s.owner(ctx, prefer)
	if err != nil {
		return r, fmt.Errorf("before the round: %w", err)
	}
	via := s.a
	if owner == s.a {
		via = s.b
	}
	r.killed, r.via = s.nodeName(owner.listenAddr()), s.nodeName(via.listenAddr())
	info, err := owner.branchInfo(ctx, branch)
	if err != nil {
		return r, err
	}
	if info.Compute.State != "running" || info.Compute.PID <= 0 {
		return r, fmt.Errorf("main's compute on %s is %q (pid %d), want running", r.killed, info.Compute.State, info.Compute.PID)
	}
	r.computePID = info.Compute.PID
	logBefore := mainLogCounts(via.logPath)

	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	w := startAckWriters(wctx, via.url("disable"), commitWriters, next)
	stopped := false
	stopWriters := func() {
		if stopped {
			return
		}
		stopped = true
		wcancel()
		w.wait()
		w.tally(status)
	}
	defer stopWriters()
	if err := awaitTrue(ctx, commitBeforeLimit, func() bool { return w.count() >= commitAcksEach }); err != nil {
		stopWriters()
		return r, fmt.Errorf("%d acknowledgements through %s before the kill: %w (%s)", commitAcksEach, r.via, err, w.errSummary(time.Time{}))
	}

	// A machine death: the owner's neonproxy and its compute at once.
	lctx, lcancel := context.WithCancel(ctx)
	defer lcancel()
	lockCh := make(chan lockWatch, 1)
	killedAt := time.Now()
	proxyErr := syscall.Kill(owner.pid(), syscall.SIGKILL)
	computeErr := syscall.Kill(-r.computePID, syscall.SIGKILL)
	go func() { lockCh <- s.watchLock(lctx, killedAt, via.listenAddr()) }()
	switch {
	case proxyErr != nil:
		return r, fmt.Errorf("kill -9 %s's neonproxy (%d): %w", r.killed, owner.pid(), proxyErr)
	case computeErr != nil:
		return r, fmt.Errorf("kill -9 -%d (%s's compute): %w", r.computePID, r.killed, computeErr)
	}
	afterErr := awaitTrue(ctx, commitAfterLimit, func() bool { _, after := w.split(killedAt); return after >= commitAcksEach })
	stopWriters()
	lcancel()
	lw := <-lockCh
	r.lockFree, r.lockTaken = lw.free, lw.taken
	g := w.gap(killedAt)
	r.ackedBefore, r.ackedAfter, r.late = g.before, g.after, g.late
	if g.before > 0 {
		r.lastBefore = g.last.Sub(killedAt)
	}
	if g.after > 0 {
		r.firstAfter = g.first.Sub(killedAt)
	}
	r.connectFails, r.insertFails = w.connectFails, w.insertFails
	r.firstErr = w.firstErrAfter(killedAt)
	logAfter := mainLogCounts(via.logPath)
	r.materialized = logAfter[wake.LogMaterialized] - logBefore[wake.LogMaterialized]
	r.replayed = logAfter[wake.LogReplayingWAL] - logBefore[wake.LogReplayingWAL]
	r.startFailed = logAfter[wake.LogStartFailed] - logBefore[wake.LogStartFailed]
	r.refused = logAfter[logOwnedElsewhere] - logBefore[logOwnedElsewhere]
	if afterErr != nil {
		return r, fmt.Errorf("%d acknowledgements through %s after the kill: %w (%s)", commitAcksEach, r.via, afterErr, w.errSummary(killedAt))
	}

	// The killed node is gone: its neonproxy and every process of its
	// compute (reaped).
	select {
	case <-owner.exited:
	case <-time.After(chaosStopLimit):
		return r, fmt.Errorf("%s's neonproxy still running %s after SIGKILL", r.killed, chaosStopLimit)
	}
	if err := waitGroupGone(ctx, r.computePID, chaosStopLimit); err != nil {
		return r, err
	}

	// Every acknowledged id, through the survivor; main's lock on it.
	if r.check, err = checkAcked(ctx, via.url("disable"), *status); err != nil {
		return r, err
	}
	r.checked = true
	l, err := s.agent.lock(ctx, branch)
	if err != nil {
		return r, err
	}
	r.holder = s.nodeName(l.holder)
	if l.session == "" || l.holder != via.listenAddr() {
		return r, fmt.Errorf("after the failover main's lock is held by %s (session %q), want the survivor %s", r.holder, l.session, r.via)
	}

	// The killed node comes back on its config and data dir, as a
	// rebooted machine would: it must neither bootstrap main nor take it.
	boots := countInFile(owner.logPath, logBootstrapping)
	start := time.Now()
	if err := owner.restart(ctx); err != nil {
		return r, fmt.Errorf("restart %s: %w", r.killed, err)
	}
	r.restart = time.Since(start)
	if r.rebootstrapped = countInFile(owner.logPath, logBootstrapping) > boots; r.rebootstrapped {
		return r, fmt.Errorf("%s bootstrapped main again at its restart (see %s)", r.killed, owner.logPath)
	}
	st, err := owner.status(ctx)
	if err != nil {
		return r, fmt.Errorf("%s after its restart: %w", r.killed, err)
	}
	if r.restartedState = st.State; st.State != "stopped" {
		return r, fmt.Errorf("%s's compute of main is %q after its restart; main runs on %s", r.killed, st.State, r.via)
	}
	if l, err = s.agent.lock(ctx, branch); err != nil {
		return r, err
	}
	if l.holder != via.listenAddr() || l.session == "" {
		return r, fmt.Errorf("after %s's restart main's lock is held by %s, want %s", r.killed, s.nodeName(l.holder), r.via)
	}
	return r, nil
}

// lockWatch is what watchLock saw, relative to the kill.
type lockWatch struct{ free, taken time.Duration }

// watchLock polls main's lock key every clusterPollEvery from killedAt
// until the node at want holds it (or ctx ends).
func (s *cluster) watchLock(ctx context.Context, killedAt time.Time, want string) lockWatch {
	var w lockWatch
	for {
		l, err := s.agent.lock(ctx, branch)
		if err == nil {
			if l.session == "" && w.free == 0 {
				w.free = time.Since(killedAt)
			}
			if l.session != "" && l.holder == want {
				w.taken = time.Since(killedAt)
				return w
			}
		}
		select {
		case <-ctx.Done():
			return w
		case <-time.After(clusterPollEvery):
		}
	}
}

// awaitTrue polls ok every commitPollEvery until it holds, for at most
// limit.
func awaitTrue(ctx context.Context, limit time.Duration, ok func() bool) error {
	deadline := time.Now().Add(limit)
	for !ok() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %s", limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(commitPollEvery):
		}
	}
	return nil
}

// checkAcked reads the table's ids through dsn (retrying the connect
// while the compute starts) and counts the acknowledged ids (status
// idAcked) that are missing.
func checkAcked(ctx context.Context, dsn string, status []byte) (ackCheck, error) {
	var c ackCheck
	conn, _, _, err := awaitSelect(ctx, dsn, clusterHoldLimit)
	if err != nil {
		return c, fmt.Errorf("check: %w", err)
	}
	defer closeConn(conn)
	qctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	rows, err := conn.Query(qctx, "SELECT id FROM "+commitTable, pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		return c, fmt.Errorf("check: %w", err)
	}
	present := make([]bool, len(status))
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return c, err
		}
		c.rows++
		if id > 0 && id < int64(len(present)) {
			present[id] = true
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return c, fmt.Errorf("check: %w", err)
	}
	for id, st := range status {
		if st != idAcked {
			continue
		}
		c.acked++
		if !present[id] {
			c.missing++
			if len(c.missingIDs) < chaosMissingShown {
				c.missingIDs = append(c.missingIDs, int64(id))
			}
		}
	}
	return c, nil
}

// logOwnedElsewhere is mainLogCounts' key of the failed starts refused
// because another node held main's lock (wake.ErrOwnedElsewhere); the
// other failed starts count under wake.LogStartFailed.
const logOwnedElsewhere = "refused: owned elsewhere"

// mainLogCounts counts main's materializations, WAL replays and failed
// starts in a node's JSON log.
func mainLogCounts(path string) map[string]int {
	out := map[string]int{}
	b, err := os.ReadFile(path)
	if err != nil {
		return out
	}
	for _, line := range strings.Split(string(b), "\n") {
		var m struct{ Msg, Branch, Error string }
		if json.Unmarshal([]byte(line), &m) != nil || m.Branch != branch {
			continue
		}
		switch {
		case m.Msg == wake.LogStartFailed && strings.Contains(m.Error, wake.ErrOwnedElsewhere.Error()):
			out[logOwnedElsewhere]++
		case m.Msg == wake.LogMaterialized, m.Msg == wake.LogReplayingWAL, m.Msg == wake.LogStartFailed:
			out[m.Msg]++
		}
	}
	return out
}

// countInFile counts the occurrences of sub in the file at path (0 when
// it cannot be read).
func countInFile(path, sub string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	return strings.Count(string(b), sub)
}

// ackWriters are writers that insert consecutive ids into the table, one
// autocommit INSERT at a time, and reconnect (every commitReconnectEvery
// while connecting fails) whenever their connection breaks, until their
// context ends. Each acknowledgement keeps its time and the time its
// connection was opened.
type ackWriters struct {
	mu           sync.Mutex
	acks         []ack
	attempted    []int64
	connectFails int
	insertFails  int
	errs         []timedErr // the first commitErrsKept errors
	wg           sync.WaitGroup
}

// ack is one acknowledged INSERT.
type ack struct {
	id   int64
	at   time.Time // the INSERT returned success
	conn time.Time // its connection was opened
}

type timedErr struct {
	at  time.Time
	msg string
}

// startAckWriters starts n writers on dsn; ids come from next.Add(1).
func startAckWriters(ctx context.Context, dsn string, n int, next *atomic.Int64) *ackWriters {
	w := &ackWriters{}
	for range n {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			w.run(ctx, dsn, next)
		}()
	}
	return w
}

func (w *ackWriters) run(ctx context.Context, dsn string, next *atomic.Int64) {
	for ctx.Err() == nil {
		cctx, cancel := context.WithTimeout(ctx, connectLimit)
		conn, err := pgx.Connect(cctx, dsn)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				w.fail(true, err)
			}
			select {
			case <-ctx.Done():
			case <-time.After(commitReconnectEvery):
			}
			continue
		}
		opened := time.Now()
		for ctx.Err() == nil {
			id := next.Add(1)
			w.mu.Lock()
			w.attempted = append(w.attempted, id)
			w.mu.Unlock()
			ictx, cancel := context.WithTimeout(ctx, commitInsertLimit)
			_, err := conn.Exec(ictx, "INSERT INTO "+commitTable+" (id) VALUES ("+strconv.FormatInt(id, 10)+")", pgx.QueryExecModeSimpleProtocol)
			cancel()
			if err != nil {
				if ctx.Err() == nil {
					w.fail(false, err)
				}
				break
			}
			now := time.Now()
			w.mu.Lock()
			w.acks = append(w.acks, ack{id: id, at: now, conn: opened})
			w.mu.Unlock()
		}
		closeConn(conn)
	}
}

// fail records a failed connect or INSERT.
func (w *ackWriters) fail(connect bool, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if connect {
		w.connectFails++
	} else {
		w.insertFails++
	}
	if len(w.errs) < commitErrsKept {
		w.errs = append(w.errs, timedErr{time.Now(), firstLine(err.Error())})
	}
}

// wait waits until every writer has stopped (after its context ended).
func (w *ackWriters) wait() { w.wg.Wait() }

func (w *ackWriters) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acks)
}

// split counts the acknowledgements on connections opened up to t and
// after it.
func (w *ackWriters) split(t time.Time) (before, after int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, a := range w.acks {
		if a.conn.After(t) {
			after++
		} else {
			before++
		}
	}
	return before, after
}

// ackGap is the acknowledgements around a kill at t: on connections
// opened up to t (before: the killed owner served them) and after it.
type ackGap struct {
	before, after int
	last, first   time.Time // the last of before, the first of after
	late          int       // of before, those that arrived after t
}

func (w *ackWriters) gap(t time.Time) ackGap {
	w.mu.Lock()
	defer w.mu.Unlock()
	return gapOf(w.acks, t)
}

// gapOf is ackWriters.gap on a list of acknowledgements.
func gapOf(acks []ack, t time.Time) ackGap {
	var g ackGap
	for _, a := range acks {
		if a.conn.After(t) {
			g.after++
			if g.first.IsZero() || a.at.Before(g.first) {
				g.first = a.at
			}
			continue
		}
		g.before++
		if a.at.After(g.last) {
			g.last = a.at
		}
		if a.at.After(t) {
			g.late++
		}
	}
	return g
}

// firstErrAfter is the first kept writer error after t ("" if none).
func (w *ackWriters) firstErrAfter(t time.Time) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, e := range w.errs {
		if e.at.After(t) {
			return e.msg
		}
	}
	return ""
}

// errSummary is the writers' error counts and first error after t, for
// an error message.
func (w *ackWriters) errSummary(t time.Time) string {
	first := w.firstErrAfter(t)
	w.mu.Lock()
	defer w.mu.Unlock()
	return fmt.Sprintf("%d acknowledged, %d failed connects, %d failed INSERTs; first error: %s", len(w.acks), w.connectFails, w.insertFails, orDash(first))
}

// tally records the writers' ids in status (idAttempted, then idAcked);
// call it once they have stopped.
func (w *ackWriters) tally(status *[]byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, id := range w.attempted {
		if int(id) >= len(*status) || (*status)[id] != idAcked {
			*status = growSet(*status, id, idAttempted)
		}
	}
	for _, a := range w.acks {
		*status = growSet(*status, a.id, idAcked)
	}
}
