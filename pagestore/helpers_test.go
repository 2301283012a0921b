package pagestore

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http/httptest"
	"slices"
	"testing"

	"github.com/neonproxy/neonproxy/internal/httpapi"
)

func openTest(t *testing.T) *Store {
	t.Helper()
	s, err := Open(Options{Dir: t.TempDir(), NoSync: true, Parallelism: 3})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// imageWriter writes versions directly (the internal write path).
type imageWriter struct {
	t   *testing.T
	s   *Store
	id  TimelineID
	lsn LSN
	bw  *batchWriter
}

func (w *imageWriter) set(k, v []byte) {
	w.t.Helper()
	if err := w.bw.set(k, v); err != nil {
		w.t.Fatal(err)
	}
}
func (w *imageWriter) page(r RelTag, blk uint32, data []byte) {
	w.set(pageKey(w.id, r, blk, w.lsn), data)
}
func (w *imageWriter) size(r RelTag, n uint32) { w.set(sizeKey(w.id, r, w.lsn), encodeSize(n)) }
func (w *imageWriter) drop(r RelTag)           { w.size(r, droppedSize) }
func (w *imageWriter) file(p string, c string) {
	w.set(fileKey(w.id, p, w.lsn), append([]byte{fileContent}, c...))
}
func (w *imageWriter) del(p string) { w.set(fileKey(w.id, p, w.lsn), []byte{fileDeleted}) }

// writeImage writes versions at lsn; commit adds lsn to the timeline's images.
func writeImage(t *testing.T, s *Store, id TimelineID, lsn LSN, commit bool, fn func(w *imageWriter)) {
	t.Helper()
	w := &imageWriter{t: t, s: s, id: id, lsn: lsn, bw: &batchWriter{db: s.db}}
	fn(w)
	if err := w.bw.flush(); err != nil {
		t.Fatal(err)
	}
	if !commit {
		return
	}
	if _, err := s.updateMeta(id, nil, func(tl *Timeline) {
		tl.Images = append(tl.Images, lsn)
		slices.Sort(tl.Images)
		tl.StoredBytes += w.bw.bytes
	}); err != nil {
		t.Fatal(err)
	}
}

// pageOf returns a page filled with b.
func pageOf(b byte) []byte { return bytes.Repeat([]byte{b}, BlockSize) }

func mustCreate(t *testing.T, s *Store, name string, parent TimelineID, at LSN) Timeline {
	t.Helper()
	tl, err := s.CreateTimeline(context.Background(), name, parent, at)
	if err != nil {
		t.Fatal(err)
	}
	return tl
}

// expectPage checks ReadPage: want nil means ErrNotFound.
func expectPage(t *testing.T, s *Store, id TimelineID, at LSN, r RelTag, blk uint32, want []byte) {
	t.Helper()
	got, err := s.ReadPage(context.Background(), id, at, r, blk)
	if want == nil {
		if !errors.Is(err, ErrNotFound) {
			t.Errorf("ReadPage(tl %d, %s, %s, %d): got %v (len %d), want ErrNotFound", id, at, r, blk, err, len(got))
		}
		return
	}
	if err != nil {
		t.Errorf("ReadPage(tl %d, %s, %s, %d): %v", id, at, r, blk, err)
		return
	}
	if !bytes.Equal(got, want) {
		t.Errorf("ReadPage(tl %d, %s, %s, %d): got page starting %x, want %x", id, at, r, blk, got[:4], want[:4])
	}
}

// serveTest serves s's HTTP API on loopback (HTTP/1.1 and h2c) and
// returns a client of it.
func serveTest(t testing.TB, s *Store) *Client {
	t.Helper()
	const token = "test-token"
	srv := httptest.NewUnstartedServer(Handler(s, nil, token))
	srv.Config.Protocols = httpapi.Protocols()
	srv.Start()
	t.Cleanup(srv.Close)
	c, err := NewClient(srv.URL, ClientOptions{Token: token, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// bothServices runs fn against the Store itself and against a Client of
// it over HTTP: the two must behave the same.
func bothServices(t *testing.T, open func(t *testing.T) *Store, fn func(t *testing.T, s *Store, svc Service)) {
	t.Run("local", func(t *testing.T) {
		s := open(t)
		fn(t, s, s)
	})
	t.Run("remote", func(t *testing.T) {
		s := open(t)
		fn(t, s, serveTest(t, s))
	})
}

// reset points fr at r, keeping its buffers: a fuzz target reading a
// fresh 256 KiB bufio.Reader per input spent most of its time zeroing it.
func (fr *frameReader) reset(r io.Reader) *frameReader {
	fr.r.Reset(r)
	return fr
}
