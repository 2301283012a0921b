package pagestore

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkMaterialize writes a 64 MiB data directory (one relation of
// random pages plus makeDataDir's files) out of the store: in process,
// and through a Client over loopback HTTP (h2c), the network pagestore's
// path. MB/s is logical bytes.
//
//	go test -run XXX -bench Materialize -benchtime 10x ./pagestore
func BenchmarkMaterialize(b *testing.B) {
	ctx := context.Background()
	work := b.TempDir()
	src := filepath.Join(work, "src")
	cp := makeDataDir(b, src)
	// makeDataDir's relation has segments of 4 blocks (smallSegments);
	// here segments are PostgreSQL's 1 GiB, so keep only its first.
	for _, p := range []string{"base/5/16384.1", "base/5/16384.2"} {
		if err := os.Remove(filepath.Join(src, p)); err != nil {
			b.Fatal(err)
		}
	}
	r := rand.New(rand.NewPCG(3, 4))
	const relBytes = 64 << 20
	segBytes := int(relSegBlocks) * BlockSize
	for seg := 0; seg*segBytes < relBytes; seg++ {
		name := "base/5/30000"
		if seg > 0 {
			name += fmt.Sprintf(".%d", seg)
		}
		writeFile(b, src, name, randBytes(r, min(segBytes, relBytes-seg*segBytes)))
	}
	s, err := Open(Options{Dir: filepath.Join(work, "store"), NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	tl, err := s.CreateTimeline(ctx, "main", 0, 0)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := s.Ingest(ctx, tl.ID, src, cp, ""); err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		svc  Service
	}{{"local", s}, {"http", serveTest(b, s)}} {
		b.Run(tc.name, func(b *testing.B) {
			var bytes int64
			for i := 0; b.Loop(); i++ {
				dst := filepath.Join(work, fmt.Sprintf("%s-%d", tc.name, i))
				st, err := tc.svc.Materialize(ctx, tl.ID, 0, dst, MaterializeOptions{Owner: Owner{UID: -1}})
				if err != nil {
					b.Fatal(err)
				}
				bytes = st.Bytes
				b.StopTimer()
				_ = os.RemoveAll(dst)
				b.StartTimer()
			}
			b.SetBytes(bytes)
		})
	}
}
