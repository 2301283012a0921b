package wake

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"

	"github.com/neonproxy/neonproxy/pagestore"
	"github.com/neonproxy/neonproxy/walkeeper"
)

// infoTimeout bounds one keeper's answer to a read of what it holds: a
// keeper that is down must not hold up a start for longer.
const infoTimeout = 2 * time.Second

// slotName is PostgreSQL's rule for replication slot names.
var slotName = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// followTimeout bounds the start of one keeper's stream (the keeper retries
// for a while itself while the compute still holds the slot for a stream
// that just ended).
const followTimeout = 15 * time.Second

// keeperSet is the WAL keepers every compute streams to. PostgreSQL's own
// quorum commit (synchronous_standby_names = 'ANY quorum (wk1, …)') makes
// a COMMIT wait until `quorum` of them have it on disk; nothing here votes.
// Reading the durable WAL back therefore needs answers from
// len(members)-quorum+1 keepers: any set that large shares at least one
// keeper with every quorum that acknowledged a commit.
type keeperSet struct {
	members []keeperMember
	quorum  int
	log     *zap.Logger
}

type keeperMember struct {
	name string // application_name the compute knows it by
	svc  walkeeper.Service
}

func newKeeperSet(svcs []walkeeper.Service, quorum int, log *zap.Logger) (*keeperSet, error) {
	if len(svcs) == 0 {
		return nil, nil
	}
	if quorum < 1 || quorum > len(svcs) {
		return nil, fmt.Errorf("wake: WAL keeper quorum %d with %d keepers: want 1 to %d", quorum, len(svcs), len(svcs))
	}
	s := &keeperSet{quorum: quorum, log: log}
	for i, svc := range svcs {
		s.members = append(s.members, keeperMember{name: fmt.Sprintf("wk%d", i+1), svc: svc})
	}
	return s, nil
}

// slot is the replication slot member m streams from: the compute keeps the
// WAL that keeper has not confirmed.
func (m keeperMember) slot() string { return "neonproxy_" + m.name }

// readQuorum is how many keepers must answer a read of the durable WAL.
func (s *keeperSet) readQuorum() int { return len(s.members) - s.quorum + 1 }

// settings are the compute settings that make every commit wait for the
// keepers' fsync (PostgreSQL's own synchronous replication).
func (s *keeperSet) settings() []string {
	names := make([]string, len(s.members))
	for i, m := range s.members {
		names[i] = m.name
	}
	return []string{
		"-c", "synchronous_commit=on",
		"-c", fmt.Sprintf("synchronous_standby_names=ANY %d (%s)", s.quorum, strings.Join(names, ", ")),
		// A keeper connection that stopped answering is noticed within
		// seconds, so the supervisor can reconnect while commits wait.
		"-c", "wal_sender_timeout=10s",
	}
}

func (d *PostgresDriver) keeperSettings() []string {
	if d.keepers == nil {
		return nil
	}
	return d.keepers.settings()
}

// memberInfo is one keeper's answer.
type memberInfo struct {
	i   int
	in  walkeeper.Info
	err error
}

// infos asks every keeper what it holds for ns, in parallel. It fails
// unless a read quorum answered.
func (s *keeperSet) infos(ctx context.Context, ns uint64) ([]memberInfo, error) {
	out := make([]memberInfo, len(s.members))
	var wg sync.WaitGroup
	for i, m := range s.members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ictx, cancel := context.WithTimeout(ctx, infoTimeout)
			defer cancel()
			in, err := m.svc.Info(ictx, ns)
			out[i] = memberInfo{i: i, in: in, err: err}
		}()
	}
	wg.Wait()
	ok := slices.DeleteFunc(slices.Clone(out), func(mi memberInfo) bool { return mi.err != nil })
	if len(ok) < s.readQuorum() {
		var errs []string
		for _, mi := range out {
			if mi.err != nil {
				errs = append(errs, fmt.Sprintf("%s: %v", s.members[mi.i].name, mi.err))
			}
		}
		return nil, fmt.Errorf("only %d of %d WAL keepers answered, %d are needed to know the durable WAL: %s",
			len(ok), len(s.members), s.readQuorum(), strings.Join(errs, "; "))
	}
	return ok, nil
}

// durableView is what a read quorum of keepers says about one namespace.
type durableView struct {
	member  int               // index in keeperSet.members
	src     walkeeper.Service // the keeper holding the newest durable WAL
	srcName string
	info    walkeeper.Info // src's
	covered pagestore.LSN  // the newest image known to cover the WAL
	gen     uint64         // newest compute generation any keeper saw
}

// durable finds the keeper with the newest WAL of ns: among the keepers
// holding WAL of the newest compute generation (older ones may hold WAL
// that generation cut off), the one with the highest flush LSN. Every acknowledged commit
// is there, unless its copy is damaged: readSource checks that.
func (s *keeperSet) durable(ctx context.Context, ns uint64) (durableView, error) {
	views, err := s.candidates(ctx, ns)
	if err != nil {
		return durableView{}, err
	}
	return views[0], nil
}

// candidates are the keepers that answered holding WAL of the newest
// generation, highest flush LSN first.
func (s *keeperSet) candidates(ctx context.Context, ns uint64) ([]durableView, error) {
	ok, err := s.infos(ctx, ns)
	if err != nil {
		return nil, err
	}
	views := pickCandidates(ok)
	for i := range views {
		m := s.members[views[i].member]
		views[i].src, views[i].srcName = m.svc, m.name
	}
	return views, nil
}

// pickCandidates chooses among the answers: the keepers whose newest WAL
// is of the newest generation any of them holds WAL of (DataGen, not Gen:
// a keeper that adopted a generation while it lagged, and whose stream
// then ended, has the generation but not the WAL before its start, which
// the others may alone have), highest flush first. gen is the newest
// generation any keeper adopted: the next one goes above it.
func pickCandidates(answers []memberInfo) []durableView {
	var covered pagestore.LSN
	var gen, dataGen uint64
	for _, mi := range answers {
		covered = max(covered, pagestore.LSN(mi.in.Covered))
		gen = max(gen, mi.in.Gen)
		dataGen = max(dataGen, mi.in.DataGen)
	}
	var views []durableView
	for _, mi := range answers {
		if mi.in.DataGen == dataGen {
			views = append(views, durableView{member: mi.i, info: mi.in, covered: covered, gen: gen})
		}
	}
	slices.SortStableFunc(views, func(a, b durableView) int { return cmp.Compare(b.info.Flush, a.info.Flush) })
	return views
}

// readSource picks the keeper to read ns's WAL from `from` (a record
// start) for a replay: of the candidates, the one whose records check out
// (CRC32C, back-links: walkeeper.ValidEnd) furthest. A copy damaged on one
// keeper is then read from another. The view's info.Flush is that valid
// end.
func (s *keeperSet) readSource(ctx context.Context, ns uint64, from pagestore.LSN) (durableView, error) {
	views, err := s.candidates(ctx, ns)
	if err != nil {
		return durableView{}, err
	}
	best, bestEnd := -1, walkeeper.LSN(0)
	for i, v := range views {
		if best >= 0 && bestEnd >= v.info.Flush {
			break // no later candidate can have more
		}
		if v.info.Flush <= uint64(from) {
			continue
		}
		end, err := s.validEnd(ctx, v, ns, from)
		if err != nil {
			s.log.Warn("cannot check a WAL keeper's copy", zap.String("keeper", v.srcName), zap.Error(err))
			continue
		}
		if end < v.info.Flush&^(walkeeper.PageSize-1) {
			s.log.Warn("a WAL keeper's copy ends in a damaged or foreign record before its flush position",
				zap.String("keeper", v.srcName), zap.Uint64("ns", ns), zap.Stringer("valid_end", pagestore.LSN(end)),
				zap.Stringer("flush", pagestore.LSN(v.info.Flush)))
		}
		if best < 0 || end > bestEnd {
			best, bestEnd = i, end
		}
	}
	if best < 0 {
		return views[0], nil // nothing after `from` anywhere
	}
	v := views[best]
	v.info.Flush = max(bestEnd, uint64(from))
	return v, nil
}

func (s *keeperSet) validEnd(ctx context.Context, v durableView, ns uint64, from pagestore.LSN) (walkeeper.LSN, error) {
	w, err := v.src.Export(ctx, ns, uint64(from), 0)
	if err != nil {
		return 0, err
	}
	defer w.Body.Close()
	return walkeeper.ValidEnd(w, uint64(from))
}

// each runs op on every keeper in parallel and returns how many succeeded
// and the errors of the others.
func (s *keeperSet) each(ctx context.Context, op func(ctx context.Context, m keeperMember) error) (int, error) {
	errs := make([]error, len(s.members))
	var wg sync.WaitGroup
	for i, m := range s.members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := op(ctx, m); err != nil {
				errs[i] = fmt.Errorf("%s: %w", m.name, err)
			}
		}()
	}
	wg.Wait()
	n := 0
	for _, err := range errs {
		if err == nil {
			n++
		}
	}
	return n, errors.Join(errs...)
}

// all runs op on every keeper; a keeper that fails is logged (it is
// behind, which the next start or stop makes good) unless fewer than a
// quorum succeed.
func (s *keeperSet) all(ctx context.Context, what string, op func(ctx context.Context, m keeperMember) error) error {
	n, err := s.each(ctx, op)
	if n < s.quorum {
		return fmt.Errorf("%s: %d of %d WAL keepers did it, %d needed: %w", what, n, len(s.members), s.quorum, err)
	}
	if err != nil {
		s.log.Warn("a WAL keeper missed an update", zap.String("what", what), zap.Error(err))
	}
	return nil
}

// branch gives namespace `to` the WAL of `from` from the page holding `at`
// up to from's durable end, on every keeper (copied from the keeper that
// has the newest, so each holds all of it), and returns that end (0: no
// WAL after `at`). latest says that `at` is from's newest image and the
// branch has no target to replay to (startsAtHead).
func (s *keeperSet) branch(ctx context.Context, from, to uint64, at pagestore.LSN, latest bool) (pagestore.LSN, error) {
	v, err := s.readSource(ctx, from, at)
	if err != nil {
		return 0, err
	}
	if err := s.all(ctx, "clear the new branch's WAL", func(ctx context.Context, m keeperMember) error { return m.svc.Drop(ctx, to) }); err != nil {
		return 0, err
	}
	end := v.info.Flush
	if end == 0 || end <= uint64(at) {
		return 0, nil
	}
	if latest && v.covered >= pagestore.LSN(end) {
		// The parent's newest image holds all its WAL (it stopped cleanly
		// and has not run since): the keepers' copy would be the image's
		// own shutdown checkpoint record, and replaying it would make the
		// branch's first start a crash recovery, which fsyncs the whole
		// data directory first (0.5 s and the directory's size in disk
		// writes for a 200 MB branch).
		return 0, nil
	}
	if v.info.Start > uint64(at)&^(walkeeper.PageSize-1) {
		return 0, fmt.Errorf("WAL from %s is needed but keeper %s has it from %s on", at, v.srcName, pagestore.LSN(v.info.Start))
	}
	err = s.all(ctx, "copy the parent's WAL to the new branch", func(ctx context.Context, m keeperMember) error {
		wal, err := v.src.Export(ctx, from, uint64(at), end)
		if err != nil {
			return err
		}
		return m.svc.Import(ctx, to, wal)
	})
	if err != nil {
		return 0, err
	}
	return pagestore.LSN(end), nil
}

// startsAtHead reports whether timeline tl starts at its parent ptl's
// newest image, with no point in time to replay to.
func startsAtHead(ptl, tl pagestore.Timeline) bool {
	return tl.ParentLSN == ptl.Head() && tl.Target == 0 && tl.TargetTime.IsZero()
}

// replayFromKeeper puts the keepers' WAL after the image into the freshly
// materialized directory tmp and marks it crashed, so that PostgreSQL's
// crash recovery replays every acknowledged commit. It reports whether
// there was WAL to replay.
func (d *PostgresDriver) replayFromKeeper(ctx context.Context, branch string, tl pagestore.Timeline, tmp string) (bool, error) {
	if d.keepers == nil {
		return false, nil
	}
	v, err := d.keepers.durable(ctx, uint64(tl.ID))
	if err != nil {
		return false, err
	}
	if pagestore.LSN(v.info.Flush) <= max(tl.Head(), v.covered) {
		return false, nil
	}
	cp, err := d.controlData(ctx, tmp)
	if err != nil {
		return false, err
	}
	if v, err = d.keepers.readSource(ctx, uint64(tl.ID), cp.LSN); err != nil {
		return false, err
	}
	end, err := walkeeper.WriteSegments(ctx, v.src, uint64(tl.ID), uint64(cp.LSN), cp.TimeLineID, cp.WALSegSize,
		filepath.Join(tmp, "pg_wal"), d.owner().UID, d.owner().GID)
	if err != nil {
		return false, fmt.Errorf("write WAL from keeper %s: %w", v.srcName, err)
	}
	if err := walkeeper.MarkCrashed(tmp); err != nil {
		return false, err
	}
	d.log.Info(LogReplayingWAL, zap.String("branch", branch),
		zap.String("keeper", v.srcName), zap.Stringer("image", tl.Head()), zap.Stringer("valid_end", pagestore.LSN(v.info.Flush)),
		zap.Stringer("wal_end", pagestore.LSN(end)))
	return true, nil
}

// nextGeneration is the compute generation of a new start of ns: above
// every generation a read quorum of keepers has seen.
func (d *PostgresDriver) nextGeneration(ctx context.Context, ns uint64) (uint64, error) {
	v, err := d.keepers.durable(ctx, ns)
	if err != nil {
		return 0, err
	}
	return v.gen + 1, nil
}

// adoptedGeneration is the generation and history start of a compute an
// earlier neonproxy started (from its local state), so the keepers go on
// with it as before.
func (d *PostgresDriver) adoptedGeneration(ctx context.Context, st localState, pgdata string) (uint64, walkeeper.LSN, error) {
	v, err := d.keepers.durable(ctx, uint64(st.Timeline))
	if err != nil {
		return 0, 0, err
	}
	switch {
	case st.Gen != 0 && v.gen == st.Gen:
		return st.Gen, v.info.GenStart, nil
	case st.Gen != 0 && v.gen > st.Gen:
		return 0, 0, fmt.Errorf("%w: the keepers are at generation %d, the compute at %d", walkeeper.ErrFenced, v.gen, st.Gen)
	}
	// The earlier neonproxy ended before any keeper recorded the
	// compute's generation (or wrote none): its history starts at the
	// latest checkpoint at the latest.
	gen := st.Gen
	if gen == 0 {
		gen = v.gen + 1
	}
	genStart, err := walkeeper.CheckpointLSN(pgdata)
	return gen, genStart, err
}

// keeperStream supervises the replication streams from one running compute
// to every keeper: each reconnects (from what its keeper has) until the
// compute exits, because while fewer than a quorum stream, commits wait.
type keeperStream struct {
	cancel  context.CancelFunc
	done    chan struct{} // every member's supervisor has ended
	quorum  int
	members []*memberStream
}

// memberStream is the stream to one keeper.
type memberStream struct {
	name string
	mu   struct {
		sync.Mutex
		cur walkeeper.Follower // nil while (re)connecting
	}
}

func (ms *memberStream) setCurrent(f walkeeper.Follower) {
	ms.mu.Lock()
	ms.mu.cur = f
	ms.mu.Unlock()
}

// status reports whether the keeper streams and how far behind it is.
func (ms *memberStream) status() (streaming bool, lag uint64) {
	ms.mu.Lock()
	cur := ms.mu.cur
	ms.mu.Unlock()
	if cur == nil {
		return false, 0
	}
	select {
	case <-cur.Done():
		return false, 0
	default:
		return true, cur.LagBytes()
	}
}

// status reports whether a quorum streams and the lag that holds commits
// back: the quorum-th smallest lag among the streaming keepers.
func (ks *keeperStream) status() (streaming bool, lag uint64, each []KeeperStatus) {
	var lags []uint64
	for _, ms := range ks.members {
		ok, l := ms.status()
		st := KeeperStatus{Name: ms.name, State: "disconnected"}
		if ok {
			st.State, st.LagBytes = "streaming", int64(l)
			lags = append(lags, l)
		}
		each = append(each, st)
	}
	if len(lags) < ks.quorum {
		return false, 0, each
	}
	slices.Sort(lags)
	return true, lags[ks.quorum-1], each
}

// startKeeper makes every keeper stream branch's WAL and returns once a
// quorum streams (commits can complete). Keepers that are down are retried
// in the background and catch up from where they stopped when they are
// back (the compute keeps their WAL in their slots).
func (d *PostgresDriver) startKeeper(ctx context.Context, branch string, ns uint64, from pagestore.LSN, gen uint64, genStart walkeeper.LSN, sock string, exited <-chan struct{}) (*keeperStream, error) {
	if d.keepers == nil {
		return nil, nil
	}
	conn := fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres", sock, Port)
	if err := d.dropStaleSlots(ctx, branch, conn); err != nil {
		return nil, err
	}
	keeperConn := conn
	if fd := d.o.KeeperFrontDoor; fd != "" {
		// Keepers on other machines: through this node's front door, over
		// TLS with channel binding, as the keepers' role (their password
		// is walkeeper.token, which they add themselves).
		host, port, err := net.SplitHostPort(fd)
		if err != nil {
			return nil, fmt.Errorf("keepers' front door %q: %w", fd, err)
		}
		keeperConn = fmt.Sprintf("host=%s port=%s user=%s dbname=postgres options='endpoint=%s' sslmode=require channel_binding=require",
			host, port, walkeeper.ReplicationUser, branch)
	}
	// The streams live as long as the compute, not as the start request.
	sctx, cancel := context.WithCancel(context.Background())
	ks := &keeperStream{cancel: cancel, done: make(chan struct{}), quorum: d.keepers.quorum}
	up := make(chan struct{}, len(d.keepers.members))
	errs := make([]error, len(d.keepers.members))
	var errMu sync.Mutex
	var wg sync.WaitGroup
	for i, m := range d.keepers.members {
		ms := &memberStream{name: m.name}
		ks.members = append(ks.members, ms)
		req := walkeeper.FollowRequest{NS: ns, ConnString: keeperConn, Slot: m.slot(), AppName: m.name,
			From: uint64(from), Gen: gen, GenStart: genStart}
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.superviseMember(sctx, branch, m, ms, req, exited, func(err error) {
				errMu.Lock()
				errs[i] = err
				errMu.Unlock()
			}, up)
		}()
	}
	go func() {
		wg.Wait()
		close(ks.done)
	}()
	streaming := 0
	for streaming < d.keepers.quorum {
		var why error
		select {
		case <-up:
			streaming++
			continue
		case <-ctx.Done():
			why = ctx.Err()
		case <-ks.done:
			why = errors.New("every keeper gave up (fenced, or the compute exited)")
		}
		ks.stop()
		errMu.Lock()
		err := errors.Join(errs...)
		errMu.Unlock()
		return nil, fmt.Errorf("wake: WAL keepers for branch %s: %d of %d streaming, %d needed (%w): %v",
			branch, streaming, len(d.keepers.members), d.keepers.quorum, why, err)
	}
	return ks, nil
}

// dropStaleSlots drops the replication slots of keepers the compute no
// longer streams to (walkeeper.peers changed, or an older neonproxy's
// slot): a slot nobody reads keeps all WAL after it forever. The slot
// directory is read first, so a start without stale slots costs no
// connection.
func (d *PostgresDriver) dropStaleSlots(ctx context.Context, branch, conn string) error {
	ents, err := os.ReadDir(filepath.Join(d.pgdata(branch), "pg_replslot"))
	if err != nil {
		return nil // PostgreSQL reports what matters about its own directory
	}
	want := map[string]bool{}
	for _, m := range d.keepers.members {
		want[m.slot()] = true
	}
	var stale []string
	for _, e := range ents {
		if n := e.Name(); strings.HasPrefix(n, "neonproxy_") && !want[n] && slotName.MatchString(n) {
			stale = append(stale, n)
		}
	}
	if len(stale) == 0 {
		return nil
	}
	c, err := pgconn.Connect(ctx, conn)
	if err != nil {
		return fmt.Errorf("wake: drop stale replication slots of %s: %w", branch, err)
	}
	defer c.Close(context.WithoutCancel(ctx))
	for _, slot := range stale {
		// slotName allows no quote.
		if _, err := c.Exec(ctx, "SELECT pg_drop_replication_slot('"+slot+"')").ReadAll(); err != nil {
			return fmt.Errorf("wake: drop stale replication slot %s of %s: %w", slot, branch, err)
		}
		d.log.Info("dropped the replication slot of a keeper no longer used", zap.String("branch", branch), zap.String("slot", slot))
	}
	return nil
}

// superviseMember keeps one keeper streaming until sctx ends or the
// compute exits. up gets a value at the first successful start.
func (d *PostgresDriver) superviseMember(sctx context.Context, branch string, m keeperMember, ms *memberStream,
	req walkeeper.FollowRequest, exited <-chan struct{}, noteErr func(error), up chan<- struct{}) {
	log := d.log.With(zap.String("branch", branch), zap.String("keeper", m.name))
	first := true
	backoff := 100 * time.Millisecond
	failures := 0
	for {
		// The start of a stream is bounded (a keeper that hangs must not
		// hold the compute's start); the stream itself is not.
		fctx, cancel := context.WithTimeout(sctx, followTimeout)
		f, err := m.svc.Follow(fctx, req)
		cancel()
		switch {
		case err == nil:
			ms.setCurrent(f)
			if first {
				first = false
				up <- struct{}{}
			} else {
				log.Info("WAL keeper stream resumed")
			}
			backoff, failures = 100*time.Millisecond, 0
			select {
			case <-f.Done():
			case <-sctx.Done():
				f.Stop()
				return
			}
			ms.setCurrent(nil)
			// A stopping compute ends the stream a moment before its
			// postmaster is seen to exit.
			select {
			case <-exited:
				return
			case <-sctx.Done():
				return
			case <-time.After(time.Second):
			}
			log.Warn("WAL keeper stream ended while the compute runs; reconnecting", zap.Error(f.Err()))
			continue
		case errors.Is(err, walkeeper.ErrFenced):
			// A newer start of this branch streams to the keeper: this
			// compute is stale and must not write there again.
			log.Error("WAL keeper refuses this compute: a newer one of the branch has streamed to it", zap.Error(err))
			noteErr(err)
			return
		}
		noteErr(err)
		failures++
		if failures == 1 {
			log.Warn("WAL keeper not streaming; retrying in the background", zap.Error(err))
		} else {
			log.Debug("WAL keeper not streaming", zap.Error(err))
		}
		select {
		case <-exited:
			return
		case <-sctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// stop ends the supervision (the compute has exited) and waits.
func (ks *keeperStream) stop() {
	if ks == nil {
		return
	}
	ks.cancel()
	<-ks.done
}

// keeperState says whether branch's compute streams to a quorum of keepers
// ("streaming", or "disconnected": its commits wait), the WAL that quorum
// is behind by, and each keeper's state; "" when no supervision runs
// (compute stopped, no keepers).
func (d *PostgresDriver) keeperState(branch string) (string, uint64, []KeeperStatus) {
	ks := d.streams.get(branch)
	if ks == nil {
		return "", 0, nil
	}
	select {
	case <-ks.done:
		return "", 0, nil
	default:
	}
	ok, lag, each := ks.status()
	if ok {
		return "streaming", lag, each
	}
	return "disconnected", 0, each
}

// KeeperLag reports, for each branch whose compute streams to a quorum of
// keepers, how many bytes of WAL that quorum has not made durable yet.
func (d *PostgresDriver) KeeperLag() map[string]uint64 {
	d.streams.mu.Lock()
	names := make([]string, 0, len(d.streams.mu.m))
	for n := range d.streams.mu.m {
		names = append(names, n)
	}
	d.streams.mu.Unlock()
	out := make(map[string]uint64, len(names))
	for _, n := range names {
		if st, lag, _ := d.keeperState(n); st == "streaming" {
			out[n] = lag
		}
	}
	return out
}

// keeperStreams tracks the supervised streams of each running branch.
type keeperStreams struct {
	mu struct {
		sync.Mutex
		m map[string]*keeperStream
	}
}

func (k *keeperStreams) set(branch string, s *keeperStream) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.mu.m == nil {
		k.mu.m = make(map[string]*keeperStream)
	}
	k.mu.m[branch] = s
}

func (k *keeperStreams) get(branch string) *keeperStream {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.mu.m[branch]
}

func (k *keeperStreams) take(branch string) *keeperStream {
	k.mu.Lock()
	defer k.mu.Unlock()
	s := k.mu.m[branch]
	delete(k.mu.m, branch)
	return s
}

// stopAll ends every supervision (the driver closes).
func (k *keeperStreams) stopAll() {
	k.mu.Lock()
	all := k.mu.m
	k.mu.m = nil
	k.mu.Unlock()
	for _, s := range all {
		s.stop()
	}
}
