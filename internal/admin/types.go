// Package admin is neonproxy's admin HTTP API (admin_listen): health,
// Prometheus metrics and branch management, plus the Client the CLI uses to
// call it. The wire format is the public contract in ARCHITECTURE.md.
package admin

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// ComputeStatus is what the admin API needs to know about a branch's
// compute. The server wiring adapts wake.Manager's status to it.
type ComputeStatus struct {
	// State is stopped|starting|running|stopping; empty means stopped.
	State     string
	Tier      string // running|idle|suspended|zero
	TierSince time.Time
	Prewarm   PrewarmJSON
	Clients   int
	PID       int
	StartedAt time.Time
	LastUsed  time.Time
	LastError string
}

// Computes is the part of the compute manager (wake.Manager) the admin API
// drives.
type Computes interface {
	Status(branch string) ComputeStatus
	// Clone creates branch as a child of parent (nothing copied) at LSN
	// lsn or RFC 3339 time at of the parent's history (both "": its latest
	// durable state). A point the parent cannot reach fails with
	// ErrInvalidTarget.
	Clone(ctx context.Context, parent, branch, lsn, at string) error
	// Suspend stops branch's compute (no-op when it is stopped).
	Suspend(ctx context.Context, branch string) error
	// Delete stops branch's compute and removes its data.
	Delete(ctx context.Context, branch string) error
	// Storage reports where branch's data is and how big it is.
	Storage(ctx context.Context, branch string) (Storage, error)
	// SetPrewarm switches predictive pre-warm for branch (this node).
	SetPrewarm(branch string, enabled bool)
	// EndSessions disconnects branch's clients on this node, telling each
	// message and hint (57P01), and returns how many there were.
	EndSessions(branch, message, hint string) int
	// Clients is how many client connections branch has on this node.
	Clients(branch string) int
	// Reset stops branch's compute and makes the branch read parent's
	// latest durable state again (O(1): a new timeline, same name).
	Reset(ctx context.Context, parent, branch string) error
	// Diff lists the relations whose pages changed in branch or in
	// against since their common ancestor, from the page store's metadata
	// (no compute starts).
	Diff(ctx context.Context, branch, against string) (DiffJSON, error)
	// Usage is each branch's usage (only branch's, unless "") over the
	// hours overlapping [from, to) (zero: unbounded); deleted branches'
	// compute usage included, storage for live branches.
	Usage(ctx context.Context, branch string, from, to time.Time) (map[string]UsageJSON, error)
	// SchemaDiff lists the DDL differences of database between against
	// and branch (what branch changed); it wakes both computes.
	SchemaDiff(ctx context.Context, branch, against, database string) ([]SchemaChangeJSON, error)
}

// UsageJSON is what a branch used: compute time by tier and wakes (over
// a window, hourly granularity), and its storage now.
type UsageJSON struct {
	// ComputeSeconds = RunningSeconds + IdleSeconds: time with a
	// PostgreSQL process up (running: starting, serving, stopping; idle:
	// frozen). Suspended and zero computes use no compute time.
	ComputeSeconds float64 `json:"compute_seconds"`
	RunningSeconds float64 `json:"running_seconds"`
	IdleSeconds    float64 `json:"idle_seconds"`
	// Wakes = ColdWakes + WarmWakes + HotWakes.
	Wakes     int64 `json:"wakes"`
	ColdWakes int64 `json:"cold_wakes"`
	WarmWakes int64 `json:"warm_wakes"`
	HotWakes  int64 `json:"hot_wakes"`
	// UniqueBytes (what only the branch holds in the page store) and
	// LogicalSizeBytes (what it reads), now; 0 for a deleted branch.
	UniqueBytes      int64 `json:"unique_bytes"`
	LogicalSizeBytes int64 `json:"logical_size_bytes"`
}

// Add adds o's figures to u.
func (u *UsageJSON) Add(o UsageJSON) {
	u.ComputeSeconds += o.ComputeSeconds
	u.RunningSeconds += o.RunningSeconds
	u.IdleSeconds += o.IdleSeconds
	u.Wakes += o.Wakes
	u.ColdWakes += o.ColdWakes
	u.WarmWakes += o.WarmWakes
	u.HotWakes += o.HotWakes
	u.UniqueBytes += o.UniqueBytes
	u.LogicalSizeBytes += o.LogicalSizeBytes
}

// UsageReportJSON is GET /v1/usage: every branch's usage over a window,
// and the sum.
type UsageReportJSON struct {
	// From and To are the window asked for; compute usage is kept per
	// hour, so the hours that overlap it are summed.
	From     time.Time         `json:"from"`
	To       time.Time         `json:"to"`
	Branches []BranchUsageJSON `json:"branches"`
	Total    UsageJSON         `json:"total"`
}

// BranchUsageJSON is one branch's line of a usage report.
type BranchUsageJSON struct {
	Branch  string `json:"branch"`
	Deleted bool   `json:"deleted"` // no longer in the registry
	UsageJSON
}

// DiffJSON is GET /v1/branches/NAME/diff: what the branch and the branch
// it is compared with (its parent by default) changed since the newest
// state they share.
type DiffJSON struct {
	Branch  string `json:"branch"`
	Against string `json:"against"`
	// Ancestor is the branch (its timeline) where the two histories meet,
	// at AncestorLSN.
	Ancestor    string `json:"ancestor"`
	AncestorLSN string `json:"ancestor_lsn"`
	// BranchLSN and AgainstLSN are the stored images compared. Changes a
	// running compute made since its last stop are not in them: see
	// UnstoredChanges.
	BranchLSN  string `json:"branch_lsn"`
	AgainstLSN string `json:"against_lsn"`
	// UnstoredChanges names the sides whose compute holds changes the
	// store has not got yet (suspend it for an exact diff).
	UnstoredChanges []string `json:"unstored_changes"`
	// Relations is each relation (main fork) changed on either side.
	Relations []RelationDiffJSON `json:"relations"`
	// Schema is set with ?schema=true.
	Schema []SchemaChangeJSON `json:"schema,omitempty"`
}

// RelationDiffJSON is one changed relation.
type RelationDiffJSON struct {
	Database string `json:"database"`
	Name     string `json:"name"` // schema-qualified; "" when no catalog names it
	Kind     string `json:"kind"` // table, index, toast, sequence, ...
	// Of is the table an index or TOAST table belongs to.
	Of          string `json:"of,omitempty"`
	OID         uint32 `json:"oid,omitempty"`
	Relfilenode uint32 `json:"relfilenode"`
	// PagesBranch and PagesAgainst count the 8 KiB pages each side changed.
	PagesBranch  int `json:"pages_branch"`
	PagesAgainst int `json:"pages_against"`
	// Created and Dropped say on which side ("branch", "against", "both")
	// the relation was created or dropped since the common ancestor.
	Created string `json:"created,omitempty"`
	Dropped string `json:"dropped,omitempty"`
}

// SchemaChangeJSON is one DDL difference.
type SchemaChangeJSON struct {
	Kind   string `json:"kind"`   // table, column, index, constraint, function, ...
	Action string `json:"action"` // added, removed, changed (in the branch)
	Object string `json:"object"`
	Detail string `json:"detail,omitempty"`
	Text   string `json:"text"` // one readable line
}

// PrewarmJSON is a branch's predictive pre-warm: whether it is on, the
// regular interval its clients arrive at (0: none found) and the
// predicted next arrival.
type PrewarmJSON struct {
	Enabled       bool      `json:"enabled"`
	PeriodSeconds float64   `json:"period_seconds"`
	NextArrival   time.Time `json:"next_arrival,omitzero"`
}

// PrewarmRequest is the body of POST /v1/branches/NAME/prewarm.
type PrewarmRequest struct {
	Enabled bool `json:"enabled"`
}

// BranchSettings is the body of PATCH /v1/branches/NAME: the settings to
// change; a key left out keeps its value. "allowed_ips": [] allows every
// address again.
type BranchSettings struct {
	AllowedIPs    *[]string `json:"allowed_ips,omitempty"`
	MaxClientConn *int      `json:"max_client_conn,omitempty"`
	// TTL (from now) or ExpiresAt (RFC 3339) set a new expiry; "" in
	// either clears it.
	TTL           *string `json:"ttl,omitempty"`
	ExpiresAt     *string `json:"expires_at,omitempty"`
	ExpireCascade *bool   `json:"expire_cascade,omitempty"`
}

// Storage is a branch's data as the compute manager reports it.
type Storage struct {
	Timeline     uint64
	ParentLSN    string
	LogicalBytes int64
	UniqueBytes  int64
	LocalBytes   int64
	Unstored     bool
	WALKeeper    string
	WALKeeperLag int64
	WALKeepers   []KeeperJSON
}

// ErrInvalidTarget marks a branch point outside the parent's reachable
// history (answered with 400 and the valid range).
var ErrInvalidTarget = errors.New("invalid branch point")

// ErrNoDatabase: the database named in a request does not exist on the
// branch (404).
var ErrNoDatabase = errors.New("no such database")

// BranchJSON is a branch as the admin API shows it.
type BranchJSON struct {
	Name string `json:"name"`
	// Parent is empty for a root branch. It is always present in the JSON
	// (as "") so that clients can rely on the key.
	Parent string `json:"parent"`
	// ParentLSN is the LSN of the parent's stored image the branch was
	// created at; empty for a root branch.
	ParentLSN string    `json:"parent_lsn"`
	CreatedAt time.Time `json:"created_at"`
	// AllowedIPs are the only client addresses (CIDRs) the front door lets
	// reach the branch; empty: any.
	AllowedIPs []string `json:"allowed_ips"`
	// MaxClientConn caps the branch's client connections per node; 0:
	// pool.max_branch_client_conn.
	MaxClientConn int `json:"max_client_conn"`
	// ExpiresAt is when the reaper deletes the branch (null: never).
	ExpiresAt     *time.Time `json:"expires_at"`
	ExpireCascade bool       `json:"expire_cascade"`
	// Usage is the branch's compute usage over the usage ledger's
	// retention (100 days) and its storage now.
	Usage *UsageJSON `json:"usage,omitempty"`
	// ResetAt is when the branch was last reset to its parent (null: never).
	ResetAt *time.Time  `json:"reset_at,omitempty"`
	Compute ComputeJSON `json:"compute"`
	// LogicalSizeBytes is what the branch reads: its relation files and
	// other data files as of its newest stored image.
	LogicalSizeBytes int64 `json:"logical_size_bytes"`
	// UniqueBytes is what only this branch holds in the pagestore (the
	// pages and files it changed): what deleting it frees.
	UniqueBytes int64 `json:"unique_bytes"`
	// Timeline is the branch's pagestore timeline id.
	Timeline uint64 `json:"timeline"`
	// LocalBytes is the disk of the branch's local data directory, a
	// cache of the store (0: none; the next start materializes it).
	LocalBytes int64 `json:"local_bytes"`
	// UnstoredChanges is set while the local directory holds changes the
	// store lacks: the compute runs, or crashed and has not been stopped
	// cleanly since.
	UnstoredChanges bool `json:"unstored_changes"`
	// WALKeeper is set while the compute runs: "streaming", or
	// "disconnected" while the WAL keeper does not have its WAL (commits
	// then wait rather than run without durability).
	WALKeeper *WALKeeperJSON `json:"wal_keeper,omitempty"`
}

// WALKeeperJSON is the WAL keeper part of BranchJSON.
type WALKeeperJSON struct {
	State string `json:"state"`
	// FlushLagBytes is WAL the compute wrote that a quorum of keepers
	// has not yet made durable (what commits wait for).
	FlushLagBytes int64 `json:"flush_lag_bytes"`
	// Keepers is each keeper's stream (wk1, wk2, … as in
	// synchronous_standby_names).
	Keepers []KeeperJSON `json:"keepers,omitempty"`
}

// KeeperJSON is one WAL keeper's stream from a running compute.
type KeeperJSON struct {
	Name          string `json:"name"`
	State         string `json:"state"` // streaming | disconnected
	FlushLagBytes int64  `json:"flush_lag_bytes"`
}

// ComputeJSON is the compute part of BranchJSON.
type ComputeJSON struct {
	State string `json:"state"`
	// Tier is running, idle (frozen), suspended (stopped, local data
	// directory kept) or zero (local directory dropped); TierSeconds is
	// how long it has been there (0: not known to this process).
	Tier        string       `json:"tier"`
	TierSeconds float64      `json:"tier_seconds"`
	Clients     int          `json:"clients"`
	Prewarm     *PrewarmJSON `json:"prewarm,omitempty"`
	PID         int          `json:"pid,omitempty"`
	StartedAt   time.Time    `json:"started_at,omitzero"`
	LastUsed    time.Time    `json:"last_used,omitzero"`
	LastError   string       `json:"last_error,omitempty"`
}

// CreateBranchRequest is the body of POST /v1/branches.
type CreateBranchRequest struct {
	Name string `json:"name"`
	// Parent defaults to the default branch ("main").
	Parent string `json:"parent,omitempty"`
	// LSN (e.g. 0/16B3748) or At (RFC 3339) select a point in the parent's
	// history; at most one may be given. Not supported before the pagestore.
	LSN string `json:"lsn,omitempty"`
	At  string `json:"at,omitempty"`
	// TTL ("24h", "90m", "7d") or ExpiresAt (RFC 3339) make the branch
	// expire: the reaper deletes it then. At most one may be given.
	TTL       string `json:"ttl,omitempty"`
	ExpiresAt string `json:"expires_at,omitempty"`
	// ExpireCascade lets the reaper delete the branch's descendants with
	// it when it expires; otherwise it waits for them to be gone.
	ExpireCascade bool `json:"expire_cascade,omitempty"`
}

// GCResult is the body of POST /v1/pagestore/gc.
type GCResult struct {
	VersionsDeleted int     `json:"versions_deleted"`
	BytesFreed      int64   `json:"bytes_freed"`
	DurationMS      float64 `json:"duration_ms"`
	StoreBytes      uint64  `json:"store_bytes"` // disk the store uses after the pass
}

// ErrorJSON is the body of every error response.
type ErrorJSON struct {
	Error string `json:"error"`
}

// APIError is an error response from the admin API.
type APIError struct {
	Status  int    // HTTP status code
	Message string // the server's "error" message
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%s (HTTP %d %s)", e.Message, e.Status, http.StatusText(e.Status))
}
