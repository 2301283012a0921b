package admin

import (
	"context"
	"errors"
	"net/http"
	"sort"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"go.uber.org/zap"

	"github.com/neonproxy/neonproxy/router"
)

// ReapResult is what one pass of the reaper did.
type ReapResult struct {
	Deleted []string // expired branches deleted (with descendants, by cascade)
	Waiting []string // expired, but with children and no expire_cascade
	Failed  []string
	// Next is the earliest expiry still ahead (zero: none).
	Next time.Time
}

// Reap deletes the branches whose expiry has passed at now: children
// before their parents, so that a tree that expires together goes in one
// pass. An expired branch with children that have not expired waits for
// them, unless it was created with expire_cascade. Connected clients are
// told the branch expired (57P01) before its compute stops.
func (h *Handler) Reap(ctx context.Context, now time.Time) ReapResult {
	var res ReapResult
	bs, err := h.reg.List(ctx)
	if err != nil {
		h.log.Warn("reaper: list branches", zap.Error(err))
		return res
	}
	parent := map[string]string{}
	for _, b := range bs {
		parent[b.Name] = b.Parent
	}
	depth := func(n string) int {
		d := 0
		for p := parent[n]; p != "" && d < len(bs); p = parent[p] {
			d++
		}
		return d
	}
	var expired []router.Branch
	for _, b := range bs {
		if b.Expired(now) && b.Name != h.opts.DefaultBranch {
			expired = append(expired, b)
		} else if !b.ExpiresAt.IsZero() && b.Name != h.opts.DefaultBranch && (res.Next.IsZero() || b.ExpiresAt.Before(res.Next)) {
			res.Next = b.ExpiresAt
		}
	}
	sort.Slice(expired, func(i, j int) bool {
		if di, dj := depth(expired[i].Name), depth(expired[j].Name); di != dj {
			return di > dj
		}
		return expired[i].Name < expired[j].Name
	})
	// One depth level at a time (children before their parents), the
	// branches of a level in parallel: a delete waits for a compute's stop
	// and removes a local data directory, and an agent workload expires
	// several branches a second.
	gone := map[string]bool{}
	for len(expired) > 0 {
		d := depth(expired[0].Name)
		n := 1
		for n < len(expired) && depth(expired[n].Name) == d {
			n++
		}
		level := expired[:n]
		expired = expired[n:]
		var mu sync.Mutex
		cascaded := false
		var g errgroup.Group
		g.SetLimit(reapParallel)
		for _, b := range level {
			if gone[b.Name] {
				continue // went with an expired ancestor's cascade
			}
			g.Go(func() error {
				outcome := h.reapOne(ctx, b.Name)
				mu.Lock()
				defer mu.Unlock()
				switch outcome {
				case reapDeleted:
					res.Deleted = append(res.Deleted, b.Name)
					cascaded = cascaded || b.ExpireCascade
				case reapWaiting:
					res.Waiting = append(res.Waiting, b.Name)
				case reapFailed:
					res.Failed = append(res.Failed, b.Name)
				}
				return nil
			})
		}
		_ = g.Wait()
		if cascaded {
			// Descendants deleted by a cascade are not deleted again.
			now := h.names(ctx)
			for _, b := range expired {
				gone[b.Name] = !now[b.Name]
			}
		}
	}
	return res
}

// reapParallel bounds the deletes one reaper pass runs at once.
const reapParallel = 4

type reapOutcome int

const (
	reapSkipped reapOutcome = iota // not expired any more, or busy: the next pass looks again
	reapDeleted
	reapWaiting
	reapFailed
)

// reapOne deletes the expired branch name (with its descendants when it
// has expire_cascade).
func (h *Handler) reapOne(ctx context.Context, name string) reapOutcome {
	// Read again: the expiry may have been extended meanwhile.
	cur, err := h.reg.Get(ctx, name)
	if err != nil || !cur.Expired(time.Now()) {
		return reapSkipped
	}
	err = h.deleteTree(ctx, cur.Name, cur.ExpireCascade, expiredReason(cur))
	var se *statusError
	switch {
	case err == nil:
		h.countExpired("deleted")
		h.log.Info("expired branch deleted", zap.String("branch", cur.Name), zap.Time("expires_at", cur.ExpiresAt),
			zap.Bool("cascade", cur.ExpireCascade))
		h.forgetWaiting(cur.Name)
		return reapDeleted
	case errors.As(err, &se) && se.status == http.StatusConflict && !cur.ExpireCascade && h.hasChildren(ctx, cur.Name):
		if h.noteWaiting(cur.Name) {
			h.countExpired("waiting")
			h.log.Warn("expired branch kept while it has children (create it with expire_cascade to delete them with it)",
				zap.String("branch", cur.Name), zap.Time("expires_at", cur.ExpiresAt), zap.Error(err))
		}
		return reapWaiting
	case errors.As(err, &se) && se.status == http.StatusConflict:
		return reapSkipped // busy with another request
	default:
		h.countExpired("failed")
		h.log.Error("delete expired branch", zap.String("branch", cur.Name), zap.Error(err))
		return reapFailed
	}
}

func (h *Handler) countExpired(result string) {
	if h.m != nil {
		h.m.BranchesExpired.WithLabelValues(result).Inc()
	}
}

// names is the set of branch names now (nil on error).
func (h *Handler) names(ctx context.Context) map[string]bool {
	bs, err := h.reg.List(ctx)
	if err != nil {
		return nil
	}
	out := make(map[string]bool, len(bs))
	for _, b := range bs {
		out[b.Name] = true
	}
	return out
}

func (h *Handler) hasChildren(ctx context.Context, name string) bool {
	bs, err := h.reg.List(ctx)
	if err != nil {
		return false
	}
	for _, b := range bs {
		if b.Parent == name {
			return true
		}
	}
	return false
}

// noteWaiting records that name waits for its children; it reports true
// the first time, so the log and metric say it once per branch.
func (h *Handler) noteWaiting(name string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.waiting[name] {
		return false
	}
	h.waiting[name] = true
	return true
}

func (h *Handler) forgetWaiting(name string) {
	h.mu.Lock()
	delete(h.waiting, name)
	h.mu.Unlock()
}

// kickReaper makes a running reaper look again now (a branch got an
// expiry on this node).
func (h *Handler) kickReaper() {
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

// RunReaper deletes expired branches until ctx ends: at each expiry as it
// comes, and at least every interval (expiries set through another node
// of a cluster).
func (h *Handler) RunReaper(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = 10 * time.Second
	}
	for {
		res := h.Reap(ctx, time.Now())
		wait := interval
		if !res.Next.IsZero() {
			// A little after the expiry, so that it has passed.
			wait = min(wait, time.Until(res.Next)+10*time.Millisecond)
		}
		t := time.NewTimer(max(wait, 10*time.Millisecond))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-h.kick:
			t.Stop()
		case <-t.C:
		}
	}
}
