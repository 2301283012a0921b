package pagestore

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/neonproxy/neonproxy/internal/httpapi"
)

// The HTTP API of a standalone pagestore (`neonproxy pagestore`), served
// over HTTP/1.1 and h2c. Errors are JSON {"error": "..."}: 404
// ErrNotFound, 409 ErrHasChildren, 423 ErrIngestActive, 422
// ErrInvalidLSN, 412 ErrNoCommonAncestor, 400 bad input. Timeline ids and
// LSNs are decimal.
//
//	GET    /v1/timelines                       Timelines (JSON)
//	POST   /v1/timelines                       CreateTimelineWith: createRequest in, Timeline out (201)
//	GET    /v1/timelines/{id}                  Timeline
//	DELETE /v1/timelines/{id}                  DropTimeline
//	GET    /v1/timelines/{id}/oldest_retained  {"lsn": n}
//	GET    /v1/timelines/{id}/diff?against=    Diff(id, against): DiffResult (JSON)
//	POST   /v1/timelines/{id}/materialize?at=  frames out (see wire.go): the data directory
//	POST   /v1/timelines/{id}/ingest           frames in (see wire.go), IngestStats out
//	POST   /v1/gc                              GCStats
//	GET    /v1/usage                           {"disk_bytes": n}
//	GET    /healthz                            200 while the store serves
//
// The bulk calls stream: a materialization's pages are written while the
// store reads them, an ingest's applied while the compute node scans.

type createRequest struct {
	Name   string     `json:"name"`
	Parent TimelineID `json:"parent,omitempty"`
	At     LSN        `json:"at,omitempty"`
	AtTime time.Time  `json:"at_time,omitzero"`
}

// ingestHeader opens an ingest stream.
type ingestHeader struct {
	LSN        LSN    `json:"lsn"`
	TimeLineID uint32 `json:"timeline_id"`
	WALSegSize int    `json:"wal_seg_size"`
	Base       LSN    `json:"base,omitempty"` // the LSN the sender's manifest describes
}

var statusOf = map[error]int{
	ErrNotFound:     http.StatusNotFound,
	ErrHasChildren:  http.StatusConflict,
	ErrIngestActive: http.StatusLocked,
	ErrInvalidLSN:   http.StatusUnprocessableEntity,
	// Each sentinel needs a status of its own (the client maps back);
	// 412: the two timelines fail the precondition of sharing history.
	ErrNoCommonAncestor: http.StatusPreconditionFailed,
}

// sentinels is statusOf the other way round, for the client.
var sentinels = func() map[int]error {
	m := make(map[int]error, len(statusOf))
	for e, code := range statusOf {
		m[code] = e
	}
	return m
}()

// Handler serves s's HTTP API; with a token every request but /healthz
// must carry "Authorization: Bearer <token>".
func Handler(s *Store, log *zap.Logger, token string) http.Handler {
	if log == nil {
		log = zap.NewNop()
	}
	h := &handler{s: s, log: log}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", httpapi.Healthz)
	mux.HandleFunc("GET /v1/timelines", func(w http.ResponseWriter, r *http.Request) {
		tls, err := s.Timelines(r.Context())
		h.reply(w, r, tls, err)
	})
	mux.HandleFunc("POST /v1/timelines", h.create)
	mux.HandleFunc("GET /v1/timelines/{id}", h.withID(func(w http.ResponseWriter, r *http.Request, id TimelineID) {
		t, err := s.Timeline(r.Context(), id)
		h.reply(w, r, t, err)
	}))
	mux.HandleFunc("DELETE /v1/timelines/{id}", h.withID(func(w http.ResponseWriter, r *http.Request, id TimelineID) {
		h.reply(w, r, struct{}{}, s.DropTimeline(r.Context(), id))
	}))
	mux.HandleFunc("GET /v1/timelines/{id}/oldest_retained", h.withID(func(w http.ResponseWriter, r *http.Request, id TimelineID) {
		lsn, err := s.OldestRetained(r.Context(), id)
		h.reply(w, r, map[string]LSN{"lsn": lsn}, err)
	}))
	mux.HandleFunc("GET /v1/timelines/{id}/diff", h.withID(func(w http.ResponseWriter, r *http.Request, id TimelineID) {
		v := r.URL.Query().Get("against")
		against, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			h.fail(w, r, httpapi.Bad(fmt.Errorf("against=%q: not a timeline id", v)))
			return
		}
		res, err := s.Diff(r.Context(), id, TimelineID(against))
		h.reply(w, r, res, err)
	}))
	mux.HandleFunc("POST /v1/timelines/{id}/materialize", h.withID(h.materialize))
	mux.HandleFunc("POST /v1/timelines/{id}/ingest", h.withID(h.ingest))
	mux.HandleFunc("POST /v1/gc", func(w http.ResponseWriter, r *http.Request) {
		st, err := s.GC(r.Context())
		h.reply(w, r, st, err)
	})
	mux.HandleFunc("GET /v1/usage", func(w http.ResponseWriter, r *http.Request) {
		n, err := s.DiskUsage(r.Context())
		h.reply(w, r, map[string]uint64{"disk_bytes": n}, err)
	})
	return httpapi.RequireToken(mux, token, "pagestore.token")
}

type handler struct {
	s   *Store
	log *zap.Logger
}

func (h *handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	code := httpapi.StatusOf(err, statusOf)
	if code == http.StatusInternalServerError {
		h.log.Warn("pagestore: request failed", zap.String("method", r.Method), zap.String("path", r.URL.Path), zap.Error(err))
	}
	httpapi.WriteError(w, code, err)
}

func (h *handler) reply(w http.ResponseWriter, r *http.Request, v any, err error) {
	if err != nil {
		h.fail(w, r, err)
		return
	}
	httpapi.WriteJSON(w, v)
}

func (h *handler) withID(fn func(http.ResponseWriter, *http.Request, TimelineID)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
		if err != nil {
			h.fail(w, r, httpapi.Bad(fmt.Errorf("timeline %q: not an unsigned integer", r.PathValue("id"))))
			return
		}
		fn(w, r, TimelineID(id))
	}
}

func (h *handler) create(w http.ResponseWriter, r *http.Request) {
	var req createRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&req); err != nil {
		h.fail(w, r, httpapi.Bad(fmt.Errorf("create timeline: %w", err)))
		return
	}
	t, err := h.s.CreateTimelineWith(r.Context(), req.Name, req.Parent, CreateOptions{At: req.At, AtTime: req.AtTime})
	if err != nil {
		h.fail(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	_ = json.NewEncoder(w).Encode(t)
}

func (h *handler) materialize(w http.ResponseWriter, r *http.Request, id TimelineID) {
	var at uint64
	if v := r.URL.Query().Get("at"); v != "" {
		var err error
		if at, err = strconv.ParseUint(v, 10, 64); err != nil {
			h.fail(w, r, httpapi.Bad(fmt.Errorf("at=%q: not an LSN", v)))
			return
		}
	}
	// Errors before the first frame get a status; later ones an 'x' frame.
	if _, err := h.s.Timeline(r.Context(), id); err != nil {
		h.fail(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	fw := newFrameWriter(w)
	lsn, err := h.s.produce(r.Context(), id, LSN(at), &frameMatSink{fw: fw})
	if err != nil {
		h.log.Warn("pagestore: materialize failed", zap.Uint64("timeline", uint64(id)), zap.Error(err))
		msg := binary.BigEndian.AppendUint32(nil, uint32(httpapi.StatusOf(err, statusOf)))
		_ = fw.frame('x', msg, []byte(err.Error()))
	} else {
		_ = fw.frame('e', binary.BigEndian.AppendUint64(nil, uint64(lsn)), nil)
	}
	_ = fw.flush()
}

// frameMatSink sends a materialization as frames.
type frameMatSink struct {
	fw    *frameWriter
	forks atomic.Uint32
}

var _ matSink = (*frameMatSink)(nil)

func (f *frameMatSink) dir(p string) error { return f.fw.frame('d', appendStr(nil, p), nil) }

func (f *frameMatSink) file(p string, v []byte) error { return f.fw.frame('f', appendStr(nil, p), v) }

func (f *frameMatSink) fork(rel RelTag, size uint32) (forkSink, error) {
	n := f.forks.Add(1)
	head := binary.BigEndian.AppendUint32(nil, n)
	head = binary.BigEndian.AppendUint32(putRel(head, rel), size)
	return &frameForkSink{fw: f.fw, n: n}, f.fw.frame('k', head, nil)
}

type frameForkSink struct {
	fw   *frameWriter
	n    uint32
	head [8]byte
}

func (f *frameForkSink) write(blk uint32, pages []byte) error {
	binary.BigEndian.PutUint32(f.head[:], f.n)
	binary.BigEndian.PutUint32(f.head[4:], blk)
	return f.fw.frame('P', f.head[:], pages)
}

func (f *frameForkSink) close() error {
	binary.BigEndian.PutUint32(f.head[:], f.n)
	return f.fw.frame('c', f.head[:4], nil)
}

// decodeMaterialize feeds a materialization stream to sink and returns
// the LSN of the image. sentinel maps an 'x' frame's status to an error.
func decodeMaterialize(fr *frameReader, sink matSink, sentinel func(code int, msg string) error) (lsn LSN, err error) {
	forks := make(map[uint32]forkSink)
	defer func() {
		for _, f := range forks {
			if cerr := f.close(); err == nil {
				err = cerr
			}
		}
	}()
	for {
		typ, b, err := fr.next()
		if err != nil {
			return 0, err
		}
		p := payload{b: b}
		switch typ {
		case 'd':
			path := p.path()
			if err := p.done(typ); err != nil {
				return 0, err
			}
			err = sink.dir(path)
		case 'f':
			path, v := p.path(), p.rest()
			if err := p.done(typ); err != nil {
				return 0, err
			}
			err = sink.file(path, v)
		case 'k':
			n, rel, size := p.u32(), p.rel(), p.u32()
			if err := p.done(typ); err != nil {
				return 0, err
			}
			if _, dup := forks[n]; dup {
				return 0, fmt.Errorf("fork %d opened twice", n)
			}
			var f forkSink
			if f, err = sink.fork(rel, size); err == nil {
				forks[n] = f
			}
		case 'P':
			n, blk, pages := p.u32(), p.u32(), p.rest()
			if err := p.done(typ); err != nil {
				return 0, err
			}
			f, ok := forks[n]
			if !ok {
				return 0, fmt.Errorf("pages of fork %d, which is not open", n)
			}
			err = f.write(blk, pages)
		case 'c':
			n := p.u32()
			if err := p.done(typ); err != nil {
				return 0, err
			}
			f, ok := forks[n]
			if !ok {
				return 0, fmt.Errorf("fork %d closed but not open", n)
			}
			delete(forks, n)
			err = f.close()
		case 'e':
			lsn := LSN(p.u64())
			if err := p.done(typ); err != nil {
				return 0, err
			}
			if len(forks) > 0 {
				return 0, fmt.Errorf("stream ended with %d forks open", len(forks))
			}
			return lsn, nil
		case 'x':
			code, msg := p.u32(), string(p.rest())
			return 0, sentinel(int(code), msg)
		default:
			return 0, fmt.Errorf("unknown frame type %q", typ)
		}
		if err != nil {
			return 0, err
		}
	}
}

func (h *handler) ingest(w http.ResponseWriter, r *http.Request, id TimelineID) {
	fr := newFrameReader(r.Body)
	typ, b, err := fr.next()
	var hdr ingestHeader
	if err == nil && typ != 'h' {
		err = fmt.Errorf("first frame %q: want the header 'h'", typ)
	}
	if err == nil {
		err = json.Unmarshal(b, &hdr)
	}
	if err != nil {
		h.fail(w, r, httpapi.Bad(fmt.Errorf("ingest timeline %d: %w", id, err)))
		return
	}
	cp := Checkpoint{LSN: hdr.LSN, TimeLineID: hdr.TimeLineID, WALSegSize: hdr.WALSegSize}
	tx, err := h.s.beginIngest(r.Context(), id, cp, hdr.Base)
	if err != nil {
		h.fail(w, r, fmt.Errorf("ingest timeline %d at %s: %w", id, cp.LSN, err))
		return
	}
	if err := decodeIngest(fr, tx); err != nil {
		tx.abort()
		h.fail(w, r, httpapi.Bad(fmt.Errorf("ingest timeline %d at %s: %w", id, cp.LSN, err)))
		return
	}
	st, err := tx.commit(r.Context())
	if err != nil {
		h.fail(w, r, fmt.Errorf("ingest timeline %d at %s: %w", id, cp.LSN, err))
		return
	}
	h.log.Info("ingested", zap.Uint64("timeline", uint64(id)), zap.Stringer("lsn", cp.LSN),
		zap.Int("pages_written", st.PagesWritten), zap.Int("files_written", st.FilesWritten),
		zap.Int64("bytes_written", st.BytesWritten), zap.Bool("manifest", hdr.Base != 0), zap.Duration("duration", st.Duration))
	httpapi.WriteJSON(w, st)
}

// decodeIngest feeds an ingest stream (after its header) to sink, up to
// and including the end frame.
func decodeIngest(fr *frameReader, sink ingestSink) (err error) {
	wk := sink.worker()
	defer func() {
		if derr := wk.done(); err == nil {
			err = derr
		}
	}()
	for {
		typ, b, err := fr.next()
		if err != nil {
			return err
		}
		p := payload{b: b}
		switch typ {
		case 'd':
			path := p.path()
			if err := p.done(typ); err != nil {
				return err
			}
			err = sink.dir(path)
		case 'f':
			path, content := p.path(), p.rest()
			if err := p.done(typ); err != nil {
				return err
			}
			err = sink.file(path, content)
		case 'u':
			path, size := p.path(), p.u64()
			if err := p.done(typ); err != nil {
				return err
			}
			err = sink.unchanged(path, int64(size))
		case 'w':
			path, v := p.path(), p.rest()
			if err := p.done(typ); err != nil {
				return err
			}
			err = sink.wal(path, v)
		case 's':
			rel, size, unchanged := p.rel(), p.u32(), p.byte1()
			if err := p.done(typ); err != nil {
				return err
			}
			err = wk.forkSize(rel, size, unchanged != 0)
		case 'p':
			rel, blk, pages := p.rel(), p.u32(), p.rest()
			if err := p.done(typ); err != nil {
				return err
			}
			err = wk.pages(rel, blk, pages)
		case 'e':
			return p.done(typ)
		default:
			return fmt.Errorf("unknown frame type %q", typ)
		}
		if err != nil {
			return err
		}
	}
}

// errAborted ends an ingest stream the client gave up on.
var errAborted = errors.New("pagestore: ingest aborted by the client")
