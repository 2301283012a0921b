package admin

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/neonproxy/neonproxy/router"
)

// statusError is a failure the API answers with status.
type statusError struct {
	status int
	msg    string
}

func (e *statusError) Error() string { return e.msg }

func failWith(status int, format string, a ...any) error {
	return &statusError{status: status, msg: fmt.Sprintf(format, a...)}
}

// writeFailure answers err with its statusError's status, or the status
// errorStatus gives it.
func writeFailure(w http.ResponseWriter, r *http.Request, err error) {
	var se *statusError
	if errors.As(err, &se) {
		writeError(w, r, se.status, se.msg)
		return
	}
	writeError(w, r, errorStatus(err), err.Error())
}

// endReason says what the connected clients of a branch that goes away
// (or is reset) are told: a message and a hint.
type endReason func(branch string) (message, hint string)

func deletedReason(root string) endReason {
	return func(b string) (string, string) {
		if b != root {
			return fmt.Sprintf("terminating connection: branch %q was deleted together with its ancestor %q", b, root),
				"Connect to another branch; `neonproxy branch list` lists them."
		}
		return fmt.Sprintf("terminating connection: branch %q was deleted", b),
			"Connect to another branch; `neonproxy branch list` lists them."
	}
}

func expiredReason(br router.Branch) endReason {
	at := br.ExpiresAt.UTC().Format(time.RFC3339)
	return func(b string) (string, string) {
		hint := fmt.Sprintf("Create a new branch (`neonproxy branch create NAME --parent %s --ttl 24h`), or extend a branch's expiry before it passes (`neonproxy branch set NAME --ttl 24h`).", parentName(br.Parent))
		if b != br.Name {
			return fmt.Sprintf("terminating connection: branch %q was deleted because its ancestor %q expired at %s (expire_cascade)", b, br.Name, at), hint
		}
		return fmt.Sprintf("terminating connection: branch %q expired at %s and was deleted", b, at), hint
	}
}

func parentName(p string) string {
	if p == "" {
		return "main"
	}
	return p
}

// deleteTree deletes name and, with cascade, its descendants (children
// before their parents: a timeline cannot go while another reads from
// it). Each branch's connected clients are told why first.
func (h *Handler) deleteTree(ctx context.Context, name string, cascade bool, why endReason) error {
	if !h.acquireExclusive(name) {
		return failWith(http.StatusConflict, "branch %s is busy: a branch is being created from it, or it is being deleted or reset; retry", name)
	}
	defer h.release(name)
	bs, err := h.reg.List(ctx)
	if err != nil {
		return fmt.Errorf("list branches: %w", err)
	}
	found := false
	children := map[string][]string{}
	for _, b := range bs {
		if b.Name == name {
			found = true
		}
		if b.Parent != "" {
			children[b.Parent] = append(children[b.Parent], b.Name)
		}
	}
	if !found {
		return failWith(http.StatusNotFound, "branch %s does not exist", name)
	}
	if name == h.opts.DefaultBranch {
		return failWith(http.StatusConflict, "branch %s is the default branch (default_branch); it cannot be deleted", name)
	}
	if kids := children[name]; len(kids) > 0 && !cascade {
		sort.Strings(kids)
		return failWith(http.StatusConflict, "branch %s is the parent of %s; delete %s first, or delete with ?cascade=true (neonproxy branch delete --cascade)",
			name, strings.Join(kids, ", "), pronoun(len(kids)))
	}
	var order []string
	var visit func(n string)
	visit = func(n string) {
		kids := append([]string(nil), children[n]...)
		sort.Strings(kids)
		for _, k := range kids {
			if k != name { // a corrupt registry's cycle
				visit(k)
			}
		}
		order = append(order, n)
	}
	visit(name)
	descendants := order[:len(order)-1]
	for i, n := range descendants {
		if !h.acquireExclusive(n) {
			h.release(descendants[:i]...)
			return failWith(http.StatusConflict, "branch %s is busy: a branch is being created from it, or it is being deleted or reset; retry", n)
		}
	}
	defer h.release(descendants...)
	for i, n := range order {
		msg, hint := why(n)
		ended := h.comp.EndSessions(n, msg, hint)
		if err := h.comp.Delete(ctx, n); err != nil {
			return failWith(errorStatus(err), "delete compute of branch %s: %v%s", n, err, deletedSoFar(order[:i]))
		}
		if err := h.reg.Delete(ctx, n); err != nil {
			msg := err.Error()
			if errors.Is(err, router.ErrBranchNotFound) {
				msg = fmt.Sprintf("branch %s does not exist", n)
			}
			return failWith(errorStatus(err), "%s%s", msg, deletedSoFar(order[:i]))
		}
		h.log.Info("branch deleted", zap.String("branch", n), zap.Bool("cascade", n != name), zap.Int("clients_disconnected", ended))
	}
	h.refreshBranchCount(ctx)
	return nil
}

func (h *Handler) deleteBranch(w http.ResponseWriter, r *http.Request) {
	name, ok := pathName(w, r)
	if !ok {
		return
	}
	cascade, ok := boolParam(w, r, "cascade")
	if !ok {
		return
	}
	if err := h.deleteTree(r.Context(), name, cascade, deletedReason(name)); err != nil {
		writeFailure(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// boolParam reads the query parameter key as true or false (absent:
// false), or writes a 400 and returns ok false.
func boolParam(w http.ResponseWriter, r *http.Request, key string) (v, ok bool) {
	switch s := r.URL.Query().Get(key); s {
	case "", "false":
		return false, true
	case "true":
		return true, true
	default:
		writeError(w, r, http.StatusBadRequest, fmt.Sprintf("%s=%q: want true or false", key, s))
		return false, false
	}
}

// defaultResetWait bounds POST /v1/branches/NAME/reset?wait=true when the
// request gives no timeout.
const defaultResetWait = 5 * time.Minute

// resetBranch makes a branch read its parent's latest durable state again
// (a new timeline under the same name, in O(1)). Its clients are told and
// disconnected, or with ?wait=true the reset waits until they have left.
func (h *Handler) resetBranch(w http.ResponseWriter, r *http.Request) {
	name, ok := pathName(w, r)
	if !ok {
		return
	}
	wait, ok := boolParam(w, r, "wait")
	if !ok {
		return
	}
	timeout := defaultResetWait
	if v := r.URL.Query().Get("timeout"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			writeError(w, r, http.StatusBadRequest, fmt.Sprintf("timeout=%q: want a positive duration such as 30s", v))
			return
		}
		timeout = d
	}
	_, b, ok := h.pathBranch(w, r)
	if !ok {
		return
	}
	ctx := r.Context()
	if b.Parent == "" {
		writeError(w, r, http.StatusConflict, fmt.Sprintf("branch %s has no parent to reset to", name))
		return
	}
	if !h.acquire(name, b.Parent) {
		writeError(w, r, http.StatusConflict, fmt.Sprintf("branch %s is busy: it is being created, deleted or reset by another request; retry", name))
		return
	}
	defer h.release(name, b.Parent)
	if wait {
		if err := h.waitNoClients(ctx, name, timeout); err != nil {
			writeFailure(w, r, err)
			return
		}
	}
	// With wait, only clients that arrived since are left to tell.
	msg := fmt.Sprintf("terminating connection: branch %q was reset to the latest state of its parent %q", name, b.Parent)
	ended := h.comp.EndSessions(name, msg, "Reconnect: the branch now holds its parent's data; changes made on it before the reset are gone.")
	t0 := time.Now()
	if err := h.comp.Reset(ctx, b.Parent, name); err != nil {
		if h.m != nil {
			h.m.BranchResets.WithLabelValues("failed").Inc()
		}
		writeError(w, r, errorStatus(err), fmt.Sprintf("reset branch %s to %s: %v", name, b.Parent, err))
		return
	}
	if h.m != nil {
		h.m.BranchResets.WithLabelValues("ok").Inc()
	}
	lsn := ""
	if st, err := h.comp.Storage(ctx, name); err == nil {
		lsn = st.ParentLSN
	}
	if nb, err := h.reg.Update(ctx, name, func(b *router.Branch) error {
		b.ParentLSN, b.ResetAt = lsn, time.Now().UTC()
		return nil
	}); err == nil {
		b = nb
	} else {
		h.log.Warn("record the reset in the registry", zap.String("branch", name), zap.Error(err))
	}
	h.log.Info("branch reset to its parent's latest state", zap.String("branch", name), zap.String("parent", b.Parent),
		zap.String("parent_lsn", lsn), zap.Int("clients_disconnected", ended), zap.Bool("waited", wait), zap.Duration("took", time.Since(t0)))
	writeJSON(w, http.StatusOK, h.branchJSON(ctx, b))
}

// waitNoClients waits until branch has no client connection on this node,
// for at most timeout.
func (h *Handler) waitNoClients(ctx context.Context, branch string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		n := h.comp.Clients(branch)
		if n == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return failWith(http.StatusConflict, "branch %s still has %d client connection(s) after %s; retry, or reset without wait=true to disconnect them", branch, n, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// parseExpiry turns a request's ttl or expires_at into an expiry time
// (zero: neither given).
func parseExpiry(ttl, expiresAt string, now time.Time) (time.Time, error) {
	switch {
	case ttl != "" && expiresAt != "":
		return time.Time{}, errors.New("give ttl or expires_at, not both")
	case ttl != "":
		d, err := ParseTTL(ttl)
		if err != nil {
			return time.Time{}, err
		}
		return now.Add(d).UTC(), nil
	case expiresAt != "":
		t, err := time.Parse(time.RFC3339, expiresAt)
		if err != nil {
			return time.Time{}, fmt.Errorf("expires_at %q: want an RFC 3339 time, e.g. 2024-05-01T12:00:00Z", expiresAt)
		}
		if !t.After(now) {
			return time.Time{}, fmt.Errorf("expires_at %s is not in the future", expiresAt)
		}
		return t.UTC(), nil
	}
	return time.Time{}, nil
}

// ParseTTL reads a time to live: a Go duration ("90m", "24h") or a whole
// number of days ("7d").
func ParseTTL(s string) (time.Duration, error) {
	var d time.Duration
	var err error
	if n, ok := strings.CutSuffix(s, "d"); ok {
		var days int
		days, err = strconv.Atoi(n)
		d = time.Duration(days) * 24 * time.Hour
		if err == nil && days > 100*365 {
			err = errors.New("too long")
		}
	} else {
		d, err = time.ParseDuration(s)
	}
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("ttl %q: want a positive duration such as 90m, 24h or 7d", s)
	}
	return d, nil
}

// firstUserOID is PostgreSQL's FirstNormalObjectId: relations below it are
// initdb's (system catalogs and their TOAST tables and indexes).
const firstUserOID = 16384

// diffBranch reports what a branch and another one (its parent by
// default) changed since the newest state they share: the relations, from
// the page store's metadata, and with ?schema=true the DDL differences.
func (h *Handler) diffBranch(w http.ResponseWriter, r *http.Request) {
	schema, ok := boolParam(w, r, "schema")
	if !ok {
		return
	}
	system, ok := boolParam(w, r, "system")
	if !ok {
		return
	}
	name, b, ok := h.pathBranch(w, r)
	if !ok {
		return
	}
	ctx := r.Context()
	against := r.URL.Query().Get("against")
	if against == "" {
		if b.Parent == "" {
			writeError(w, r, http.StatusBadRequest, fmt.Sprintf("branch %s has no parent: name the branch to compare with, ?against=OTHER", name))
			return
		}
		against = b.Parent
	}
	if err := router.ValidateName(against); err != nil {
		writeError(w, r, http.StatusBadRequest, "against: "+err.Error())
		return
	}
	if against == name {
		writeError(w, r, http.StatusBadRequest, "against: a branch does not differ from itself")
		return
	}
	if _, err := h.reg.Get(ctx, against); err != nil {
		writeError(w, r, errorStatus(err), branchErr(against, err))
		return
	}
	d, err := h.comp.Diff(ctx, name, against)
	if err != nil {
		writeFailure(w, r, err)
		return
	}
	if !system {
		rels := d.Relations[:0]
		for _, rd := range d.Relations {
			if rd.OID == 0 || rd.OID >= firstUserOID {
				rels = append(rels, rd)
			}
		}
		d.Relations = rels
	}
	if schema {
		db := r.URL.Query().Get("database")
		if db == "" {
			db = "postgres"
		}
		if d.Schema, err = h.comp.SchemaDiff(ctx, name, against, db); err != nil {
			writeFailure(w, r, fmt.Errorf("schema diff of database %s: %w", db, err))
			return
		}
		if d.Schema == nil {
			d.Schema = []SchemaChangeJSON{}
		}
	}
	writeJSON(w, http.StatusOK, d)
}
