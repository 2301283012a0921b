package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/pprof"
	"regexp"

	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/neonproxy/neonproxy/internal/metrics"
	"github.com/neonproxy/neonproxy/router"
)

// maxBodyBytes bounds request bodies.
const maxBodyBytes = 1 << 20

// HandlerOptions tunes NewHandlerWithOptions.
type HandlerOptions struct {
	// DefaultBranch (config default_branch) cannot be deleted and is the
	// parent of a new branch when the request names none. Empty: "main".
	DefaultBranch string
	// GC runs a pagestore garbage collection pass (POST /v1/pagestore/gc);
	// nil: the endpoint answers 404.
	GC func(ctx context.Context) (GCResult, error)
}

// Handler serves the admin API. Create it with NewHandler.
type Handler struct {
	reg  router.Registry
	comp Computes
	m    *metrics.Metrics
	log  *zap.Logger
	opts HandlerOptions
	mux  *http.ServeMux

	// mu guards busy: branch names taking part in a create or delete that
	// is in flight (as the new branch, the parent or the deleted branch),
	// with a reference count. A delete refuses a busy branch, and a create
	// refuses a busy name, so a branch cannot be deleted while it is being
	// cloned and a name cannot be created and deleted at once. mu is never
	// held across calls to the registry or the compute manager.
	mu   sync.Mutex
	busy map[string]int
	// waiting (under mu) holds expired branches the reaper keeps while
	// they have children, so it says so once.
	waiting map[string]bool
	kick    chan struct{} // wakes RunReaper
}

// NewHandler returns the admin API handler with the default options
// (default branch "main").
func NewHandler(reg router.Registry, comp Computes, m *metrics.Metrics, log *zap.Logger) *Handler {
	return NewHandlerWithOptions(reg, comp, m, log, HandlerOptions{})
}

// NewHandlerWithOptions returns the admin API handler. It sets
// m.BranchesTotal from the registry once, then keeps it current on create
// and delete.
func NewHandlerWithOptions(reg router.Registry, comp Computes, m *metrics.Metrics, log *zap.Logger, opts HandlerOptions) *Handler {
	if log == nil {
		log = zap.NewNop()
	}
	if opts.DefaultBranch == "" {
		opts.DefaultBranch = "main"
	}
	h := &Handler{reg: reg, comp: comp, m: m, log: log, opts: opts, busy: map[string]int{}, waiting: map[string]bool{},
		kick: make(chan struct{}, 1)}
	h.refreshBranchCount(context.Background())

	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok")
	})
	if m != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	}
	mux.HandleFunc("GET /v1/branches", h.listBranches)
	mux.HandleFunc("POST /v1/branches", h.createBranch)
	mux.HandleFunc("GET /v1/branches/{name}", h.getBranch)
	mux.HandleFunc("DELETE /v1/branches/{name}", h.deleteBranch)
	mux.HandleFunc("PATCH /v1/branches/{name}", h.patchBranch)
	mux.HandleFunc("POST /v1/branches/{name}/suspend", h.suspendBranch)
	mux.HandleFunc("POST /v1/branches/{name}/prewarm", h.prewarmBranch)
	mux.HandleFunc("POST /v1/branches/{name}/reset", h.resetBranch)
	mux.HandleFunc("GET /v1/branches/{name}/diff", h.diffBranch)
	mux.HandleFunc("GET /v1/usage", h.usage)
	if opts.GC != nil {
		mux.HandleFunc("POST /v1/pagestore/gc", h.gc)
	}
	// Go profiling, for measuring the proxy's hot paths under load (the
	// admin API is meant for loopback or a private network).
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	// The same paths without a method: any other method is a JSON 405
	// (ServeMux's own 405 is plain text).
	for path, allow := range map[string]string{
		"/healthz":                    "GET, HEAD",
		"/metrics":                    "GET, HEAD",
		"/v1/branches":                "GET, HEAD, POST",
		"/v1/branches/{name}":         "GET, HEAD, DELETE, PATCH",
		"/v1/branches/{name}/reset":   "POST",
		"/v1/branches/{name}/diff":    "GET, HEAD",
		"/v1/usage":                   "GET, HEAD",
		"/v1/branches/{name}/suspend": "POST",
		"/v1/branches/{name}/prewarm": "POST",
		"/v1/pagestore/gc":            "POST",
	} {
		if path == "/v1/pagestore/gc" && opts.GC == nil {
			continue
		}
		if path == "/metrics" && m == nil {
			continue
		}
		allow := allow
		mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", allow)
			writeError(w, r, http.StatusMethodNotAllowed, fmt.Sprintf("method %s not allowed on %s (allowed: %s)", r.Method, r.URL.Path, allow))
		})
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, r, http.StatusNotFound, fmt.Sprintf("no such endpoint: %s %s (see GET /v1/branches)", r.Method, r.URL.Path))
	})
	h.mux = mux
	return h
}

// ServeHTTP implements http.Handler: it routes and logs the request.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rec := &recorder{ResponseWriter: w, status: http.StatusOK}
	h.mux.ServeHTTP(rec, r)
	fields := []zap.Field{
		zap.String("method", r.Method),
		zap.String("path", r.URL.Path),
		zap.Int("status", rec.status),
		zap.Duration("duration", time.Since(start)),
		zap.String("remote", r.RemoteAddr),
	}
	if rec.errMsg != "" {
		fields = append(fields, zap.String("error", rec.errMsg))
	}
	if rec.status >= 500 {
		h.log.Warn("admin request failed", fields...)
	} else {
		h.log.Debug("admin request", fields...)
	}
}

// recorder remembers the status and error message for the request log.
type recorder struct {
	http.ResponseWriter
	status      int
	errMsg      string
	wroteHeader bool
}

func (r *recorder) WriteHeader(code int) {
	if !r.wroteHeader {
		r.status = code
		r.wroteHeader = true
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	r.wroteHeader = true
	return r.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b, _ = json.Marshal(ErrorJSON{Error: "encode response: " + err.Error()})
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

func writeError(w http.ResponseWriter, _ *http.Request, status int, msg string) {
	if rec, ok := w.(*recorder); ok {
		rec.errMsg = msg
	}
	writeJSON(w, status, ErrorJSON{Error: msg})
}

// errorStatus maps errors from the registry and compute manager.
func errorStatus(err error) int {
	switch {
	case errors.Is(err, router.ErrInvalidName), errors.Is(err, router.ErrInvalidSetting):
		return http.StatusBadRequest
	case errors.Is(err, router.ErrBranchNotFound), errors.Is(err, ErrNoDatabase):
		return http.StatusNotFound
	case errors.Is(err, ErrInvalidTarget):
		return http.StatusBadRequest
	case errors.Is(err, router.ErrBranchExists):
		return http.StatusConflict
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout
	default:
		return http.StatusInternalServerError
	}
}

func (h *Handler) refreshBranchCount(ctx context.Context) {
	if h.m == nil || h.reg == nil {
		return
	}
	bs, err := h.reg.List(ctx)
	if err != nil {
		h.log.Warn("count branches for metrics", zap.Error(err))
		return
	}
	h.m.BranchesTotal.Set(float64(len(bs)))
}

// branchJSON combines the registry entry with the compute's state and
// the branch's usage.
func (h *Handler) branchJSON(ctx context.Context, b router.Branch) BranchJSON {
	return h.branchJSONWith(ctx, b, nil)
}

// branchJSONWith is branchJSON with the usage of every branch read
// already (nil: read it for b).
func (h *Handler) branchJSONWith(ctx context.Context, b router.Branch, usage map[string]UsageJSON) BranchJSON {
	out := h.branchJSONOnly(ctx, b)
	if h.comp == nil {
		return out
	}
	if usage == nil {
		var err error
		if usage, err = h.comp.Usage(ctx, b.Name, time.Time{}, time.Time{}); err != nil {
			h.log.Debug("branch usage", zap.String("branch", b.Name), zap.Error(err))
			return out
		}
	}
	u := usage[b.Name]
	out.Usage = &u
	return out
}

func (h *Handler) branchJSONOnly(ctx context.Context, b router.Branch) BranchJSON {
	out := BranchJSON{
		Name:      b.Name,
		Parent:    b.Parent,
		ParentLSN: b.ParentLSN,
		CreatedAt: b.CreatedAt,
		// [] rather than null: clients can rely on a list.
		AllowedIPs:    append([]string{}, b.AllowedIPs...),
		MaxClientConn: b.MaxClientConn,
		ExpireCascade: b.ExpireCascade,
		Compute:       ComputeJSON{State: "stopped"},
	}
	if !b.ExpiresAt.IsZero() {
		t := b.ExpiresAt
		out.ExpiresAt = &t
	}
	if !b.ResetAt.IsZero() {
		t := b.ResetAt
		out.ResetAt = &t
	}
	if h.comp == nil {
		return out
	}
	st := h.comp.Status(b.Name)
	if st.State != "" {
		out.Compute.State = st.State
	}
	out.Compute.Clients = st.Clients
	out.Compute.Tier = st.Tier
	pw := st.Prewarm
	out.Compute.Prewarm = &pw
	if !st.TierSince.IsZero() {
		out.Compute.TierSeconds = time.Since(st.TierSince).Round(time.Millisecond).Seconds()
	}
	out.Compute.PID = st.PID
	out.Compute.StartedAt = st.StartedAt
	out.Compute.LastUsed = st.LastUsed
	out.Compute.LastError = st.LastError
	sto, err := h.comp.Storage(ctx, b.Name)
	if err != nil {
		h.log.Debug("branch storage", zap.String("branch", b.Name), zap.Error(err))
		return out
	}
	if out.ParentLSN == "" {
		out.ParentLSN = sto.ParentLSN
	}
	out.LogicalSizeBytes, out.UniqueBytes = sto.LogicalBytes, sto.UniqueBytes
	out.Timeline, out.LocalBytes, out.UnstoredChanges = sto.Timeline, sto.LocalBytes, sto.Unstored
	if sto.WALKeeper != "" {
		out.WALKeeper = &WALKeeperJSON{State: sto.WALKeeper, FlushLagBytes: sto.WALKeeperLag, Keepers: sto.WALKeepers}
	}
	return out
}

func (h *Handler) listBranches(w http.ResponseWriter, r *http.Request) {
	bs, err := h.reg.List(r.Context())
	if err != nil {
		writeError(w, r, errorStatus(err), "list branches: "+err.Error())
		return
	}
	usage, err := h.comp.Usage(r.Context(), "", time.Time{}, time.Time{})
	if err != nil {
		h.log.Debug("branch usage", zap.Error(err))
		usage = map[string]UsageJSON{}
	}
	out := make([]BranchJSON, 0, len(bs))
	for _, b := range bs {
		out = append(out, h.branchJSONWith(r.Context(), b, usage))
	}
	writeJSON(w, http.StatusOK, out)
}

// pathName returns the {name} path value, or writes a 400 and returns false.
func pathName(w http.ResponseWriter, r *http.Request) (string, bool) {
	name := r.PathValue("name")
	if err := router.ValidateName(name); err != nil {
		writeError(w, r, http.StatusBadRequest, err.Error())
		return "", false
	}
	return name, true
}

func (h *Handler) getBranch(w http.ResponseWriter, r *http.Request) {
	if _, b, ok := h.pathBranch(w, r); ok {
		writeJSON(w, http.StatusOK, h.branchJSON(r.Context(), b))
	}
}

// pathBranch returns the branch the {name} path value names, or writes a
// 400 or 404 and returns ok false.
func (h *Handler) pathBranch(w http.ResponseWriter, r *http.Request) (string, router.Branch, bool) {
	name, ok := pathName(w, r)
	if !ok {
		return "", router.Branch{}, false
	}
	b, err := h.reg.Get(r.Context(), name)
	if err != nil {
		writeError(w, r, errorStatus(err), branchErr(name, err))
		return "", router.Branch{}, false
	}
	return name, b, true
}

// branchErr phrases a registry lookup error for the client.
func branchErr(name string, err error) string {
	if errors.Is(err, router.ErrBranchNotFound) {
		return fmt.Sprintf("branch %s does not exist", name)
	}
	return err.Error()
}

var lsnRE = regexp.MustCompile(`^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$`)

func (h *Handler) createBranch(w http.ResponseWriter, r *http.Request) {
	var req CreateBranchRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		msg := "request body must be a JSON object {\"name\", \"parent\", \"lsn\" | \"at\"}: " + err.Error()
		if errors.Is(err, io.EOF) {
			msg = "request body is empty: send a JSON object {\"name\", \"parent\", \"lsn\" | \"at\"}"
		}
		writeError(w, r, http.StatusBadRequest, msg)
		return
	}
	if dec.More() {
		writeError(w, r, http.StatusBadRequest, "request body must hold exactly one JSON object")
		return
	}
	if err := router.ValidateName(req.Name); err != nil {
		writeError(w, r, http.StatusBadRequest, "name: "+err.Error())
		return
	}
	if req.Parent == "" {
		req.Parent = h.opts.DefaultBranch
	}
	if err := router.ValidateName(req.Parent); err != nil {
		writeError(w, r, http.StatusBadRequest, "parent: "+err.Error())
		return
	}
	if req.LSN != "" && req.At != "" {
		writeError(w, r, http.StatusBadRequest, "give lsn or at, not both")
		return
	}
	if req.LSN != "" && !lsnRE.MatchString(req.LSN) {
		writeError(w, r, http.StatusBadRequest, fmt.Sprintf("lsn %q: want the form X/X in hexadecimal, e.g. 0/16B3748", req.LSN))
		return
	}
	if req.At != "" {
		if _, err := time.Parse(time.RFC3339, req.At); err != nil {
			writeError(w, r, http.StatusBadRequest, fmt.Sprintf("at %q: want an RFC 3339 time, e.g. 2024-05-01T12:00:00Z", req.At))
			return
		}
	}
	expires, err := parseExpiry(req.TTL, req.ExpiresAt, time.Now())
	if err != nil {
		writeError(w, r, http.StatusBadRequest, err.Error())
		return
	}

	ctx := r.Context()
	if !h.acquire(req.Name, req.Parent) {
		writeError(w, r, http.StatusConflict, fmt.Sprintf("branch %s is being created or deleted by another request; retry", req.Name))
		return
	}
	defer h.release(req.Name, req.Parent)

	if _, err := h.reg.Get(ctx, req.Parent); err != nil {
		if errors.Is(err, router.ErrBranchNotFound) {
			writeError(w, r, http.StatusNotFound, fmt.Sprintf("parent branch %s does not exist", req.Parent))
		} else {
			writeError(w, r, errorStatus(err), err.Error())
		}
		return
	}
	if _, err := h.reg.Get(ctx, req.Name); err == nil {
		writeError(w, r, http.StatusConflict, fmt.Sprintf("branch %s already exists", req.Name))
		return
	} else if !errors.Is(err, router.ErrBranchNotFound) {
		writeError(w, r, errorStatus(err), err.Error())
		return
	}

	if err := h.comp.Clone(ctx, req.Parent, req.Name, req.LSN, req.At); err != nil {
		h.cleanup(req.Name, "clone failed")
		writeError(w, r, cloneStatus(err), fmt.Sprintf("create branch %s from %s: %v", req.Name, req.Parent, err))
		return
	}
	b := router.Branch{Name: req.Name, Parent: req.Parent, CreatedAt: time.Now().UTC(), ExpiresAt: expires, ExpireCascade: req.ExpireCascade}
	if st, err := h.comp.Storage(r.Context(), req.Name); err == nil {
		b.ParentLSN = st.ParentLSN
	}
	if err := h.reg.Create(ctx, b); err != nil {
		// Another node (or a racing request that slipped past the checks)
		// registered the name, or the registry failed: our copy must go.
		h.cleanup(req.Name, "register failed")
		if errors.Is(err, router.ErrBranchExists) {
			writeError(w, r, http.StatusConflict, fmt.Sprintf("branch %s already exists", req.Name))
		} else {
			writeError(w, r, errorStatus(err), err.Error())
		}
		return
	}
	h.log.Info("branch created", zap.String("branch", b.Name), zap.String("parent", b.Parent), zap.Time("expires_at", b.ExpiresAt))
	if !b.ExpiresAt.IsZero() {
		h.kickReaper()
	}
	h.refreshBranchCount(ctx)
	if got, err := h.reg.Get(ctx, b.Name); err == nil {
		b = got
	}
	writeJSON(w, http.StatusCreated, h.branchJSON(r.Context(), b))
}

// cloneStatus maps a Clone error: a missing parent is a 404, everything
// else is the server's problem.
func cloneStatus(err error) int {
	if errors.Is(err, router.ErrBranchNotFound) {
		return http.StatusNotFound
	}
	if errors.Is(err, ErrInvalidTarget) {
		return http.StatusBadRequest
	}
	if s := errorStatus(err); s != http.StatusBadRequest && s != http.StatusConflict {
		return s
	}
	return http.StatusInternalServerError
}

// cleanup removes the compute data of a branch whose creation failed. It
// uses its own context so that a client that went away does not leave a
// half-created copy behind.
func (h *Handler) cleanup(name, why string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := h.comp.Delete(ctx, name); err != nil {
		h.log.Warn("remove data of branch that was not created", zap.String("branch", name), zap.String("reason", why), zap.Error(err))
	}
}

// deletedSoFar says which branches of a cascade were deleted before a
// failure, so the caller knows the state it is left in.
func deletedSoFar(done []string) string {
	if len(done) == 0 {
		return ""
	}
	return " (already deleted: " + strings.Join(done, ", ") + ")"
}

// gc runs a garbage collection pass of the pagestore: versions no
// branch's newest image or child's branch point reads are deleted.
func (h *Handler) gc(w http.ResponseWriter, r *http.Request) {
	res, err := h.opts.GC(r.Context())
	if err != nil {
		writeError(w, r, errorStatus(err), "pagestore gc: "+err.Error())
		return
	}
	h.log.Info("pagestore gc", zap.Int("versions_deleted", res.VersionsDeleted), zap.Int64("bytes_freed", res.BytesFreed),
		zap.Float64("duration_ms", res.DurationMS))
	writeJSON(w, http.StatusOK, res)
}

func pronoun(n int) string {
	if n == 1 {
		return "it"
	}
	return "them"
}

func (h *Handler) suspendBranch(w http.ResponseWriter, r *http.Request) {
	name, b, ok := h.pathBranch(w, r)
	if !ok {
		return
	}
	ctx := r.Context()
	if err := h.comp.Suspend(ctx, name); err != nil {
		writeError(w, r, errorStatus(err), fmt.Sprintf("suspend compute of branch %s: %v", name, err))
		return
	}
	h.log.Info("compute suspended by admin request", zap.String("branch", name))
	writeJSON(w, http.StatusOK, h.branchJSON(r.Context(), b))
}

// patchBranch changes a branch's settings (allow list, connection limit)
// in the registry, where every node's front door reads them.
func (h *Handler) patchBranch(w http.ResponseWriter, r *http.Request) {
	name, ok := pathName(w, r)
	if !ok {
		return
	}
	var req BranchSettings
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, r, http.StatusBadRequest, fmt.Sprintf(`invalid body: %v (want {"allowed_ips": ["10.0.0.0/8", ...], "max_client_conn": N, "ttl": "24h" | "expires_at": RFC3339, "expire_cascade": bool})`, err))
		return
	}
	var ttl, expiresAt string
	if req.TTL != nil {
		ttl = *req.TTL
	}
	if req.ExpiresAt != nil {
		expiresAt = *req.ExpiresAt
	}
	setExpiry := req.TTL != nil || req.ExpiresAt != nil
	expires, err := parseExpiry(ttl, expiresAt, time.Now())
	if err != nil {
		writeError(w, r, http.StatusBadRequest, err.Error())
		return
	}
	if setExpiry && !expires.IsZero() && name == h.opts.DefaultBranch {
		writeError(w, r, http.StatusConflict, fmt.Sprintf("branch %s is the default branch (default_branch); it cannot expire", name))
		return
	}
	b, err := h.reg.Update(r.Context(), name, func(b *router.Branch) error {
		if req.AllowedIPs != nil {
			b.AllowedIPs = *req.AllowedIPs
		}
		if req.MaxClientConn != nil {
			b.MaxClientConn = *req.MaxClientConn
		}
		if setExpiry {
			b.ExpiresAt = expires // zero ("" given): no expiry
		}
		if req.ExpireCascade != nil {
			b.ExpireCascade = *req.ExpireCascade
		}
		return nil
	})
	if err != nil {
		writeError(w, r, errorStatus(err), branchErr(name, err))
		return
	}
	if !b.ExpiresAt.IsZero() {
		h.kickReaper()
	}
	// No secret here: addresses and a number.
	h.log.Info("branch settings changed by admin request", zap.String("branch", name),
		zap.Strings("allowed_ips", b.AllowedIPs), zap.Int("max_client_conn", b.MaxClientConn), zap.Time("expires_at", b.ExpiresAt))
	writeJSON(w, http.StatusOK, h.branchJSON(r.Context(), b))
}

// prewarmBranch switches predictive pre-warm for a branch on this node.
func (h *Handler) prewarmBranch(w http.ResponseWriter, r *http.Request) {
	name, ok := pathName(w, r)
	if !ok {
		return
	}
	var req PrewarmRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&req); err != nil {
		writeError(w, r, http.StatusBadRequest, fmt.Sprintf(`invalid body: %v (want {"enabled": true|false})`, err))
		return
	}
	b, err := h.reg.Get(r.Context(), name)
	if err != nil {
		writeError(w, r, errorStatus(err), branchErr(name, err))
		return
	}
	h.comp.SetPrewarm(name, req.Enabled)
	h.log.Info("pre-warm switched by admin request", zap.String("branch", name), zap.Bool("enabled", req.Enabled))
	writeJSON(w, http.StatusOK, h.branchJSON(r.Context(), b))
}

// acquire marks name (being created) and parent (being cloned) busy. It
// fails when name is already busy.
func (h *Handler) acquire(name, parent string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.busy[name] > 0 {
		return false
	}
	h.busy[name]++
	h.busy[parent]++
	return true
}

// acquireExclusive marks name busy for a delete; it fails when a create or
// delete involving name is in flight.
func (h *Handler) acquireExclusive(name string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.busy[name] > 0 {
		return false
	}
	h.busy[name]++
	return true
}

func (h *Handler) release(names ...string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, n := range names {
		if h.busy[n]--; h.busy[n] <= 0 {
			delete(h.busy, n)
		}
	}
}
