package raftstore

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc64"
	"hash/fnv"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/hashicorp/raft"
	"github.com/raftquota/raftquota/raftstore/state"
)

// A node checks its data dir before Raft opens it, so damage is named
// instead of faulting inside bbolt's memory map (a truncated raft.db) or
// ending in raft's "failed to load any existing snapshots": raft.db's meta
// pages and size, then bbolt's own consistency check, and each snapshot's
// CRC. A damaged snapshot with an older good one is moved aside and the
// node goes on from the older one; any other damage stops the node with
// one error that names the file, says what is wrong and how to recover.
// `caddy quota verify` runs the same checks offline.

// DamageError is a data dir the node must not start from.
type DamageError struct {
	// Path is the damaged file or directory.
	Path string
	// Problem says what is wrong with it.
	Problem string
}

func (e *DamageError) Error() string {
	return fmt.Sprintf("the data dir is damaged: %s: %s. Recover this node as a member rejoining with an empty data dir: stop it, move %s aside, and start it again with the same config (it copies the cluster's state from the leader; see docs/OPERATIONS.md, Recovering a node). If most voters are damaged, restore from a backup (caddy quota restore)",
		e.Path, e.Problem, filepath.Dir(e.Path))
}

// DataDirCheck is what a data dir check found, one line per file.
type DataDirCheck struct {
	Lines []string
	// MovedAside are damaged snapshots moved out of the node's way.
	MovedAside []string
}

func (c *DataDirCheck) say(format string, args ...any) {
	c.Lines = append(c.Lines, fmt.Sprintf(format, args...))
}

// CheckDataDir checks a voter's data dir: raft.db, the WAL's presence and
// the snapshots. With repair it moves a damaged snapshot aside when an
// older one is good. A *DamageError says what stops the node.
func CheckDataDir(dir string, repair bool) (*DataDirCheck, error) {
	c := &DataDirCheck{}
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs // messages name files an operator can find
	}
	if err := checkBolt(filepath.Join(dir, boltFile), c); err != nil {
		return c, err
	}
	if fi, err := os.Stat(filepath.Join(dir, walDir)); err == nil && fi.IsDir() {
		segs, _ := filepath.Glob(filepath.Join(dir, walDir, "*.wal"))
		c.say("%s: raft-wal log, %d segment files", filepath.Join(dir, walDir), len(segs))
	}
	// raft's file snapshot store keeps its snapshots in a directory of
	// its own under the path it is given.
	return c, checkSnapshots(filepath.Join(dir, "snapshots", "snapshots"), repair, c)
}

// bolt's meta page, as it lies on disk after the page header.
type boltMeta struct {
	Magic, Version, PageSize, Flags uint32
	Root, Sequence, Freelist, Pgid  uint64
	Txid, Checksum                  uint64
}

const (
	boltMagic      = 0xED0CDAED
	boltVersion    = 2
	boltPageHeader = 16
	boltMetaSum    = 56 // bytes of a meta before its checksum
)

// readBoltMeta reads the meta at offset off of f, or why it is bad.
func readBoltMeta(f *os.File, off int64) (boltMeta, error) {
	var m boltMeta
	b := make([]byte, boltPageHeader+64)
	if _, err := f.ReadAt(b, off); err != nil {
		return m, fmt.Errorf("cannot read the meta page at %d: %v", off, err)
	}
	raw := b[boltPageHeader:]
	if err := binary.Read(strings.NewReader(string(raw)), binary.LittleEndian, &m); err != nil {
		return m, err
	}
	h := fnv.New64a()
	h.Write(raw[:boltMetaSum])
	switch {
	case m.Magic != boltMagic:
		return m, errors.New("not a bbolt file (bad magic)")
	case m.Version != boltVersion:
		return m, fmt.Errorf("bbolt format version %d, want %d", m.Version, boltVersion)
	case h.Sum64() != m.Checksum:
		return m, errors.New("meta page checksum mismatch")
	}
	return m, nil
}

// checkBolt checks raft.db: a good meta page, a file as long as the meta
// says, and bbolt's consistency check (page by page), with a fault in
// bbolt's memory map turned into an error rather than a crash.
func checkBolt(path string, c *DataDirCheck) error {
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		c.say("%s: absent (a new data dir)", path)
		return nil
	}
	if err != nil {
		return &DamageError{Path: path, Problem: err.Error()}
	}
	if fi.Size() == 0 {
		return &DamageError{Path: path, Problem: "the file is empty"}
	}
	f, err := os.Open(path)
	if err != nil {
		return &DamageError{Path: path, Problem: err.Error()}
	}
	m0, err0 := readBoltMeta(f, 0)
	pageSize := int64(m0.PageSize)
	if err0 != nil || pageSize < 512 || pageSize > 1<<16 {
		pageSize = int64(os.Getpagesize())
	}
	m1, err1 := readBoltMeta(f, pageSize)
	f.Close()
	m := m0
	if err0 != nil || (err1 == nil && m1.Txid > m0.Txid) {
		m = m1
	}
	if err0 != nil && err1 != nil {
		return &DamageError{Path: path, Problem: fmt.Sprintf("both meta pages are bad (%v; %v)", err0, err1)}
	}
	if need := int64(m.Pgid) * int64(m.PageSize); fi.Size() < need {
		return &DamageError{Path: path, Problem: fmt.Sprintf("the file is %d bytes but its pages reach %d: it was cut short", fi.Size(), need)}
	}
	if err := boltConsistent(path, m); err != nil {
		return &DamageError{Path: path, Problem: err.Error()}
	}
	if err0 != nil || err1 != nil {
		// A meta page torn by a crash is what bbolt keeps two of them
		// for: it uses the other, and rewrites this one on its next commit.
		c.say("%s: one meta page is damaged (%v); bbolt uses the other", path, errors.Join(err0, err1))
	}
	c.say("%s: ok (meta pages and B+tree checked, %d bytes, transaction %d)", path, fi.Size(), m.Txid)
	return nil
}

// boltConsistent walks the B+tree of path from meta m's root with plain
// reads (no memory map), checking what bbolt asserts when it opens a file
// whose free list it must rebuild: every page it reaches says it is that
// page, is a branch or a leaf, lies below the high-water mark, is reached
// once, and holds its elements inside itself. bbolt's own check cannot be
// used here: it panics in a goroutine of its own on exactly this kind of
// damage, which no recover can catch.
func boltConsistent(path string, m boltMeta) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	w := &boltWalker{f: f, pageSize: int64(m.PageSize), hwm: m.Pgid, seen: map[uint64]bool{}}
	return w.page(m.Root, 0)
}

type boltWalker struct {
	f        *os.File
	pageSize int64
	hwm      uint64
	seen     map[uint64]bool
}

const (
	boltBranch     = 0x01
	boltLeaf       = 0x02
	boltBucketLeaf = 0x01 // a leaf element that is a bucket
	boltElem       = 16   // bytes of a branch or leaf element header
	maxBoltDepth   = 64
)

// page checks page id and everything under it.
func (w *boltWalker) page(id uint64, depth int) error {
	if depth > maxBoltDepth {
		return fmt.Errorf("the tree is deeper than %d pages at page %d", maxBoltDepth, id)
	}
	if id < 2 || id >= w.hwm {
		return fmt.Errorf("page %d is out of bounds (high-water mark %d)", id, w.hwm)
	}
	if w.seen[id] {
		return fmt.Errorf("page %d is referenced twice", id)
	}
	w.seen[id] = true
	hdr := make([]byte, boltPageHeader)
	if _, err := w.f.ReadAt(hdr, int64(id)*w.pageSize); err != nil {
		return fmt.Errorf("page %d cannot be read: %v", id, err)
	}
	if got := binary.LittleEndian.Uint64(hdr); got != id {
		return fmt.Errorf("page %d says it is page %d", id, got)
	}
	overflow := uint64(binary.LittleEndian.Uint32(hdr[12:]))
	if id+overflow >= w.hwm {
		return fmt.Errorf("page %d runs past the high-water mark", id)
	}
	buf := make([]byte, int64(overflow+1)*w.pageSize)
	if _, err := w.f.ReadAt(buf, int64(id)*w.pageSize); err != nil {
		return fmt.Errorf("page %d cannot be read: %v", id, err)
	}
	return w.elements(buf, id, depth)
}

// elements checks the elements of a page held in buf (a file page, or an
// inline bucket's page) and walks what they reach.
func (w *boltWalker) elements(buf []byte, id uint64, depth int) error {
	flags := binary.LittleEndian.Uint16(buf[8:])
	count := int(binary.LittleEndian.Uint16(buf[10:]))
	if boltPageHeader+count*boltElem > len(buf) {
		return fmt.Errorf("page %d claims %d elements, more than it holds", id, count)
	}
	for i := range count {
		e := buf[boltPageHeader+i*boltElem:]
		at := boltPageHeader + i*boltElem
		switch flags &^ 0x10 {
		case boltBranch:
			pos, ksize := int(binary.LittleEndian.Uint32(e)), int(binary.LittleEndian.Uint32(e[4:]))
			if at+pos+ksize > len(buf) {
				return fmt.Errorf("page %d: element %d lies outside the page", id, i)
			}
			if err := w.page(binary.LittleEndian.Uint64(e[8:]), depth+1); err != nil {
				return err
			}
		case boltLeaf:
			eflags, pos := binary.LittleEndian.Uint32(e), int(binary.LittleEndian.Uint32(e[4:]))
			ksize, vsize := int(binary.LittleEndian.Uint32(e[8:])), int(binary.LittleEndian.Uint32(e[12:]))
			if pos < 0 || ksize < 0 || vsize < 0 || at+pos+ksize+vsize > len(buf) {
				return fmt.Errorf("page %d: element %d lies outside the page", id, i)
			}
			if eflags&boltBucketLeaf == 0 {
				continue
			}
			v := buf[at+pos+ksize : at+pos+ksize+vsize]
			if len(v) < 16 {
				return fmt.Errorf("page %d: bucket %d has a short header", id, i)
			}
			if root := binary.LittleEndian.Uint64(v); root != 0 {
				if err := w.page(root, depth+1); err != nil {
					return err
				}
			} else if len(v) < 16+boltPageHeader {
				return fmt.Errorf("page %d: inline bucket %d is cut short", id, i)
			} else if err := w.elements(v[16:], id, depth+1); err != nil {
				return err
			}
		default:
			return fmt.Errorf("page %d is neither a branch nor a leaf (flags %#x)", id, flags)
		}
	}
	return nil
}

// checkSnapshots checks each snapshot's CRC, newest first. A damaged one
// is moved aside (with repair) when an older one is good; with none good,
// the node cannot start.
func checkSnapshots(dir string, repair bool, c *DataDirCheck) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return &DamageError{Path: dir, Problem: err.Error()}
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() && !strings.HasSuffix(e.Name(), ".tmp") {
			names = append(names, e.Name())
		}
	}
	// raft names snapshots term-index-milliseconds: newest sorts last.
	slices.Sort(names)
	slices.Reverse(names)
	var damaged []string
	good := false
	for _, n := range names {
		path := filepath.Join(dir, n)
		meta, err := checkSnapshot(path)
		if err != nil {
			c.say("%s: DAMAGED: %v", path, err)
			damaged = append(damaged, path)
			continue
		}
		c.say("%s: ok (index %d, term %d, %d bytes)", path, meta.Index, meta.Term, meta.Size)
		good = true
		break // older ones are not needed to start
	}
	if len(damaged) == 0 {
		return nil
	}
	if !good {
		return &DamageError{Path: damaged[0], Problem: "no snapshot is readable (" + strings.Join(c.Lines[len(c.Lines)-len(damaged):], "; ") + ")"}
	}
	if repair {
		aside := dir + ".damaged"
		if err := os.MkdirAll(aside, 0o700); err != nil {
			return &DamageError{Path: damaged[0], Problem: err.Error()}
		}
		for _, d := range damaged {
			to := filepath.Join(aside, filepath.Base(d))
			if err := os.Rename(d, to); err != nil {
				return &DamageError{Path: d, Problem: "damaged, and could not be moved aside: " + err.Error()}
			}
			c.MovedAside = append(c.MovedAside, to)
		}
	}
	return nil
}

// checkSnapshot reads a snapshot's meta.json and checks state.bin against
// its size and CRC, as raft's file snapshot store wrote them.
func checkSnapshot(path string) (*raft.SnapshotMeta, error) {
	b, err := os.ReadFile(filepath.Join(path, "meta.json"))
	if err != nil {
		return nil, err
	}
	var meta struct {
		raft.SnapshotMeta
		CRC []byte
	}
	if err := json.Unmarshal(b, &meta); err != nil {
		return nil, fmt.Errorf("meta.json: %v", err)
	}
	f, err := os.Open(filepath.Join(path, "state.bin"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := crc64.New(crc64.MakeTable(crc64.ECMA))
	n, err := io.Copy(h, f)
	if err != nil {
		return nil, fmt.Errorf("state.bin: %v", err)
	}
	if n != meta.Size {
		return nil, fmt.Errorf("state.bin is %d bytes, its meta says %d", n, meta.Size)
	}
	if sum := h.Sum(nil); string(sum) != string(meta.CRC) {
		return nil, errors.New("state.bin CRC mismatch")
	}
	return &meta.SnapshotMeta, nil
}

// VerifyDataDir is CheckDataDir without repairs, and it also decodes the
// newest good snapshot with this build (its format version, its tokens
// and pools): the offline check `caddy quota verify` runs.
func VerifyDataDir(dir string) (*DataDirCheck, error) {
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return &DataDirCheck{}, fmt.Errorf("%s is not a directory", dir)
	}
	c, err := CheckDataDir(dir, false)
	if err != nil {
		return c, err
	}
	if b, err := os.ReadFile(filepath.Join(dir, "node-id")); err == nil {
		c.say("node id: %s", strings.TrimSpace(string(b)))
	}
	snaps := filepath.Join(dir, "snapshots", "snapshots")
	entries, _ := os.ReadDir(snaps)
	for i := len(entries) - 1; i >= 0; i-- {
		path := filepath.Join(snaps, entries[i].Name())
		if _, err := checkSnapshot(path); err != nil {
			continue
		}
		f, err := os.Open(filepath.Join(path, "state.bin"))
		if err != nil {
			return c, &DamageError{Path: path, Problem: err.Error()}
		}
		var version [4]byte
		io.ReadFull(f, version[:])
		f.Seek(0, io.SeekStart)
		m, err := state.ReadSnapshot(f)
		f.Close()
		if err != nil {
			return c, &DamageError{Path: filepath.Join(path, "state.bin"), Problem: err.Error()}
		}
		n := m.Counts()
		c.say("%s: snapshot format %d, %d tokens, %d pools, %d request ids, %d open uploads", path, version[3], n.Tokens, n.Pools, n.RequestIDs, n.Uploads)
		break
	}
	return c, nil
}
