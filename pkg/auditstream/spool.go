package auditstream

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// A spool is a directory of append-only segment files, each holding one
// JSON event per line, named by a 20-digit, zero-padded, increasing number
// (00000000000000000001.jsonl). New events go to the active segment; the
// drainer takes the oldest closed segment, publishes its lines in order and
// removes the file. The total size of all segments is bounded by max.
//
// Durability: each line is written with one write(2) to a file opened with
// O_APPEND, so a process crash loses nothing that was spooled. fsync(2)
// runs at most once a second while events are appended, on every segment
// switch (with the directory), and from sync (Flush, Close and the
// drainer's idle tick), so a power failure loses at most about a second of
// spooled events. A line torn by a crash is detected when drained and
// counted as dropped.
type spool struct {
	dir    string
	max    int64
	segMax int64
	lock   *os.File
	notify chan struct{} // signalled (never blocking) after each append

	mu       sync.Mutex
	active   *os.File
	activeN  uint64
	activeSz int64
	closed   []segment // oldest first; no longer written
	next     uint64
	bytes    int64
	dirty    bool
	lastSync time.Time
	isClosed bool
}

type segment struct {
	n    uint64
	size int64
}

const segSuffix = ".jsonl"

// openSpool opens or creates the spool in dir, locks it and picks up the
// segments an earlier process left.
func openSpool(dir string, maxBytes int64) (*spool, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create spool dir: %w", err)
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	s := &spool{dir: dir, max: maxBytes, segMax: min(max(maxBytes/8, 512), 1<<20), lock: lock, notify: make(chan struct{}, 1), next: 1}
	entries, err := os.ReadDir(dir)
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("read spool dir: %w", err)
	}
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), segSuffix)
		if !ok || len(name) != 20 || !e.Type().IsRegular() {
			continue
		}
		n, err := strconv.ParseUint(name, 10, 64)
		if err != nil {
			continue
		}
		info, err := e.Info()
		if err != nil {
			lock.Close()
			return nil, fmt.Errorf("stat spool segment: %w", err)
		}
		s.closed = append(s.closed, segment{n: n, size: info.Size()})
		s.bytes += info.Size()
	}
	slices.SortFunc(s.closed, func(a, b segment) int { return cmpUint(a.n, b.n) })
	if len(s.closed) > 0 {
		s.next = s.closed[len(s.closed)-1].n + 1
	}
	return s, nil
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (s *spool) path(n uint64) string {
	return filepath.Join(s.dir, fmt.Sprintf("%020d%s", n, segSuffix))
}

// append writes line and a newline. It returns ErrSpoolFull when the line
// does not fit, ErrClosed after close, or the file error.
func (s *spool) append(line []byte) error {
	buf := make([]byte, len(line)+1)
	copy(buf, line)
	buf[len(line)] = '\n'
	n := int64(len(buf))

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.isClosed {
		return ErrClosed
	}
	if s.bytes+n > s.max {
		return fmt.Errorf("%w: %d of %d bytes used, event needs %d", ErrSpoolFull, s.bytes, s.max, n)
	}
	if s.active != nil && s.activeSz > 0 && s.activeSz+n > s.segMax {
		if err := s.rotateLocked(); err != nil {
			return err
		}
	}
	if s.active == nil {
		if err := s.openActiveLocked(); err != nil {
			return err
		}
	}
	w, err := s.active.Write(buf)
	s.activeSz += int64(w)
	s.bytes += int64(w)
	if err != nil {
		// A partial line may be on disk: start a fresh segment next time so
		// that the torn line stays the last of its file.
		_ = s.rotateLocked()
		return fmt.Errorf("spool write: %w", err)
	}
	s.dirty = true
	if time.Since(s.lastSync) >= time.Second {
		s.syncLocked()
	}
	select {
	case s.notify <- struct{}{}:
	default:
	}
	return nil
}

func (s *spool) openActiveLocked() error {
	n := s.next
	f, err := os.OpenFile(s.path(n), os.O_CREATE|os.O_EXCL|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("create spool segment: %w", err)
	}
	s.next++
	s.active, s.activeN, s.activeSz = f, n, 0
	syncDir(s.dir)
	return nil
}

// rotateLocked closes the active segment and hands it to the drainer.
func (s *spool) rotateLocked() error {
	if s.active == nil {
		return nil
	}
	err := s.active.Sync()
	if cerr := s.active.Close(); err == nil {
		err = cerr
	}
	s.closed = append(s.closed, segment{n: s.activeN, size: s.activeSz})
	s.active = nil
	s.dirty = false
	s.lastSync = time.Now()
	if err != nil {
		return fmt.Errorf("close spool segment: %w", err)
	}
	return nil
}

func (s *spool) syncLocked() error {
	s.lastSync = time.Now()
	if !s.dirty || s.active == nil {
		return nil
	}
	s.dirty = false
	if err := s.active.Sync(); err != nil {
		return fmt.Errorf("sync spool: %w", err)
	}
	return nil
}

// sync flushes what was appended to stable storage.
func (s *spool) sync() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.isClosed {
		return nil
	}
	return s.syncLocked()
}

// oldest returns the oldest segment that is no longer written, closing the
// active segment first when it is the only one holding events.
func (s *spool) oldest() (segment, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.isClosed {
		return segment{}, false, ErrClosed
	}
	if len(s.closed) == 0 && s.active != nil && s.activeSz > 0 {
		if err := s.rotateLocked(); err != nil {
			return segment{}, false, err
		}
	}
	if len(s.closed) == 0 {
		return segment{}, false, nil
	}
	return s.closed[0], true, nil
}

// remove deletes seg, which oldest returned, once it is drained.
func (s *spool) remove(seg segment) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.isClosed {
		return ErrClosed
	}
	if len(s.closed) == 0 || s.closed[0].n != seg.n {
		return fmt.Errorf("spool: segment %d is not the oldest", seg.n)
	}
	if err := os.Remove(s.path(seg.n)); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("remove spool segment: %w", err)
	}
	s.closed = s.closed[1:]
	s.bytes -= seg.size
	return nil
}

// size returns the bytes spooled and not yet removed.
func (s *spool) size() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bytes
}

// close syncs and closes the active segment and releases the directory.
func (s *spool) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.isClosed {
		return nil
	}
	s.isClosed = true
	var err error
	if s.active != nil {
		err = s.active.Sync()
		if cerr := s.active.Close(); err == nil {
			err = cerr
		}
		s.active = nil
	}
	if cerr := s.lock.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("close spool: %w", err)
	}
	return nil
}

// syncDir makes a new file's directory entry durable; best effort.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}
