package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"time"

	"github.com/neonproxy/neonproxy/internal/pgwire"
)

// The floors of the pooling section: two minimal transaction poolers in Go,
// run by this binary itself (-floor MODE), that say how fast a Go pooler
// can be on this machine at all. They do only what pgbench -S needs: trust
// for the client, the simple protocol, a server connection from the first
// complete message to ReadyForQuery 'I'. No SCRAM, prepared statements,
// pinning, COPY, limits, metrics or wake; so they run only the workloads
// with held connections (a floor without SCRAM says nothing about -C).
//
//   - floorGoroutine: a goroutine per client that reads its answer inline,
//     neonproxy's own design.
//   - floorEventLoop: one thread on raw epoll, PgBouncer's design.
//
// The gap between neonproxy and the goroutine floor is neonproxy's own
// work per transaction; the gap between the floors is what a change of
// design could buy; PgBouncer against the event loop is C against Go.
const (
	floorGoroutine = "goroutine"
	floorEventLoop = "eventloop"

	nameFloorGoroutine = "floor: Go, goroutine per client (trust)"
	nameFloorEventLoop = "floor: Go, epoll event loop (trust)"

	floorMaxMessage = 64 << 10 // a longer client message ends the client
	floorStartLimit = 10 * time.Second
	sslRequestCode  = 80877103
)

// floorProc is a running floor pooler (this binary with -floor).
type floorProc struct {
	name   string
	port   int
	cmd    *exec.Cmd
	exited chan struct{}
}

// startFloor runs this binary as a floor pooler of mode on a free port,
// with poolSize server connections to the compute's socket.
func startFloor(ctx context.Context, mode, name, socketDir string, computePort, poolSize int) (*floorProc, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	ports, err := freePorts(1)
	if err != nil {
		return nil, err
	}
	f := &floorProc{name: name, port: ports[0], exited: make(chan struct{})}
	f.cmd = exec.Command(self, "-floor", mode, "-floor-listen", fmt.Sprintf("127.0.0.1:%d", f.port),
		"-floor-socket", fmt.Sprintf("%s/.s.PGSQL.%d", socketDir, computePort), "-pool-size", fmt.Sprint(poolSize))
	f.cmd.Stdout, f.cmd.Stderr = os.Stderr, os.Stderr
	f.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := f.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start floor %s: %w", mode, err)
	}
	go func() { _ = f.cmd.Wait(); close(f.exited) }()
	if err := awaitTCP(ctx, fmt.Sprintf("127.0.0.1:%d", f.port), floorStartLimit, f.exited); err != nil {
		f.stop()
		return nil, fmt.Errorf("floor %s: %w", mode, err)
	}
	return f, nil
}

func (f *floorProc) pid() int { return f.cmd.Process.Pid }

func (f *floorProc) stop() {
	_ = f.cmd.Process.Kill()
	<-f.exited
}

// runFloor serves as a floor pooler until killed (the -floor flag).
func runFloor(mode, listen, socket string, poolSize int) error {
	switch mode {
	case floorGoroutine:
		return floorGoroutines(listen, socket, poolSize)
	case floorEventLoop:
		return floorEpoll(listen, socket, poolSize)
	}
	return fmt.Errorf("-floor %q: want %s or %s", mode, floorGoroutine, floorEventLoop)
}

// floorDial logs in to the compute (trust) and reads up to ReadyForQuery.
func floorDial(socket string) (net.Conn, error) {
	c, err := net.Dial("unix", socket)
	if err != nil {
		return nil, err
	}
	body := []byte{0, 3, 0, 0}
	for _, s := range []string{"user", "postgres", "database", "postgres", ""} {
		body = append(append(body, s...), 0)
	}
	if _, err := c.Write(append(binary.BigEndian.AppendUint32(nil, uint32(len(body)+4)), body...)); err != nil {
		c.Close()
		return nil, err
	}
	for {
		var h [5]byte
		if _, err := io.ReadFull(c, h[:]); err != nil {
			c.Close()
			return nil, err
		}
		b := make([]byte, binary.BigEndian.Uint32(h[1:])-4)
		if _, err := io.ReadFull(c, b); err != nil {
			c.Close()
			return nil, err
		}
		switch h[0] {
		case 'E':
			c.Close()
			return nil, fmt.Errorf("compute refused the login: %q", b)
		case 'Z':
			return c, nil
		}
	}
}

func floorMsg(out []byte, typ byte, body string) []byte {
	out = append(out, typ)
	out = binary.BigEndian.AppendUint32(out, uint32(len(body)+4))
	return append(out, body...)
}

// floorWelcome is AuthenticationOk through ReadyForQuery.
func floorWelcome() []byte {
	out := floorMsg(nil, 'R', "\x00\x00\x00\x00")
	for _, kv := range [][2]string{{"server_version", "15.0"}, {"client_encoding", "UTF8"},
		{"standard_conforming_strings", "on"}, {"DateStyle", "ISO, MDY"}, {"integer_datetimes", "on"}} {
		out = floorMsg(out, 'S', kv[0]+"\x00"+kv[1]+"\x00")
	}
	out = floorMsg(out, 'K', "\x00\x00\x00\x01\x00\x00\x00\x02")
	return floorMsg(out, 'Z', "I")
}

// startupLen reports the length of a complete startup packet at the head of
// b (0: incomplete) and whether it is an SSLRequest.
func startupLen(b []byte) (n int, ssl bool) {
	if len(b) < 4 {
		return 0, false
	}
	n = int(binary.BigEndian.Uint32(b))
	if n < 8 || len(b) < n {
		return 0, false
	}
	return n, n == 8 && binary.BigEndian.Uint32(b[4:]) == sslRequestCode
}

// wholeMessages is the length of the complete messages at the head of b.
func wholeMessages(b []byte) int {
	at := 0
	for at+5 <= len(b) {
		n := 1 + int(binary.BigEndian.Uint32(b[at+1:]))
		if at+n > len(b) {
			break
		}
		at += n
	}
	return at
}

func floorGoroutines(listen, socket string, poolSize int) error {
	servers := make(chan net.Conn, poolSize)
	for range poolSize {
		c, err := floorDial(socket)
		if err != nil {
			return err
		}
		servers <- c
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	welcome := floorWelcome()
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go floorClient(c, servers, welcome)
	}
}

// floorClient serves one client: whole messages go to a server connection
// taken from servers, whose answer is relayed until ReadyForQuery 'I'.
func floorClient(c net.Conn, servers chan net.Conn, welcome []byte) {
	defer c.Close()
	buf := make([]byte, 8<<10)
	sbuf := make([]byte, 32<<10)
	have := 0
	var fr pgwire.Framer // follows the answers to their ReadyForQuery 'I'
	for started := false; ; {
		if have == len(buf) {
			if len(buf) >= floorMaxMessage {
				return
			}
			buf = append(buf, make([]byte, len(buf))...)
		}
		n, err := c.Read(buf[have:])
		if err != nil {
			return
		}
		have += n
		if !started {
			k, ssl := startupLen(buf[:have])
			if k == 0 {
				continue
			}
			have = copy(buf, buf[k:have])
			if ssl {
				_, err = c.Write([]byte{'N'})
			} else {
				started = true
				_, err = c.Write(welcome)
			}
			if err != nil {
				return
			}
			continue
		}
		end := wholeMessages(buf[:have])
		if end == 0 {
			continue
		}
		if buf[0] == 'X' {
			return
		}
		s := <-servers
		if _, err := s.Write(buf[:end]); err != nil {
			fmt.Fprintln(os.Stderr, "floor: server write:", err)
			os.Exit(1)
		}
		have = copy(buf, buf[end:have])
		clientOK := true
		for ended := fr.IdleCount; fr.IdleCount == ended; {
			n, err := s.Read(sbuf)
			if err != nil {
				fmt.Fprintln(os.Stderr, "floor: server read:", err)
				os.Exit(1)
			}
			_ = fr.Feed(sbuf[:n]) // servers are trusted
			if clientOK {
				_, err = c.Write(sbuf[:n])
				clientOK = err == nil // the rest of the answer is drained
			}
		}
		servers <- s
		if !clientOK {
			return
		}
	}
}

// floorConn is a socket of the event loop.
type floorConn struct {
	fd      int
	client  bool
	started bool // client: past its startup packet
	queued  bool // client: waiting for a server connection
	open    bool
	peer    *floorConn // the attached server of a client, or its client
	buf     []byte
	have    int
	fr      pgwire.Framer // server: follows answers to their ReadyForQuery 'I'
}

func floorEpoll(listen, socket string, poolSize int) error {
	runtime.LockOSThread()
	efd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return err
	}
	conns := map[int]*floorConn{}
	watch := func(c *floorConn) error {
		conns[c.fd] = c
		if err := syscall.SetNonblock(c.fd, true); err != nil {
			return err
		}
		return syscall.EpollCtl(efd, syscall.EPOLL_CTL_ADD, c.fd, &syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(c.fd)})
	}
	var idle, waiting []*floorConn
	for range poolSize {
		c, err := floorDial(socket)
		if err != nil {
			return err
		}
		f, err := c.(*net.UnixConn).File() // a descriptor of our own, outside Go's poller
		c.Close()
		if err != nil {
			return err
		}
		s := &floorConn{fd: int(f.Fd()), open: true, buf: make([]byte, 32<<10)}
		defer f.Close() // keeps f (and so the descriptor) alive
		if err := watch(s); err != nil {
			return err
		}
		idle = append(idle, s)
	}
	addr, err := net.ResolveTCPAddr("tcp", listen)
	if err != nil {
		return err
	}
	lfd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	_ = syscall.SetsockoptInt(lfd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
	sa := &syscall.SockaddrInet4{Port: addr.Port}
	copy(sa.Addr[:], addr.IP.To4())
	if err := syscall.Bind(lfd, sa); err != nil {
		return err
	}
	if err := syscall.Listen(lfd, 4096); err != nil {
		return err
	}
	if err := syscall.EpollCtl(efd, syscall.EPOLL_CTL_ADD, lfd, &syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(lfd)}); err != nil {
		return err
	}
	welcome := floorWelcome()
	closeClient := func(c *floorConn) {
		_ = syscall.EpollCtl(efd, syscall.EPOLL_CTL_DEL, c.fd, nil)
		delete(conns, c.fd)
		_ = syscall.Close(c.fd)
		c.open = false
	}
	// forward sends a client's whole messages to its server, attaching an
	// idle one first; with none idle the client waits its turn.
	forward := func(c *floorConn) error {
		end := wholeMessages(c.buf[:c.have])
		if end == 0 {
			return nil
		}
		if c.buf[0] == 'X' && c.peer == nil {
			closeClient(c)
			return nil
		}
		if c.peer == nil {
			if len(idle) == 0 {
				if !c.queued {
					c.queued = true
					waiting = append(waiting, c)
				}
				return nil
			}
			s := idle[len(idle)-1]
			idle = idle[:len(idle)-1]
			c.peer, s.peer = s, c
		}
		if err := writeFull(c.peer.fd, c.buf[:end]); err != nil {
			return fmt.Errorf("server write: %w", err)
		}
		c.have = copy(c.buf, c.buf[end:c.have])
		return nil
	}
	events := make([]syscall.EpollEvent, 256)
	for {
		n, err := syscall.EpollWait(efd, events, -1)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		for _, ev := range events[:n] {
			fd := int(ev.Fd)
			if fd == lfd {
				for {
					nfd, _, err := syscall.Accept4(lfd, syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC)
					if err != nil {
						break
					}
					_ = syscall.SetsockoptInt(nfd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1)
					if err := watch(&floorConn{fd: nfd, client: true, open: true, buf: make([]byte, 8<<10)}); err != nil {
						return err
					}
				}
				continue
			}
			e := conns[fd]
			if e == nil {
				continue
			}
			if e.have == len(e.buf) {
				if !e.client || len(e.buf) >= floorMaxMessage {
					return fmt.Errorf("buffer full (client %v)", e.client)
				}
				e.buf = append(e.buf, make([]byte, len(e.buf))...)
			}
			m, err := syscall.Read(fd, e.buf[e.have:])
			if errors.Is(err, syscall.EAGAIN) {
				continue
			}
			if err != nil || m == 0 {
				if !e.client {
					return fmt.Errorf("server connection lost: %v", err)
				}
				if e.peer == nil {
					closeClient(e)
				} else {
					e.open = false // closed once its answer is drained
				}
				continue
			}
			if !e.client {
				c := e.peer
				ended := e.fr.IdleCount
				_ = e.fr.Feed(e.buf[:m]) // servers are trusted
				done := e.fr.IdleCount != ended
				if c != nil && c.open {
					if err := writeFull(c.fd, e.buf[:m]); err != nil {
						c.open = false
					}
				}
				if !done {
					continue
				}
				e.peer = nil
				idle = append(idle, e)
				if c != nil {
					c.peer = nil
					switch {
					case !c.open:
						closeClient(c)
					case c.have > 0:
						if err := forward(c); err != nil { // pipelined next query
							return err
						}
					}
				}
				for len(waiting) > 0 && len(idle) > 0 {
					w := waiting[0]
					waiting = waiting[1:]
					w.queued = false
					if w.open {
						if err := forward(w); err != nil {
							return err
						}
					}
				}
				continue
			}
			e.have += m
			if !e.started {
				k, ssl := startupLen(e.buf[:e.have])
				if k == 0 {
					continue
				}
				e.have = copy(e.buf, e.buf[k:e.have])
				reply := []byte{'N'}
				if !ssl {
					e.started, reply = true, welcome
				}
				if writeFull(fd, reply) != nil {
					closeClient(e)
				}
				continue
			}
			if err := forward(e); err != nil {
				return err
			}
		}
	}
}

// writeFull writes all of b to a non-blocking descriptor, waiting for room
// when the socket buffer is full.
func writeFull(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := syscall.Write(fd, b)
		if errors.Is(err, syscall.EAGAIN) {
			var w syscall.FdSet
			w.Bits[fd/64] |= 1 << (uint(fd) % 64)
			if _, err := syscall.Select(fd+1, nil, &w, nil, nil); err != nil && !errors.Is(err, syscall.EINTR) {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}
