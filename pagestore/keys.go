package pagestore

import (
	"encoding/binary"
	"fmt"
	"path"
	"strings"
)

// Key kinds.
const (
	kindCounter = 'c'
	kindMeta    = 'm'
	kindSize    = 's'
	kindPage    = 'p'
	kindFile    = 'f'
)

// BlockSize is PostgreSQL's page size (BLCKSZ).
const BlockSize = 8192

// relSegBlocks is the number of blocks per relation segment file (1 GiB).
// A variable so tests can use small segments.
var relSegBlocks uint32 = 131072

// droppedSize marks a dropped relation fork.
const droppedSize = 0xFFFFFFFF

// File entry kinds.
const (
	fileContent = 'F'
	fileDir     = 'D'
	fileDeleted = 'X'
	fileSparse  = 'S'
)

// RelTag names a relation fork.
type RelTag struct {
	Spc, DB, Rel uint32
	Fork         uint8 // 0 main, 1 fsm, 2 vm, 3 init
}

// Fork numbers.
const (
	ForkMain uint8 = 0
	ForkFSM  uint8 = 1
	ForkVM   uint8 = 2
	ForkInit uint8 = 3
)

var forkSuffix = [...]string{"", "_fsm", "_vm", "_init"}

func (r RelTag) String() string {
	return fmt.Sprintf("%d/%d/%d%s", r.Spc, r.DB, r.Rel, forkSuffix[r.Fork&3])
}

// path returns the data-directory relative path of segment seg of the fork.
func (r RelTag) path(seg uint32) string {
	var p string
	if r.Spc == globalTablespace {
		p = fmt.Sprintf("global/%d%s", r.Rel, forkSuffix[r.Fork&3])
	} else {
		p = fmt.Sprintf("base/%d/%d%s", r.DB, r.Rel, forkSuffix[r.Fork&3])
	}
	if seg > 0 {
		p += fmt.Sprintf(".%d", seg)
	}
	return p
}

const (
	globalTablespace  = 1664
	defaultTablespace = 1663
)

const relLen = 13

func putRel(b []byte, r RelTag) []byte {
	b = binary.BigEndian.AppendUint32(b, r.Spc)
	b = binary.BigEndian.AppendUint32(b, r.DB)
	b = binary.BigEndian.AppendUint32(b, r.Rel)
	return append(b, r.Fork)
}

func getRel(b []byte) RelTag {
	return RelTag{
		Spc:  binary.BigEndian.Uint32(b),
		DB:   binary.BigEndian.Uint32(b[4:]),
		Rel:  binary.BigEndian.Uint32(b[8:]),
		Fork: b[12],
	}
}

func appendLSN(b []byte, l LSN) []byte { return binary.BigEndian.AppendUint64(b, ^uint64(l)) }

// keyLSN decodes the LSN suffix of a version key.
func keyLSN(k []byte) LSN { return LSN(^binary.BigEndian.Uint64(k[len(k)-8:])) }

func tlPrefix(kind byte, id TimelineID) []byte {
	b := make([]byte, 0, 48)
	b = append(b, kind)
	return binary.BigEndian.AppendUint64(b, uint64(id))
}

func metaKey(id TimelineID) []byte { return tlPrefix(kindMeta, id) }

func sizePrefix(id TimelineID, r RelTag) []byte { return putRel(tlPrefix(kindSize, id), r) }

func sizeKey(id TimelineID, r RelTag, l LSN) []byte { return appendLSN(sizePrefix(id, r), l) }

func pagePrefix(id TimelineID, r RelTag, blk uint32) []byte {
	return binary.BigEndian.AppendUint32(putRel(tlPrefix(kindPage, id), r), blk)
}

func pageKey(id TimelineID, r RelTag, blk uint32, l LSN) []byte {
	return appendLSN(pagePrefix(id, r, blk), l)
}

func filePrefix(id TimelineID, path string) []byte {
	b := append(tlPrefix(kindFile, id), path...)
	return append(b, 0)
}

func fileKey(id TimelineID, path string, l LSN) []byte { return appendLSN(filePrefix(id, path), l) }

// decoded is a version key taken apart.
type decoded struct {
	kind byte
	tl   TimelineID
	rel  RelTag
	blk  uint32
	path string
	lsn  LSN
}

func decodeKey(k []byte) (decoded, error) {
	if len(k) < 9 {
		return decoded{}, fmt.Errorf("pagestore: short key %x", k)
	}
	d := decoded{kind: k[0], tl: TimelineID(binary.BigEndian.Uint64(k[1:9]))}
	switch d.kind {
	case kindMeta:
		if len(k) != 9 {
			return d, fmt.Errorf("pagestore: bad meta key %x", k)
		}
		return d, nil
	case kindSize:
		if len(k) != 9+relLen+8 {
			return d, fmt.Errorf("pagestore: bad size key %x", k)
		}
		d.rel = getRel(k[9:])
	case kindPage:
		if len(k) != 9+relLen+4+8 {
			return d, fmt.Errorf("pagestore: bad page key %x", k)
		}
		d.rel = getRel(k[9:])
		d.blk = binary.BigEndian.Uint32(k[9+relLen:])
	case kindFile:
		if len(k) < 9+1+8 || k[len(k)-9] != 0 {
			return d, fmt.Errorf("pagestore: bad file key %x", k)
		}
		d.path = string(k[9 : len(k)-9])
	default:
		return d, fmt.Errorf("pagestore: unknown key kind %q", k[0])
	}
	d.lsn = keyLSN(k)
	return d, nil
}

// successor returns the smallest key greater than every key having prefix p.
func successor(p []byte) []byte {
	s := append([]byte(nil), p...)
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] != 0xFF {
			s[i]++
			return s[:i+1]
		}
	}
	return nil // no upper bound
}

// groupEnd returns a key just after every version of group g (a key
// without its LSN suffix).
func groupEnd(g []byte) []byte {
	e := make([]byte, 0, len(g)+9)
	e = append(e, g...)
	e = append(e, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0)
	return e
}

// Sparse file encoding.
type sparseChunk struct {
	off  uint64
	data []byte
}

func encodeSparse(size uint64, chunks []sparseChunk) []byte {
	n := 1 + 8
	for _, c := range chunks {
		n += 12 + len(c.data)
	}
	b := make([]byte, 0, n)
	b = append(b, fileSparse)
	b = binary.BigEndian.AppendUint64(b, size)
	for _, c := range chunks {
		b = binary.BigEndian.AppendUint64(b, c.off)
		b = binary.BigEndian.AppendUint32(b, uint32(len(c.data)))
		b = append(b, c.data...)
	}
	return b
}

func decodeSparse(v []byte) (uint64, []sparseChunk, error) {
	if len(v) < 9 || v[0] != fileSparse {
		return 0, nil, fmt.Errorf("pagestore: bad sparse file value")
	}
	size := binary.BigEndian.Uint64(v[1:])
	v = v[9:]
	var chunks []sparseChunk
	for len(v) > 0 {
		if len(v) < 12 {
			return 0, nil, fmt.Errorf("pagestore: truncated sparse chunk")
		}
		off := binary.BigEndian.Uint64(v)
		n := binary.BigEndian.Uint32(v[8:])
		v = v[12:]
		if uint64(len(v)) < uint64(n) || off > size || uint64(n) > size-off {
			return 0, nil, fmt.Errorf("pagestore: bad sparse chunk")
		}
		chunks = append(chunks, sparseChunk{off: off, data: v[:n]})
		v = v[n:]
	}
	return size, chunks, nil
}

// validRelPath says whether p is a clean slash path inside a data
// directory: what a path from the network must be before it is joined to
// one.
func validRelPath(p string) bool {
	return p != "" && p != "." && !strings.HasPrefix(p, "/") && path.Clean(p) == p &&
		p != ".." && !strings.HasPrefix(p, "../") && !strings.ContainsRune(p, 0)
}
