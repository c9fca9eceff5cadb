package lifecycle

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// syncBuffer is a log destination safe for the watcher's goroutine and the test.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func modTime(t *testing.T, path string) time.Time {
	t.Helper()
	info, err := os.Stat(path)
	require.NoError(t, err)
	return info.ModTime()
}

func TestHeartbeatTouchCreatesFileAndFolder(t *testing.T) {
	path := filepath.Join(t.TempDir(), "flagella", "timestamps", "bolt__60__300")
	h, err := NewHeartbeat(path, zerolog.Nop())
	require.NoError(t, err)
	require.NoFileExists(t, path, "NewHeartbeat must not touch the file")

	before := time.Now().Add(-time.Second)
	h.Touch()
	require.FileExists(t, path)
	require.True(t, modTime(t, path).After(before))
	require.Equal(t, path, h.Path())
}

func TestHeartbeatTouchIsThrottled(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bolt__60__300")
	h, err := NewHeartbeat(path, zerolog.Nop())
	require.NoError(t, err)
	clock := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	h.now = func() time.Time { return clock }

	h.Touch()
	require.True(t, modTime(t, path).Equal(clock))

	clock = clock.Add(TouchInterval / 2)
	h.Touch()
	require.True(t, modTime(t, path).Equal(clock.Add(-TouchInterval/2)), "a touch within TouchInterval must be skipped")

	clock = clock.Add(TouchInterval / 2)
	h.Touch()
	require.True(t, modTime(t, path).Equal(clock))

	age, err := Age(path, clock.Add(90*time.Second))
	require.NoError(t, err)
	require.Equal(t, 90*time.Second, age)
}

func TestHeartbeatRecreatesRemovedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bolt__60__300")
	h, err := NewHeartbeat(path, zerolog.Nop())
	require.NoError(t, err)
	clock := time.Now()
	h.now = func() time.Time { return clock }
	h.Touch()
	require.NoError(t, os.Remove(path))

	clock = clock.Add(TouchInterval)
	h.Touch()
	require.FileExists(t, path)
}

func TestHeartbeatFailureLoggedOnce(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "timestamps")
	path := filepath.Join(dir, "bolt__60__300")
	var logs syncBuffer
	h, err := NewHeartbeat(path, zerolog.New(&logs))
	require.NoError(t, err)
	clock := time.Now()
	h.now = func() time.Time { return clock }

	// A file in place of the folder makes every touch fail, even for root.
	require.NoError(t, os.Remove(dir))
	require.NoError(t, os.WriteFile(dir, nil, 0o644))
	for range 3 {
		clock = clock.Add(TouchInterval)
		h.Touch()
	}
	require.Equal(t, 1, strings.Count(logs.String(), "updating the heartbeat file failed"), logs.String())

	require.NoError(t, os.Remove(dir))
	require.NoError(t, os.Mkdir(dir, 0o755))
	clock = clock.Add(TouchInterval)
	h.Touch()
	require.FileExists(t, path)
	require.Contains(t, logs.String(), "works again")
}

// killRecorder counts the watcher's callbacks.
type killRecorder struct {
	mu    sync.Mutex
	paths []string
	fired chan struct{}
}

func newKillRecorder() *killRecorder { return &killRecorder{fired: make(chan struct{}, 10)} }

func (r *killRecorder) record(path string) {
	r.mu.Lock()
	r.paths = append(r.paths, path)
	r.mu.Unlock()
	r.fired <- struct{}{}
}

func (r *killRecorder) calls() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.paths...)
}

func TestKillWatcherIgnoresFileFromBeforeStart(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "tmp", "kill.bolt")
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	require.NoError(t, os.WriteFile(path, nil, 0o644))
	rec := newKillRecorder()

	w, err := NewKillWatcher([]string{path}, rec.record, zerolog.Nop())
	require.NoError(t, err)
	require.False(t, w.Check(), "a kill file present at start must not stop Bolt")
	require.Empty(t, rec.calls())

	// touch: only the modification time changes.
	later := time.Now().Add(2 * time.Second)
	require.NoError(t, os.Chtimes(path, later, later))
	require.True(t, w.Check())
	require.Equal(t, []string{path}, rec.calls())
}

func TestKillWatcherCreatedFileCounts(t *testing.T) {
	dir := t.TempDir()
	flagella := filepath.Join(dir, "tmp", "kill.flagella")
	bolt := filepath.Join(dir, "tmp", "kill.bolt")
	rec := newKillRecorder()

	w, err := NewKillWatcher([]string{flagella, bolt}, rec.record, zerolog.Nop())
	require.NoError(t, err)
	require.DirExists(t, filepath.Join(dir, "tmp"), "the watcher creates the kill files' folder")
	require.False(t, w.Check())

	require.NoError(t, os.WriteFile(bolt, nil, 0o644))
	require.True(t, w.Check())
	require.NoError(t, os.WriteFile(flagella, nil, 0o644))
	require.True(t, w.Check())
	require.Equal(t, []string{bolt}, rec.calls(), "the callback runs once, for the first change")
}

func TestKillWatcherRemovalIsNoChange(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kill.bolt")
	require.NoError(t, os.WriteFile(path, nil, 0o644))
	rec := newKillRecorder()
	w, err := NewKillWatcher([]string{path}, rec.record, zerolog.Nop())
	require.NoError(t, err)

	require.NoError(t, os.Remove(path))
	require.False(t, w.Check())

	// Creating it again is a change: a new inode, or at least a new modification time.
	require.NoError(t, os.WriteFile(path, []byte("x"), 0o644))
	require.True(t, w.Check())
}

func TestKillWatcherPollIsThrottled(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kill.bolt")
	rec := newKillRecorder()
	w, err := NewKillWatcher([]string{path}, rec.record, zerolog.Nop())
	require.NoError(t, err)

	require.False(t, w.Poll())
	require.NoError(t, os.WriteFile(path, nil, 0o644))
	require.False(t, w.Poll(), "a second poll within PollInterval must not look at the files")
	w.lastPoll = time.Now().Add(-PollInterval)
	require.True(t, w.Poll())
}

func TestKillWatcherRunNoticesTouch(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "tmp", "kill.flagella")
	rec := newKillRecorder()
	w, err := NewKillWatcher([]string{path}, rec.record, zerolog.Nop())
	require.NoError(t, err)

	w.watching = make(chan struct{})

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.Run(ctx)
	}()
	defer func() {
		cancel()
		<-done
	}()
	select {
	case <-w.watching:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not add its watches within 10s")
	}
	require.Empty(t, rec.calls())

	// Nobody calls Poll or Check here, so only a file notification can fire the callback.
	require.NoError(t, os.WriteFile(path, nil, 0o644))
	select {
	case <-rec.fired:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not report the created kill file within 10s")
	}
	require.Equal(t, []string{path}, rec.calls())
}
