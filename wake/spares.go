package wake

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"

	"go.uber.org/zap"

	"github.com/neonproxy/neonproxy/pagestore"
)

// spares is a pool of empty files, owned by the compute user, made ahead
// of time in <DataDir>/spare on the same file system as the data
// directories. A cold start renames them into place instead of creating
// ~1,000 inodes on its critical path: on this project's ext4 VM a create
// costs ~0.5 ms and does not parallelise, a rename ~25 µs.
//
// A rename is atomic, so after a crash a file is either still a spare or
// part of a data directory, never both; spares that are not empty,
// single-link regular files are discarded when the pool is loaded.
type spares struct {
	dir    string
	target int
	owner  pagestore.Owner
	log    *zap.Logger

	kick chan struct{}
	done chan struct{}
	stop context.CancelFunc

	mu struct {
		sync.Mutex
		names []string
		next  uint64
		// users counts materializations in progress: the filler waits
		// for them, since creates and renames contend in the file system.
		users int
		// taken counts spares handed out, ever.
		taken int
	}
}

var _ pagestore.FileSource = (*spares)(nil)

// newSpares loads the pool in dir and starts filling it up to target in
// the background.
func newSpares(dir string, target int, owner pagestore.Owner, log *zap.Logger) (*spares, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("spare files: %w", err)
	}
	p := &spares{dir: dir, target: target, owner: owner, log: log, kick: make(chan struct{}, 1), done: make(chan struct{})}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("spare files: %w", err)
	}
	for _, e := range ents {
		path := filepath.Join(dir, e.Name())
		n, err := strconv.ParseUint(e.Name(), 10, 64)
		if err != nil || !usableSpare(path) {
			_ = os.Remove(path)
			continue
		}
		p.mu.names = append(p.mu.names, e.Name())
		p.mu.next = max(p.mu.next, n+1)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p.stop = cancel
	go p.run(ctx)
	p.refill()
	return p, nil
}

// usableSpare reports whether path is an empty regular file with one link.
func usableSpare(path string) bool {
	fi, err := os.Lstat(path)
	if err != nil || !fi.Mode().IsRegular() || fi.Size() != 0 {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && st.Nlink == 1
}

// Create renames a spare to path (or creates path when the pool is empty)
// and opens it for writing.
func (p *spares) Create(path string) (*os.File, error) {
	p.mu.Lock()
	n := len(p.mu.names)
	if n == 0 {
		p.mu.Unlock()
		p.refill()
		return os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	}
	name := p.mu.names[n-1]
	p.mu.names = p.mu.names[:n-1]
	p.mu.taken++
	p.mu.Unlock()
	// Materialize writes each path of a fresh directory once: an existing
	// path is a bug, and rename would hide it by replacing the file.
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		p.put(name)
		return nil, fmt.Errorf("create %s: %w", path, fs.ErrExist)
	}
	if err := os.Rename(filepath.Join(p.dir, name), path); err != nil {
		return os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	}
	return os.OpenFile(path, os.O_WRONLY, 0)
}

func (p *spares) put(name string) {
	p.mu.Lock()
	p.mu.names = append(p.mu.names, name)
	p.mu.Unlock()
}

// use marks a materialization in progress; the returned func ends it and
// lets the filler top the pool up again.
func (p *spares) use() (done func()) {
	p.mu.Lock()
	p.mu.users++
	p.mu.Unlock()
	return func() {
		p.mu.Lock()
		p.mu.users--
		p.mu.Unlock()
		p.refill()
	}
}

// count is the number of spares ready.
func (p *spares) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.mu.names)
}

// taken is the number of spares handed out so far.
func (p *spares) taken() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mu.taken
}

// refill asks the background filler to top the pool up.
func (p *spares) refill() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

func (p *spares) run(ctx context.Context) {
	defer close(p.done)
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.kick:
		}
		for ctx.Err() == nil {
			p.mu.Lock()
			if len(p.mu.names) >= p.target || p.mu.users > 0 {
				p.mu.Unlock()
				break // full, or a materialization runs: its end kicks again
			}
			name := strconv.FormatUint(p.mu.next, 10)
			p.mu.next++
			p.mu.Unlock()
			path := filepath.Join(p.dir, name)
			f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err == nil {
				err = f.Close()
			}
			if err == nil {
				err = p.owner.Chown(path)
			}
			if err != nil {
				p.log.Warn("make spare file", zap.String("path", path), zap.Error(err))
				_ = os.Remove(path)
				break
			}
			p.put(name)
		}
	}
}

// close stops the filler and waits for it.
func (p *spares) close() {
	p.stop()
	<-p.done
}
