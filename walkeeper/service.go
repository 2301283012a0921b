package walkeeper

import (
	"context"
	"errors"
	"io"
)

// Service is what a compute node needs from one WAL keeper, embedded in the
// process (*Keeper) or standalone behind HTTP (*Client). wake/ combines
// several into a quorum.
type Service interface {
	// Info reports what the keeper holds for ns.
	Info(ctx context.Context, ns uint64) (Info, error)
	// Follow makes the keeper stream a compute's WAL into ns as a
	// synchronous standby. It returns once the compute's walsender streams
	// to the keeper; the stream then runs until Stop, until the compute
	// ends it, or until the keeper or the connection to it goes away.
	Follow(ctx context.Context, req FollowRequest) (Follower, error)
	// Export reads ns's WAL from the page holding `from` to `to` (0: to
	// the flush LSN) as contiguous WAL pages. ErrNoWAL when the keeper
	// does not hold WAL at `from`.
	Export(ctx context.Context, ns uint64, from, to LSN) (*WAL, error)
	// Import replaces ns's WAL with w's (a branch's starting WAL copied
	// from its parent's namespace, possibly on another keeper).
	Import(ctx context.Context, ns uint64, w *WAL) error
	// SetCovered records that a stored image holds ns's WAL up to lsn.
	SetCovered(ctx context.Context, ns uint64, lsn LSN) error
	// Trim deletes ns's WAL before `before` (page granularity).
	Trim(ctx context.Context, ns uint64, before LSN) error
	// Drop deletes everything the keeper holds for ns.
	Drop(ctx context.Context, ns uint64) error
}

var (
	_ Service = (*Keeper)(nil)
	_ Service = (*Client)(nil)
)

// Info is what one keeper holds for a namespace.
type Info struct {
	Start   LSN `json:"start"`   // first stored page (0: no WAL)
	Flush   LSN `json:"flush"`   // end of the contiguous WAL stored
	Covered LSN `json:"covered"` // a stored image holds the WAL up to here
	// Gen is the newest compute generation that streamed into ns (see
	// FollowRequest.Gen) and GenStart where its history began.
	Gen      uint64 `json:"gen"`
	GenStart LSN    `json:"gen_start"`
	// DataGen is the generation of the newest WAL it holds: Gen once
	// Flush has reached GenStart; before, the generation it had when it
	// adopted Gen (it lags: the WAL up to GenStart may be elsewhere only).
	DataGen uint64 `json:"data_gen"`
	// Streaming is whether a stream into ns runs on this keeper now.
	Streaming bool `json:"streaming"`
}

// FollowRequest asks a keeper to stream a compute's WAL.
type FollowRequest struct {
	NS uint64 `json:"ns"`
	// ConnString reaches the compute (libpq URL or key=value, without
	// replication=...).
	ConnString string `json:"conn"`
	// Slot is the physical replication slot to stream from (created if
	// missing): the compute keeps the WAL this keeper has not confirmed.
	Slot string `json:"slot"`
	// AppName is the application_name to stream as: the name the
	// compute's synchronous_standby_names lists (default: the keeper's).
	AppName string `json:"app_name,omitempty"`
	// From is the oldest position the caller needs: the stream starts at
	// the newer of From and the keeper's flush LSN (so a keeper that was
	// away catches up from where it stopped).
	From LSN `json:"from"`
	// Timeline is the PostgreSQL timeline to stream (0: the server's).
	Timeline uint32 `json:"timeline,omitempty"`
	// Gen fences computes: each start of a branch's compute uses a
	// generation above every earlier one, with GenStart the WAL position
	// its own history begins at (its first checkpoint). A keeper holding an
	// older generation first cuts its WAL back to GenStart (what it has
	// beyond was never acknowledged and is not in the new history); a
	// request older than what the keeper has seen is refused with
	// ErrFenced, so a stale compute can never write into the keeper
	// again. 0: no fencing.
	Gen      uint64 `json:"gen,omitempty"`
	GenStart LSN    `json:"gen_start,omitempty"`
}

// Follower is a running stream (see Service.Follow).
type Follower interface {
	// Done is closed when the stream has ended.
	Done() <-chan struct{}
	// Err tells why it ended (nil for a normal end or while it runs).
	Err() error
	// LagBytes is the WAL the compute reported that the keeper has not
	// made durable yet.
	LagBytes() uint64
	// FlushLSN is the newest position the keeper has made durable.
	FlushLSN() LSN
	// Stop ends the stream and waits for it.
	Stop()
}

// WAL is a contiguous run of WAL pages: Body holds the pages from Start (a
// page boundary) up to the page holding Flush, PageSize bytes each, the last
// one zero beyond Flush.
type WAL struct {
	Start LSN
	Flush LSN
	Body  io.ReadCloser
}

// Len is the number of bytes Body holds.
func (w *WAL) Len() int64 {
	if w.Flush <= w.Start {
		return 0
	}
	return int64(pageOf(w.Flush-1)+PageSize) - int64(w.Start)
}

var (
	// ErrNoWAL: the keeper does not hold the WAL asked for. A recovery
	// reading it must treat it as "not found" (the end of the WAL).
	ErrNoWAL = errors.New("walkeeper: no such WAL")
	// ErrFenced: a newer compute generation has streamed into the
	// namespace; the request comes from a stale one.
	ErrFenced = errors.New("walkeeper: fenced by a newer compute generation")
)
