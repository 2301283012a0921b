package walkeeper

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"
)

// maxBatchBytes bounds the WAL merged into one pebble batch (one fsync).
const maxBatchBytes = 1 << 20

// statusInterval is how often a stream reports its position with nothing
// to answer, as PostgreSQL's walreceiver does (wal_receiver_status_interval).
// A walsender counts wal_sender_timeout from the last reply it read: when
// the idle tier freezes the whole compute, the walsender sends no
// keepalives, and it is these reports, waiting in the socket, that it reads
// first when thawed instead of timing out. Half the computes' 10 s timeout.
const statusInterval = 5 * time.Second

// slotActiveRetry is how long Stream retries START_REPLICATION while the
// slot is still held by the walsender of a previous, just ended stream.
const slotActiveRetry = 10 * time.Second

var slotNameRE = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// Stream is one compute's replication stream into the keeper.
type Stream struct {
	k      *Keeper
	ns     uint64
	log    *zap.Logger
	cancel context.CancelFunc
	done   chan struct{}
	flush  atomic.Uint64
	// serverEnd is the newest end of WAL the server reported (XLogData and
	// keepalives): what it has written, whether or not we have it yet.
	serverEnd atomic.Uint64

	// Set up before the loop starts; owned by the loop.
	conn     *pgconn.PgConn
	start    LSN // page-aligned start of the stream
	oldFlush LSN // the flush LSN of ns when the stream started
	first    bool
	m        merger

	mu struct {
		sync.Mutex
		err error
	}
}

// Stream connects to a compute with connString (a libpq URL or key=value
// string without replication=...; replication=true and
// application_name=Name() are added), creates the physical replication slot
// `slot` if it does not exist, runs IDENTIFY_SYSTEM and START_REPLICATION SLOT
// slot PHYSICAL <from rounded down to its page> TIMELINE tli (tli 0: the
// server's current timeline). WAL goes into namespace ns. It returns once the
// walsender streams to the keeper (START_REPLICATION answered with
// CopyBothResponse); the receive loop runs in the background until ctx
// ends, Stop is called, or the connection ends: then Done() closes and Err()
// tells why (nil for a normal end: ctx, Stop, or the compute ending the
// stream).
//
// Only one stream per namespace runs at a time. While the walsender of a
// just ended stream still holds the slot, START_REPLICATION is retried for a
// few seconds.
func (k *Keeper) Stream(ctx context.Context, ns uint64, connString, slot string, from LSN, tli uint32) (*Stream, error) {
	return k.stream(ctx, FollowRequest{NS: ns, ConnString: connString, Slot: slot, From: from, Timeline: tli}, false)
}

// Follow is Stream for a Service caller: the stream starts at the newer of
// req.From and the stored flush LSN, after req's generation is applied
// (see FollowRequest), and ctx bounds only the start: the stream runs
// until Stop or its end.
func (k *Keeper) Follow(ctx context.Context, req FollowRequest) (Follower, error) {
	s, err := k.stream(ctx, req, true)
	if err != nil {
		return nil, err
	}
	return s, nil
}

func (k *Keeper) stream(ctx context.Context, req FollowRequest, catchUp bool) (*Stream, error) {
	ns, slot := req.NS, req.Slot
	if !slotNameRE.MatchString(slot) {
		return nil, fmt.Errorf("walkeeper: invalid replication slot name %q", slot)
	}
	cfg, err := pgconn.ParseConfig(req.ConnString)
	if err != nil {
		return nil, fmt.Errorf("walkeeper: parse connection string: %w", err)
	}
	if cfg.Password == "" {
		cfg.Password = k.opts.Password
	}
	cfg.RuntimeParams["replication"] = "true"
	cfg.RuntimeParams["application_name"] = k.Name()
	if req.AppName != "" {
		cfg.RuntimeParams["application_name"] = req.AppName
	}

	parent := ctx
	if catchUp {
		parent = context.Background()
	}
	sctx, cancel := context.WithCancel(parent)
	if catchUp {
		stopOnCtx := context.AfterFunc(ctx, cancel)
		defer stopOnCtx()
	}
	s := &Stream{
		k:      k,
		ns:     ns,
		log:    k.log.With(zap.Uint64("ns", ns), zap.String("slot", slot)),
		cancel: cancel,
		done:   make(chan struct{}),
		first:  true,
	}
	s.m.load = func(lsn LSN) ([]byte, error) { return k.readPage(ns, lsn) }

	k.mu.Lock()
	if k.mu.closed {
		k.mu.Unlock()
		cancel()
		return nil, errors.New("walkeeper: keeper is closed")
	}
	if other := k.mu.streams[ns]; other != nil {
		k.mu.Unlock()
		cancel()
		return nil, fmt.Errorf("walkeeper: namespace %d already has an active stream", ns)
	}
	k.mu.streams[ns] = s
	k.mu.Unlock()

	from := req.From
	err = k.fence(ns, req.Gen, req.GenStart)
	if err == nil && catchUp {
		var flush LSN
		if flush, err = k.flushLSN(ns); err == nil {
			from = max(from, flush)
		}
	}
	s.start = pageOf(from)
	if err == nil {
		err = s.connect(sctx, cfg, slot, req.Timeline)
	}
	if err != nil {
		if ctx.Err() == nil && sctx.Err() != nil {
			err = errors.New("walkeeper: stream stopped while connecting")
		}
		s.finish(err)
		return nil, err
	}
	go s.run(sctx)
	return s, nil
}

// connect runs the replication handshake, retrying while the slot is held
// by another (ending) walsender.
func (s *Stream) connect(ctx context.Context, cfg *pgconn.Config, slot string, tli uint32) error {
	deadline := time.Now().Add(slotActiveRetry)
	for {
		err := s.handshake(ctx, cfg, slot, tli)
		var pgErr *pgconn.PgError
		if err == nil || !errors.As(err, &pgErr) || pgErr.Code != "55006" || time.Now().After(deadline) {
			return err
		}
		s.log.Debug("walkeeper: replication slot still active, retrying", zap.Error(err))
		select {
		case <-ctx.Done():
			return fmt.Errorf("walkeeper: start replication: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (s *Stream) handshake(ctx context.Context, cfg *pgconn.Config, slot string, tli uint32) (err error) {
	oldFlush, err := s.k.flushLSN(s.ns)
	if err != nil {
		return err
	}
	s.oldFlush = oldFlush

	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("walkeeper: connect to compute: %w", err)
	}
	defer func() {
		if err != nil {
			cctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			_ = conn.Close(cctx)
		}
	}()

	_, err = conn.Exec(ctx, "CREATE_REPLICATION_SLOT "+slot+" PHYSICAL").ReadAll()
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42710" { // duplicate_object: the slot exists
		err = nil
	}
	if err != nil {
		return fmt.Errorf("walkeeper: create replication slot %s: %w", slot, err)
	}

	sys, err := pglogrepl.IdentifySystem(ctx, conn)
	if err != nil {
		return fmt.Errorf("walkeeper: identify system: %w", err)
	}
	if tli == 0 {
		tli = uint32(sys.Timeline)
	}
	// A compute recovered from our WAL ends recovery at the last complete
	// record, which can be before the end of what we stored (a record cut
	// off by the crash): start from what it has, the rest is rewritten.
	if flushPage := pageOf(LSN(sys.XLogPos)); s.start > flushPage {
		s.log.Info("walkeeper: starting at the server's flush position, before the stored end",
			zap.String("stored_from", fmtLSN(s.start)), zap.Stringer("server_flush", sys.XLogPos))
		s.start = flushPage
	}
	s.log.Info("walkeeper: starting replication", zap.String("system_id", sys.SystemID),
		zap.Int32("server_timeline", sys.Timeline), zap.Stringer("server_flush", sys.XLogPos),
		zap.String("from", fmtLSN(s.start)), zap.Uint32("timeline", tli))

	err = pglogrepl.StartReplication(ctx, conn, slot, pglogrepl.LSN(s.start),
		pglogrepl.StartReplicationOptions{Mode: pglogrepl.PhysicalReplication, Timeline: int32(tli)})
	if err != nil {
		return fmt.Errorf("walkeeper: START_REPLICATION SLOT %s PHYSICAL %s TIMELINE %d: %w", slot, fmtLSN(s.start), tli, err)
	}
	s.conn = conn
	return nil
}

// Done is closed when the stream has ended.
func (s *Stream) Done() <-chan struct{} { return s.done }

// Err tells why the stream ended (nil for a normal end or while it runs).
func (s *Stream) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.err
}

// Stop ends the stream and waits for its loop.
func (s *Stream) Stop() {
	s.cancel()
	<-s.done
}

// FlushLSN is the newest LSN durably stored by this stream (0 before its
// first write).
func (s *Stream) FlushLSN() LSN { return s.flush.Load() }

// finish records the outcome, unregisters the stream and closes Done.
func (s *Stream) finish(err error) {
	s.cancel()
	s.mu.Lock()
	s.mu.err = err
	s.mu.Unlock()
	s.k.mu.Lock()
	if s.k.mu.streams[s.ns] == s {
		delete(s.k.mu.streams, s.ns)
	}
	s.k.mu.Unlock()
	close(s.done)
}

// run is the receive loop: a reader goroutine hands over copies of the
// CopyData messages; the loop merges all that is already there (up to
// maxBatchBytes) into pages, commits them with the new flush LSN in one
// synced batch and then acknowledges.
func (s *Stream) run(ctx context.Context) {
	msgs := make(chan []byte, 256)
	var (
		readErr error // valid once msgs is closed
		readEnd bool  // the server ended the stream
	)
	readerDone := make(chan struct{})
	// The reader's own context, ended only once the loop has returned: a
	// read interrupted by its context closes the connection (pgconn sends
	// Terminate), which must not race with the loop's status updates.
	rctx, rcancel := context.WithCancel(context.Background())
	defer rcancel()
	go func() {
		defer close(readerDone)
		defer close(msgs)
		for {
			msg, err := s.conn.ReceiveMessage(rctx)
			if err != nil {
				readErr = err
				return
			}
			switch m := msg.(type) {
			case *pgproto3.CopyData:
				buf := append([]byte(nil), m.Data...)
				select {
				case msgs <- buf:
				case <-rctx.Done():
					return
				}
			case *pgproto3.CopyDone, *pgproto3.CommandComplete:
				readEnd = true
				return
			case *pgproto3.ErrorResponse:
				readErr = pgconn.ErrorResponseToPgError(m)
				return
			}
		}
	}()

	err := s.loop(ctx, msgs)
	stopped := ctx.Err() != nil // ctx ended or Stop was called
	if errors.Is(err, errAck) && !stopped {
		// A clean shutdown's walsender ends the stream once it has our
		// acknowledgment of everything, and may be gone as the next one
		// is written: let the reader see whether the compute ended the
		// stream before calling it a failure.
		t := time.NewTimer(time.Second)
		select {
		case <-readerDone:
		case <-t.C:
		}
		t.Stop()
	}
	s.cancel()
	rcancel()
	<-readerDone
	cctx, cancel := context.WithTimeout(context.Background(), time.Second)
	_ = s.conn.Close(cctx)
	cancel()

	switch {
	case errors.Is(err, errAck) && readEnd:
		// The compute ended the stream as we acknowledged: everything
		// received was stored before the acknowledgment, so this is a
		// normal end.
		err = nil
	case err != nil:
	case stopped || readEnd:
		// Stopped, or the compute ended the stream: a normal end.
	case readErr != nil:
		err = fmt.Errorf("walkeeper: replication connection: %w", readErr)
	}
	if err != nil {
		s.log.Warn("walkeeper: stream ended", zap.Error(err), zap.String("flush", fmtLSN(s.FlushLSN())))
	} else {
		s.log.Info("walkeeper: stream ended", zap.String("flush", fmtLSN(s.FlushLSN())))
	}
	s.finish(err)
}

// loop returns nil when msgs is closed or ctx ends, or the error that ended it.
func (s *Stream) loop(ctx context.Context, msgs <-chan []byte) error {
	status := time.NewTicker(statusInterval)
	defer status.Stop()
	for {
		var msg []byte
		var ok bool
		select {
		case msg, ok = <-msgs:
			if !ok {
				return nil
			}
		case <-ctx.Done():
			return nil
		case <-status.C:
			if err := s.ackUnlessEnded(ctx); err != nil {
				return err
			}
			continue
		}
		var (
			size       int
			dirty      bool
			replyAsked bool
			closed     bool
		)
		for {
			n, wrote, reply, err := s.handle(msg)
			if err != nil {
				return err
			}
			size += n
			dirty = dirty || wrote
			replyAsked = replyAsked || reply
			if size >= maxBatchBytes {
				break
			}
			// Take what has already arrived, without waiting.
			select {
			case msg, ok = <-msgs:
				if ok {
					continue
				}
				closed = true
			default:
			}
			break
		}
		if dirty {
			if err := s.commit(); err != nil {
				return err
			}
		}
		if dirty || replyAsked {
			if err := s.ackUnlessEnded(ctx); err != nil {
				return err
			}
		}
		if closed {
			return nil
		}
	}
}

// handle processes one CopyData payload: XLogData is merged, a keepalive
// may ask for a reply.
func (s *Stream) handle(msg []byte) (n int, wrote, reply bool, err error) {
	if len(msg) == 0 {
		return 0, false, false, nil
	}
	switch msg[0] {
	case pglogrepl.XLogDataByteID:
		xld, err := pglogrepl.ParseXLogData(msg[1:])
		if err != nil {
			return 0, false, false, fmt.Errorf("walkeeper: parse XLogData: %w", err)
		}
		if err := s.m.write(LSN(xld.WALStart), xld.WALData); err != nil {
			return 0, false, false, err
		}
		s.noteServerEnd(max(uint64(xld.ServerWALEnd), uint64(xld.WALStart)+uint64(len(xld.WALData))))
		return len(xld.WALData), len(xld.WALData) > 0, false, nil
	case pglogrepl.PrimaryKeepaliveMessageByteID:
		ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(msg[1:])
		if err != nil {
			return 0, false, false, fmt.Errorf("walkeeper: parse keepalive: %w", err)
		}
		s.noteServerEnd(uint64(ka.ServerWALEnd))
		return 0, false, ka.ReplyRequested, nil
	}
	return 0, false, false, nil
}

func (s *Stream) noteServerEnd(end uint64) {
	for {
		old := s.serverEnd.Load()
		if end <= old || s.serverEnd.CompareAndSwap(old, end) {
			return
		}
	}
}

// LagBytes is how much WAL the server reported that this stream has not
// made durable yet: commits behind it are waiting.
func (s *Stream) LagBytes() uint64 {
	end, flush := s.serverEnd.Load(), s.flush.Load()
	if end <= flush {
		return 0
	}
	return end - flush
}

// commit writes the touched pages and the new flush LSN in one batch.
func (s *Stream) commit() error {
	end := s.m.end
	pages := s.m.take()
	db := s.k.db
	b := db.NewBatch()
	defer b.Close()
	if s.first {
		s.first = false
		if s.oldFlush > 0 && s.start > s.oldFlush {
			// The stream starts after a gap: the older WAL is not
			// contiguous with it.
			s.log.Warn("walkeeper: stream starts after the stored WAL; dropping the older WAL",
				zap.String("stored_flush", fmtLSN(s.oldFlush)), zap.String("start", fmtLSN(s.start)))
			if err := b.DeleteRange(pageKey(s.ns, 0), pageKey(s.ns, s.start), nil); err != nil {
				return fmt.Errorf("walkeeper: commit: %w", err)
			}
		}
		// Pages beyond the new end left over from a longer, older
		// history.
		if err := b.DeleteRange(pageKey(s.ns, pageOf(end)+PageSize), pageKeyEnd(s.ns), nil); err != nil {
			return fmt.Errorf("walkeeper: commit: %w", err)
		}
	}
	for _, p := range pages {
		if err := b.Set(pageKey(s.ns, p.lsn), p.data, nil); err != nil {
			return fmt.Errorf("walkeeper: commit: %w", err)
		}
	}
	var v [8]byte
	binary.BigEndian.PutUint64(v[:], end)
	if err := b.Set(flushKey(s.ns), v[:], nil); err != nil {
		return fmt.Errorf("walkeeper: commit: %w", err)
	}
	if err := b.Commit(s.k.wo); err != nil {
		return fmt.Errorf("walkeeper: commit WAL up to %s: %w", fmtLSN(end), err)
	}
	s.flush.Store(end)
	return nil
}

// ack reports the durably stored position to the walsender.
func (s *Stream) ack(ctx context.Context) error {
	pos := pglogrepl.LSN(s.flush.Load())
	err := pglogrepl.SendStandbyStatusUpdate(ctx, s.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: pos,
		WALFlushPosition: pos,
		WALApplyPosition: pos,
		ClientTime:       time.Now(),
	})
	if err != nil {
		return fmt.Errorf("%w: %w", errAck, err)
	}
	return nil
}

// ackUnlessEnded is ack, except that a failure because ctx ended (the
// stream is being stopped) is no error.
func (s *Stream) ackUnlessEnded(ctx context.Context) error {
	if err := s.ack(ctx); err != nil && ctx.Err() == nil {
		return err
	}
	return nil
}

// errAck marks a failed status update: the WAL it acknowledges was
// already stored, so it loses nothing.
var errAck = errors.New("walkeeper: send standby status update")
