package wake

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/neonproxy/neonproxy/pagestore"
	"github.com/neonproxy/neonproxy/walkeeper"
)

// keeperSlot is the physical replication slot the keeper streams from: the
// compute keeps the WAL the keeper has not confirmed.
const keeperSlot = "neonproxy_walkeeper"

// keeperSettings are the compute settings that make every commit wait for
// the keeper's fsync (PostgreSQL's own synchronous replication).
func (d *PostgresDriver) keeperSettings() []string {
	if d.keeper == nil {
		return nil
	}
	return []string{
		"-c", "synchronous_commit=on",
		"-c", fmt.Sprintf("synchronous_standby_names=ANY 1 (%s)", d.keeper.Name()),
		// A stopped keeper connection is noticed within seconds, so the
		// supervisor can reconnect while commits wait.
		"-c", "wal_sender_timeout=10s",
	}
}

// replayFromKeeper puts the keeper's WAL after the image into the freshly
// materialized directory tmp and marks it crashed, so that PostgreSQL's
// crash recovery replays every commit the keeper acknowledged. It reports
// whether there was WAL to replay.
func (d *PostgresDriver) replayFromKeeper(ctx context.Context, branch string, tl pagestore.Timeline, tmp string) (bool, error) {
	if d.keeper == nil {
		return false, nil
	}
	ns := uint64(tl.ID)
	flush := d.keeper.FlushLSN(ns)
	if flush <= max(uint64(tl.Head()), d.keeper.Covered(ns)) {
		return false, nil
	}
	cp, err := d.controlData(ctx, tmp)
	if err != nil {
		return false, err
	}
	end, err := d.keeper.WriteSegments(ns, uint64(cp.LSN), cp.TimeLineID, cp.WALSegSize, filepath.Join(tmp, "pg_wal"),
		d.owner().UID, d.owner().GID)
	if err != nil {
		return false, fmt.Errorf("write WAL from the keeper: %w", err)
	}
	if err := walkeeper.MarkCrashed(tmp); err != nil {
		return false, err
	}
	d.log.Info("replaying WAL from the keeper on top of the stored image", zap.String("branch", branch),
		zap.Stringer("image", tl.Head()), zap.Stringer("wal_end", pagestore.LSN(end)))
	return true, nil
}

// keeperStream supervises the keeper's replication stream from one running
// compute: it reconnects (from what the keeper has) until the compute
// exits, because while no keeper streams, the compute's commits wait.
type keeperStream struct {
	cancel context.CancelFunc
	done   chan struct{}

	mu struct {
		sync.Mutex
		cur *walkeeper.Stream // nil while reconnecting
	}
}

func (ks *keeperStream) setCurrent(s *walkeeper.Stream) {
	ks.mu.Lock()
	ks.mu.cur = s
	ks.mu.Unlock()
}

// status reports whether the keeper streams and how far it is behind.
func (ks *keeperStream) status() (streaming bool, lag uint64) {
	ks.mu.Lock()
	cur := ks.mu.cur
	ks.mu.Unlock()
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

// startKeeper streams branch's WAL to the keeper and returns once the
// compute's walsender streams to it (commits can complete).
func (d *PostgresDriver) startKeeper(ctx context.Context, branch string, ns uint64, from pagestore.LSN, sock string, exited <-chan struct{}) (*keeperStream, error) {
	if d.keeper == nil {
		return nil, nil
	}
	conn := fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres", sock, Port)
	start := func(ctx context.Context) (*walkeeper.Stream, error) {
		at := max(uint64(from), d.keeper.FlushLSN(ns))
		return d.keeper.Stream(ctx, ns, conn, keeperSlot, at, 0) // 0: the compute's current timeline
	}
	// The stream lives as long as the compute, not as the start request.
	sctx, cancel := context.WithCancel(context.Background())
	stopOnCtx := context.AfterFunc(ctx, cancel)
	s, err := start(sctx)
	stopOnCtx()
	if err != nil {
		cancel()
		return nil, fmt.Errorf("wake: WAL keeper for branch %s: %w", branch, err)
	}
	ks := &keeperStream{cancel: cancel, done: make(chan struct{})}
	ks.setCurrent(s)
	go func() {
		defer close(ks.done)
		for {
			select {
			case <-s.Done():
			case <-sctx.Done():
				s.Stop()
				return
			}
			// A stopping compute ends the stream a moment before its
			// postmaster is seen to exit.
			select {
			case <-exited:
				return // the compute is gone: nothing more to stream
			case <-sctx.Done():
				return
			case <-time.After(2 * time.Second):
			}
			ks.setCurrent(nil)
			d.log.Warn("WAL keeper stream ended while the compute runs; commits wait until it is back",
				zap.String("branch", branch), zap.Error(s.Err()))
			for {
				select {
				case <-exited:
					return
				case <-sctx.Done():
					return
				case <-time.After(200 * time.Millisecond):
				}
				next, err := start(sctx)
				if err == nil {
					s = next
					ks.setCurrent(s)
					d.log.Info("WAL keeper stream resumed", zap.String("branch", branch))
					break
				}
				d.log.Warn("WAL keeper stream", zap.String("branch", branch), zap.Error(err))
			}
		}
	}()
	return ks, nil
}

// stop ends the supervision (the compute has exited) and waits.
func (ks *keeperStream) stop() {
	if ks == nil {
		return
	}
	ks.cancel()
	<-ks.done
}

// keeperState says whether branch's compute streams to the keeper
// ("streaming", or "disconnected": its commits wait) and the WAL the keeper
// is behind by; "" when no supervision runs (compute stopped, no keeper).
func (d *PostgresDriver) keeperState(branch string) (string, uint64) {
	ks := d.streams.get(branch)
	if ks == nil {
		return "", 0
	}
	select {
	case <-ks.done:
		return "", 0
	default:
	}
	if ok, lag := ks.status(); ok {
		return "streaming", lag
	}
	return "disconnected", 0
}

// KeeperLag reports, for each branch whose compute streams to the keeper,
// how many bytes of WAL the keeper has not made durable yet.
func (d *PostgresDriver) KeeperLag() map[string]uint64 {
	d.streams.mu.Lock()
	names := make([]string, 0, len(d.streams.mu.m))
	for n := range d.streams.mu.m {
		names = append(names, n)
	}
	d.streams.mu.Unlock()
	out := make(map[string]uint64, len(names))
	for _, n := range names {
		if st, lag := d.keeperState(n); st == "streaming" {
			out[n] = lag
		}
	}
	return out
}

// keeperStreams tracks the supervised stream of each running branch.
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
