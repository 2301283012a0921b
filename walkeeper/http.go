package walkeeper

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/neonproxy/neonproxy/internal/httpapi"
)

// The HTTP API of a standalone keeper (`neonproxy walkeeper`). Every
// namespace path is /v1/wal/{ns}; errors are JSON {"error": "..."} with
// 404 for ErrNoWAL, 409 for ErrFenced, 400 for bad input.
//
//	GET    /v1/wal/{ns}                 Info (JSON)
//	GET    /v1/wal/{ns}/pages?from=&to= WAL pages (application/octet-stream;
//	                                    X-Wal-Start, X-Wal-Flush headers)
//	PUT    /v1/wal/{ns}/pages           Import (same body and headers)
//	POST   /v1/wal/{ns}/follow          Follow: FollowRequest (JSON) in; the
//	                                    response stays open while the stream
//	                                    runs, one JSON status line per
//	                                    followStatusInterval; closing the
//	                                    request stops the stream
//	PUT    /v1/wal/{ns}/covered?lsn=    SetCovered
//	POST   /v1/wal/{ns}/trim?before=    Trim
//	DELETE /v1/wal/{ns}                 Drop
//	GET    /healthz                     200 while the keeper serves
//
// LSNs are decimal uint64 in query strings and JSON.

// followStatusInterval is how often a follow response reports progress.
// It also bounds how long a keeper takes to notice that the compute node
// that asked for the stream went away.
const followStatusInterval = 250 * time.Millisecond

const (
	hdrStart = "X-Wal-Start"
	hdrFlush = "X-Wal-Flush"
)

// followStatus is one line of a follow response.
type followStatus struct {
	Flush LSN    `json:"flush"`
	Lag   uint64 `json:"lag"`
	Done  bool   `json:"done,omitempty"`
	Error string `json:"error,omitempty"`
}

// Handler serves k's HTTP API. With a token, every request but /healthz
// must carry "Authorization: Bearer <token>" (401 otherwise).
func Handler(k *Keeper, log *zap.Logger, token string) http.Handler {
	if log == nil {
		log = zap.NewNop()
	}
	h := &handler{k: k, log: log}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", httpapi.Healthz)
	mux.HandleFunc("GET /v1/wal/{ns}", h.info)
	mux.HandleFunc("GET /v1/wal/{ns}/pages", h.export)
	mux.HandleFunc("PUT /v1/wal/{ns}/pages", h.imp)
	mux.HandleFunc("POST /v1/wal/{ns}/follow", h.follow)
	mux.HandleFunc("PUT /v1/wal/{ns}/covered", h.lsnOp("lsn", k.SetCovered))
	mux.HandleFunc("POST /v1/wal/{ns}/trim", h.lsnOp("before", k.Trim))
	mux.HandleFunc("DELETE /v1/wal/{ns}", h.drop)
	return httpapi.RequireToken(mux, token, "walkeeper.token")
}

type handler struct {
	k   *Keeper
	log *zap.Logger
}

var statusOf = map[error]int{ErrNoWAL: http.StatusNotFound, ErrFenced: http.StatusConflict}

func (h *handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	code := httpapi.StatusOf(err, statusOf)
	if code == http.StatusInternalServerError {
		h.log.Warn("walkeeper: request failed", zap.String("method", r.Method), zap.String("path", r.URL.Path), zap.Error(err))
	}
	httpapi.WriteError(w, code, err)
}

func pathNS(r *http.Request) (uint64, error) {
	ns, err := strconv.ParseUint(r.PathValue("ns"), 10, 64)
	if err != nil {
		return 0, httpapi.Bad(fmt.Errorf("namespace %q: not an unsigned integer", r.PathValue("ns")))
	}
	return ns, nil
}

func queryLSN(r *http.Request, name string) (LSN, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return 0, nil
	}
	lsn, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, httpapi.Bad(fmt.Errorf("%s=%q: not an LSN", name, v))
	}
	return lsn, nil
}

func (h *handler) info(w http.ResponseWriter, r *http.Request) {
	ns, err := pathNS(r)
	if err == nil {
		var in Info
		if in, err = h.k.Info(r.Context(), ns); err == nil {
			httpapi.WriteJSON(w, in)
			return
		}
	}
	h.fail(w, r, err)
}

func (h *handler) export(w http.ResponseWriter, r *http.Request) {
	ns, err := pathNS(r)
	var from, to LSN
	if err == nil {
		from, err = queryLSN(r, "from")
	}
	if err == nil {
		to, err = queryLSN(r, "to")
	}
	var wal *WAL
	if err == nil {
		wal, err = h.k.Export(r.Context(), ns, from, to)
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	defer wal.Body.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set(hdrStart, strconv.FormatUint(wal.Start, 10))
	w.Header().Set(hdrFlush, strconv.FormatUint(wal.Flush, 10))
	w.Header().Set("Content-Length", strconv.FormatInt(wal.Len(), 10))
	if _, err := io.Copy(w, wal.Body); err != nil {
		// The length promised is not met: the client sees a short body.
		h.log.Warn("walkeeper: export", zap.Uint64("ns", ns), zap.Error(err))
	}
}

func (h *handler) imp(w http.ResponseWriter, r *http.Request) {
	ns, err := pathNS(r)
	wal := &WAL{Body: r.Body}
	if err == nil {
		wal.Start, err = strconv.ParseUint(r.Header.Get(hdrStart), 10, 64)
	}
	if err == nil {
		wal.Flush, err = strconv.ParseUint(r.Header.Get(hdrFlush), 10, 64)
	}
	if err != nil {
		h.fail(w, r, httpapi.Bad(fmt.Errorf("import: %w", err)))
		return
	}
	if wal.Start != pageOf(wal.Start) || wal.Flush < wal.Start {
		h.fail(w, r, httpapi.Bad(fmt.Errorf("import: bad range %s to %s", fmtLSN(wal.Start), fmtLSN(wal.Flush))))
		return
	}
	if r.ContentLength >= 0 && r.ContentLength != wal.Len() {
		h.fail(w, r, httpapi.Bad(fmt.Errorf("import: body has %d bytes, the range needs %d", r.ContentLength, wal.Len())))
		return
	}
	if err := h.k.Import(r.Context(), ns, wal); err != nil {
		h.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h *handler) lsnOp(param string, op func(ctx context.Context, ns uint64, lsn LSN) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ns, err := pathNS(r)
		var lsn LSN
		if err == nil {
			lsn, err = queryLSN(r, param)
		}
		if err == nil {
			err = op(r.Context(), ns, lsn)
		}
		if err != nil {
			h.fail(w, r, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}
}

func (h *handler) drop(w http.ResponseWriter, r *http.Request) {
	ns, err := pathNS(r)
	if err == nil {
		err = h.k.Drop(r.Context(), ns)
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// follow runs a stream for as long as the request lasts.
func (h *handler) follow(w http.ResponseWriter, r *http.Request) {
	ns, err := pathNS(r)
	var req FollowRequest
	if err == nil {
		if err = json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&req); err != nil {
			err = httpapi.Bad(fmt.Errorf("follow request: %w", err))
		} else if req.NS != ns {
			err = httpapi.Bad(fmt.Errorf("follow request for namespace %d on the path of %d", req.NS, ns))
		}
	}
	var f Follower
	if err == nil {
		// The stream lives as long as this request: when the compute node
		// that asked goes away, the stream stops with it.
		f, err = h.k.Follow(r.Context(), req)
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	defer f.Stop()
	flusher, _ := w.(http.Flusher)
	enc := json.NewEncoder(w)
	w.Header().Set("Content-Type", "application/x-ndjson")
	tick := time.NewTicker(followStatusInterval)
	defer tick.Stop()
	for {
		st := followStatus{Flush: f.FlushLSN(), Lag: f.LagBytes()}
		select {
		case <-f.Done():
			st.Done = true
			if err := f.Err(); err != nil {
				st.Error = err.Error()
			}
		default:
		}
		if err := enc.Encode(st); err != nil {
			return // the caller went away
		}
		if flusher != nil {
			flusher.Flush()
		}
		if st.Done {
			return
		}
		select {
		case <-tick.C:
		case <-f.Done():
		case <-r.Context().Done():
			return
		}
	}
}
