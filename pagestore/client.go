package pagestore

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"runtime"
	"strconv"
	"sync"

	"go.uber.org/zap"

	"github.com/neonproxy/neonproxy/internal/httpapi"
)

// Client is a standalone pagestore (`neonproxy pagestore`) as a compute
// node uses it: metadata calls are JSON, Materialize and Ingest stream
// frames (see Handler) and do their file work here, as the Store does in
// one process.
type Client struct {
	api     *httpapi.Client
	log     *zap.Logger
	workers int
	noSync  bool
}

var _ Service = (*Client)(nil)

// ClientOptions tune a Client.
type ClientOptions struct {
	Token       string      // pagestore.token
	Logger      *zap.Logger // nil: zap.NewNop()
	Parallelism int         // ingest scan workers; default max(2, GOMAXPROCS)
	NoSync      bool        // tests only: manifests are not fsynced
}

// NewClient returns a client of the pagestore at addr ("host:port" or an
// http:// URL).
func NewClient(addr string, o ClientOptions) (*Client, error) {
	api, err := httpapi.NewClient("pagestore", addr, sentinels)
	if err != nil {
		return nil, err
	}
	api.Token = o.Token
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Parallelism <= 0 {
		o.Parallelism = max(2, runtime.GOMAXPROCS(0))
	}
	return &Client{api: api, log: o.Logger, workers: o.Parallelism, noSync: o.NoSync}, nil
}

// String is the store's base URL.
func (c *Client) String() string { return c.api.Base }

func tlPath(id TimelineID, suffix string) string {
	return "/v1/timelines/" + strconv.FormatUint(uint64(id), 10) + suffix
}

// CreateTimelineWith implements Service.
func (c *Client) CreateTimelineWith(ctx context.Context, name string, parent TimelineID, o CreateOptions) (Timeline, error) {
	var t Timeline
	err := c.api.Call(ctx, http.MethodPost, "/v1/timelines", nil, createRequest{Name: name, Parent: parent, At: o.At, AtTime: o.AtTime}, &t)
	return t, err
}

// Timeline implements Service.
func (c *Client) Timeline(ctx context.Context, id TimelineID) (Timeline, error) {
	var t Timeline
	err := c.api.Call(ctx, http.MethodGet, tlPath(id, ""), nil, nil, &t)
	return t, err
}

// Timelines implements Service.
func (c *Client) Timelines(ctx context.Context) ([]Timeline, error) {
	var ts []Timeline
	err := c.api.Call(ctx, http.MethodGet, "/v1/timelines", nil, nil, &ts)
	return ts, err
}

// DropTimeline implements Service.
func (c *Client) DropTimeline(ctx context.Context, id TimelineID) error {
	return c.api.Call(ctx, http.MethodDelete, tlPath(id, ""), nil, nil, nil)
}

// OldestRetained implements Service.
func (c *Client) OldestRetained(ctx context.Context, id TimelineID) (LSN, error) {
	var v struct {
		LSN LSN `json:"lsn"`
	}
	err := c.api.Call(ctx, http.MethodGet, tlPath(id, "/oldest_retained"), nil, nil, &v)
	return v.LSN, err
}

// GC implements Service. A pass can take longer than a short call.
func (c *Client) GC(ctx context.Context) (GCStats, error) {
	var st GCStats
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.api.URL("/v1/gc", nil), nil)
	if err != nil {
		return st, err
	}
	resp, err := c.api.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// Diff implements Service. Like GC it is not a short call: it scans the
// versions of both sides, bounded by ctx only.
func (c *Client) Diff(ctx context.Context, a, b TimelineID) (DiffResult, error) {
	var res DiffResult
	q := url.Values{"against": {strconv.FormatUint(uint64(b), 10)}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.api.URL(tlPath(a, "/diff"), q), nil)
	if err != nil {
		return res, err
	}
	resp, err := c.api.Do(req)
	if err != nil {
		return res, err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&res); err != nil {
		return DiffResult{}, fmt.Errorf("pagestore %s: diff timeline %d against %d: decode: %w", c.api.Base, a, b, err)
	}
	return res, nil
}

// DiskUsage implements Service.
func (c *Client) DiskUsage(ctx context.Context) (uint64, error) {
	var v struct {
		N uint64 `json:"disk_bytes"`
	}
	err := c.api.Call(ctx, http.MethodGet, "/v1/usage", nil, nil, &v)
	return v.N, err
}

// Close implements Service.
func (c *Client) Close() error {
	c.api.HC.CloseIdleConnections()
	return nil
}

// sentinelError is an 'x' frame's error, mapped like a status.
func (c *Client) sentinelError(code int, msg string) error {
	if s, ok := sentinels[code]; ok {
		return fmt.Errorf("%w (pagestore %s: %s)", s, c.api.Base, msg)
	}
	return fmt.Errorf("pagestore %s: %s", c.api.Base, msg)
}

// Materialize implements Service: the store streams the directory, this
// process writes it.
func (c *Client) Materialize(ctx context.Context, id TimelineID, at LSN, dst string, o MaterializeOptions) (MaterializeStats, error) {
	st, err := materializeInto(ctx, id, dst, o, func(sink matSink) (LSN, error) {
		q := url.Values{}
		if at != 0 {
			q.Set("at", strconv.FormatUint(uint64(at), 10))
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.api.URL(tlPath(id, "/materialize"), q), nil)
		if err != nil {
			return 0, err
		}
		resp, err := c.api.Do(req)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		return decodeMaterialize(newFrameReader(resp.Body), sink, c.sentinelError)
	})
	if err != nil {
		return st, fmt.Errorf("materialize timeline %d into %s: %w", id, dst, err)
	}
	return st, nil
}

// Ingest implements Service: this process scans the directory, the
// store applies what the scan sends.
func (c *Client) Ingest(ctx context.Context, id TimelineID, pgdata string, cp Checkpoint, manifestPath string) (IngestStats, error) {
	t, err := c.Timeline(ctx, id)
	if err != nil {
		return IngestStats{}, fmt.Errorf("ingest timeline %d: %w", id, err)
	}
	return ingestFrom(ctx, ingestInput{id: id, head: t.Head(), pgdata: pgdata, cp: cp, manifest: manifestPath,
		workers: c.workers, noSync: c.noSync, log: c.log},
		func(base LSN) (ingestSession, error) { return c.beginIngest(ctx, id, cp, base) })
}

// remoteIngest is an ingest streaming to the store: frames go into the
// request body as the scan produces them.
type remoteIngest struct {
	fw   *frameWriter
	pw   *io.PipeWriter
	resp chan ingestResult
	once sync.Once
	res  ingestResult // the store's answer, once received
}

type ingestResult struct {
	st  IngestStats
	err error
}

var _ ingestSession = (*remoteIngest)(nil)

func (c *Client) beginIngest(ctx context.Context, id TimelineID, cp Checkpoint, base LSN) (*remoteIngest, error) {
	hdr, err := json.Marshal(ingestHeader{LSN: cp.LSN, TimeLineID: cp.TimeLineID, WALSegSize: cp.WALSegSize, Base: base})
	if err != nil {
		return nil, err
	}
	pr, pw := io.Pipe()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.api.URL(tlPath(id, "/ingest"), nil), pr)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	ri := &remoteIngest{fw: newFrameWriter(pw), pw: pw, resp: make(chan ingestResult, 1)}
	go func() {
		var r ingestResult
		resp, err := c.api.Do(req)
		if err == nil {
			err = json.NewDecoder(resp.Body).Decode(&r.st)
			resp.Body.Close()
		}
		r.err = err
		// A store that answered early (an error) reads no more: unblock
		// the scan's writes.
		pr.CloseWithError(fmt.Errorf("the pagestore ended the ingest: %v", err))
		ri.resp <- r
	}()
	if err := ri.send('h', hdr, nil); err != nil {
		ri.abort()
		return nil, err
	}
	return ri, nil
}

// send writes a frame; when the stream broke, the error is the store's.
func (ri *remoteIngest) send(typ byte, head, body []byte) error {
	if err := ri.fw.frame(typ, head, body); err != nil {
		if r := ri.result(); r.err != nil {
			return r.err
		}
		return err
	}
	return nil
}

func (ri *remoteIngest) result() ingestResult {
	ri.once.Do(func() { ri.res = <-ri.resp })
	return ri.res
}

func (ri *remoteIngest) dir(p string) error { return ri.send('d', appendStr(nil, p), nil) }

func (ri *remoteIngest) file(p string, content []byte) error {
	return ri.send('f', appendStr(nil, p), content)
}

func (ri *remoteIngest) unchanged(p string, size int64) error {
	return ri.send('u', binary.BigEndian.AppendUint64(appendStr(nil, p), uint64(size)), nil)
}

func (ri *remoteIngest) wal(p string, v []byte) error { return ri.send('w', appendStr(nil, p), v) }

func (ri *remoteIngest) worker() ingestWorker { return &remoteWorker{ri: ri} }

func (ri *remoteIngest) commit(ctx context.Context) (IngestStats, error) {
	err := ri.send('e', nil, nil)
	if err == nil {
		err = ri.fw.flush()
	}
	if err != nil {
		ri.abort()
		return IngestStats{}, err
	}
	ri.pw.Close()
	r := ri.result()
	return r.st, r.err
}

func (ri *remoteIngest) abort() {
	ri.pw.CloseWithError(errAborted)
	ri.result()
}

// remoteWorker sends forks; frames from several workers interleave.
type remoteWorker struct {
	ri   *remoteIngest
	head [relLen + 5]byte
}

func (w *remoteWorker) forkSize(rel RelTag, size uint32, unchanged bool) error {
	h := binary.BigEndian.AppendUint32(putRel(w.head[:0], rel), size)
	var u byte
	if unchanged {
		u = 1
	}
	return w.ri.send('s', append(h, u), nil)
}

func (w *remoteWorker) pages(rel RelTag, blk uint32, pages []byte) error {
	return w.ri.send('p', binary.BigEndian.AppendUint32(putRel(w.head[:0], rel), blk), pages)
}

func (w *remoteWorker) done() error { return nil }
