package auditstream

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// A spool is a directory of append-only segment files, each holding one
// JSON event per line, named by a 20-digit, zero-padded, increasing number
// (00000000000000000001.jsonl). New events go to the active segment; the
// drainer takes the oldest closed segment, publishes its lines in order and
// removes the file. The total size of all segments is bounded by max.
//
// Durability: each line is written with one write(2) to a file opened with
// O_APPEND, so a process crash loses nothing that was spooled. appendBatch
// returns the syncBatch the line belongs to; commit waits until an fsync(2)
// that covers the batch has run and returns its error. Concurrent commits
// share one fsync (group commit): the first caller syncs everything
// appended so far, later callers whose lines it covered return with its
// result. A segment switch also syncs the segment (and a new segment's
// directory entry), and sync syncs whatever was appended (Flush, Close and
// the drainer's tick). A failed fsync fails the batch it covered, is
// reported to onSyncErr, and is never taken back by a later successful one.
// A line torn by a crash is detected when drained and counted as dropped.
type spool struct {
	dir       string
	max       int64
	segMax    int64
	lock      *os.File
	notify    chan struct{} // signalled (never blocking) after each append
	onSyncErr func(error)   // called for every failed fsync; set before use
	syncMu    sync.Mutex    // held by the one goroutine running a batch's fsync
	mu        sync.Mutex    // guards what follows; never held while taking syncMu
	active    *os.File
	activeN   uint64
	activeSz  int64
	closed    []segment // oldest first; no longer written
	next      uint64
	bytes     int64
	batch     *syncBatch // the lines appended since the last fsync started
	syncing   *os.File   // the file an fsync outside mu is running on
	closeLate *os.File   // rotated while syncing: closed when that fsync ends
	isClosed  bool
}

// A syncBatch is the lines appended between two fsyncs of the active
// segment. done is closed once an fsync covered them; err is its result.
type syncBatch struct {
	done chan struct{}
	err  error
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
	s := &spool{dir: dir, max: maxBytes, segMax: min(max(maxBytes/8, 512), 1<<20), lock: lock, notify: make(chan struct{}, 1), next: 1,
		onSyncErr: func(error) {}}
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

// append writes line and a newline, to be fsynced later. It returns
// ErrSpoolFull when the line does not fit, ErrClosed after close, or the
// file error.
func (s *spool) append(line []byte) error {
	_, err := s.appendBatch(line)
	return err
}

// appendBatch is append that also returns the batch the line belongs to:
// commit(b) makes it durable.
func (s *spool) appendBatch(line []byte) (*syncBatch, error) {
	buf := make([]byte, len(line)+1)
	copy(buf, line)
	buf[len(line)] = '\n'
	n := int64(len(buf))

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.isClosed {
		return nil, ErrClosed
	}
	if s.bytes+n > s.max {
		return nil, fmt.Errorf("%w: %d of %d bytes used, event needs %d", ErrSpoolFull, s.bytes, s.max, n)
	}
	if s.active != nil && s.activeSz > 0 && s.activeSz+n > s.segMax {
		s.rotateLocked()
	}
	if s.active == nil {
		if err := s.openActiveLocked(); err != nil {
			return nil, err
		}
	}
	w, err := s.active.Write(buf)
	s.activeSz += int64(w)
	s.bytes += int64(w)
	if err != nil {
		// A partial line may be on disk: start a fresh segment next time so
		// that the torn line stays the last of its file.
		s.rotateLocked()
		return nil, fmt.Errorf("spool write: %w", err)
	}
	if s.batch == nil {
		s.batch = &syncBatch{done: make(chan struct{})}
	}
	select {
	case s.notify <- struct{}{}:
	default:
	}
	return s.batch, nil
}

// openActiveLocked creates the next segment and makes its directory entry
// durable; it returns the file system error.
func (s *spool) openActiveLocked() error {
	n := s.next
	s.next++
	path := s.path(n)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("create spool segment: %w", err)
	}
	if err := syncDir(s.dir); err != nil {
		f.Close()
		_ = os.Remove(path)
		err = fmt.Errorf("sync spool dir: %w", err)
		s.onSyncErr(err)
		return err
	}
	s.active, s.activeN, s.activeSz = f, n, 0
	return nil
}

// rotateLocked syncs and closes the active segment, completes the pending
// batch with the sync's result, and hands the segment to the drainer. A
// failed sync or close is reported to onSyncErr; the segment's lines stay
// on disk and are drained like the others.
func (s *spool) rotateLocked() {
	if s.active == nil {
		return
	}
	err := s.active.Sync()
	if err != nil {
		err = fmt.Errorf("sync spool segment: %w", err)
	}
	if s.syncing == s.active {
		s.closeLate = s.active // an fsync outside mu still uses it
	} else if cerr := s.active.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("close spool segment: %w", cerr)
	}
	s.finishLocked(err)
	s.closed = append(s.closed, segment{n: s.activeN, size: s.activeSz})
	s.active = nil
}

// finishLocked completes the pending batch with err.
func (s *spool) finishLocked(err error) {
	if err != nil {
		s.onSyncErr(err)
	}
	if b := s.batch; b != nil {
		s.batch = nil
		b.err = err
		close(b.done)
	}
}

// commit waits until an fsync covered b and returns that fsync's error. If
// no fsync is running it runs one for b and every line appended before it
// starts; otherwise it waits for the running one and then, if b was not
// covered, runs the next.
func (s *spool) commit(b *syncBatch) error {
	select {
	case <-b.done:
		return b.err
	default:
	}
	s.syncMu.Lock()
	defer s.syncMu.Unlock()
	select {
	case <-b.done:
		return b.err
	default:
	}
	s.syncPending()
	<-b.done // the pending batch was b: batches are synced in order
	return b.err
}

// syncPending fsyncs the active segment for the pending batch, outside mu
// so that appends go on meanwhile. Called with syncMu held.
func (s *spool) syncPending() {
	s.mu.Lock()
	b, f := s.batch, s.active
	if b == nil {
		s.mu.Unlock()
		return
	}
	if f == nil { // cannot happen: rotation and close complete the batch
		s.finishLocked(nil)
		s.mu.Unlock()
		return
	}
	s.batch = nil // lines appended from now on wait for the next fsync
	s.syncing = f
	s.mu.Unlock()

	err := f.Sync()

	s.mu.Lock()
	s.syncing = nil
	if s.closeLate == f {
		s.closeLate = nil
		_ = f.Close() // rotation synced it too and reported its own result
	}
	if err != nil {
		err = fmt.Errorf("sync spool: %w", err)
		s.onSyncErr(err)
	}
	s.mu.Unlock()
	b.err = err
	close(b.done)
}

// sync makes everything appended so far durable and returns the fsync's
// error (nil when nothing was pending or the spool is closed).
func (s *spool) sync() error {
	s.mu.Lock()
	b := s.batch
	s.mu.Unlock()
	if b == nil {
		return nil
	}
	return s.commit(b)
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
		s.rotateLocked()
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

// closeActive closes the active segment, if it holds lines, and returns
// every segment that is no longer written, oldest first: the whole spool
// as it is now. Lines appended later go to a new segment.
func (s *spool) closeActive() ([]segment, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.isClosed {
		return nil, ErrClosed
	}
	if s.active != nil && s.activeSz > 0 {
		s.rotateLocked()
	}
	return slices.Clone(s.closed), nil
}

// close syncs and closes the active segment and releases the directory. It
// returns the sync's or the file system's error.
func (s *spool) close() error {
	s.syncMu.Lock() // no fsync runs outside mu from here on
	defer s.syncMu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.isClosed {
		return nil
	}
	s.isClosed = true
	var err error
	if s.active != nil {
		if err = s.active.Sync(); err != nil {
			err = fmt.Errorf("sync spool: %w", err)
		}
		if cerr := s.active.Close(); err == nil && cerr != nil {
			err = cerr
		}
		s.active = nil
	}
	s.finishLocked(err)
	if cerr := s.lock.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("close spool: %w", err)
	}
	return nil
}

// syncDir makes a new file's directory entry durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
