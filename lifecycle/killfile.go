package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/rs/zerolog"
)

// PollInterval is the minimum time between two checks of the kill files by Poll.
const PollInterval = time.Second

// KillWatcher calls its callback once when a kill file is created or modified after the
// watcher was made. A kill file that already existed then is a change only once its
// modification time, inode or size changes, so the file a deploy left behind for the previous
// daemon does not stop the next one. Removing a kill file is not a change.
//
// Run gets fsnotify events from the files' folders for a prompt stop. Poll compares the
// files' state as well, for filesystems without inotify (some network filesystems).
type KillWatcher struct {
	paths    []string
	baseline map[string]fileState
	onChange func(path string)
	log      zerolog.Logger

	mu       sync.Mutex
	fired    string // the kill file that changed first
	lastPoll time.Time
	failing  map[string]bool // kill files whose last stat failed, so the failure is logged once

	// watching, when set, is closed once Run has added its watches; tests wait on it.
	watching chan struct{}
}

type fileState struct {
	exists  bool
	modTime time.Time
	inode   uint64
	size    int64
}

// NewKillWatcher creates the kill files' folders and records the files' current state.
// onChange is called at most once, from Run's or Poll's goroutine, with the changed file.
func NewKillWatcher(paths []string, onChange func(path string), log zerolog.Logger) (*KillWatcher, error) {
	w := &KillWatcher{paths: paths, baseline: map[string]fileState{}, onChange: onChange, log: log, failing: map[string]bool{}}
	for _, p := range paths {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return nil, fmt.Errorf("creating kill file folder: %w", err)
		}
		state, err := stat(p)
		if err != nil {
			return nil, fmt.Errorf("reading kill file: %w", err)
		}
		w.baseline[p] = state
	}
	return w, nil
}

// Run checks the kill files on every fsnotify event in their folders until ctx is done. When
// inotify is not available it logs a warning and returns, leaving the work to Poll.
func (w *KillWatcher) Run(ctx context.Context) {
	if len(w.paths) == 0 {
		return
	}
	watcher, err := fsnotify.NewWatcher()
	if err != nil {
		w.log.Warn().Err(err).Msg("kill files: no file notifications, checking on each loop turn instead")
		return
	}
	defer watcher.Close()

	watched := map[string]bool{}
	for _, p := range w.paths {
		dir := filepath.Dir(p)
		if watched[dir] {
			continue
		}
		if err := watcher.Add(dir); err != nil {
			w.log.Warn().Err(err).Str("path", dir).Msg("kill files: cannot watch folder, checking on each loop turn instead")
			continue
		}
		watched[dir] = true
	}
	// A change between NewKillWatcher and the watch is seen by this check.
	w.Check()
	if w.watching != nil {
		close(w.watching)
	}

	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-watcher.Events:
			if !ok {
				return
			}
			if w.isKillFile(ev.Name) {
				w.Check()
			}
		case err, ok := <-watcher.Errors:
			if !ok {
				return
			}
			// An overflow may hide an event, so look at the files themselves.
			w.log.Warn().Err(err).Msg("kill files: file notification error")
			w.Check()
		}
	}
}

func (w *KillWatcher) isKillFile(name string) bool {
	for _, p := range w.paths {
		if filepath.Clean(name) == filepath.Clean(p) {
			return true
		}
	}
	return false
}

// Poll calls Check unless the last Poll was less than PollInterval ago. The daemon calls it on
// every loop turn.
func (w *KillWatcher) Poll() bool {
	w.mu.Lock()
	now := time.Now()
	due := now.Sub(w.lastPoll) >= PollInterval
	if due {
		w.lastPoll = now
	}
	w.mu.Unlock()
	if !due {
		return false
	}
	return w.Check()
}

// Check compares each kill file with its state at start and calls the callback on the first
// change. It returns whether a kill file has changed, now or before.
func (w *KillWatcher) Check() bool {
	path, first := w.findChange()
	if first {
		// Called without the lock, so the callback may use the watcher.
		w.onChange(path)
	}
	return path != ""
}

// findChange returns the changed kill file, or "" when none has changed, and whether this is
// the first time a change was found.
func (w *KillWatcher) findChange() (string, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fired != "" {
		return w.fired, false
	}
	for _, p := range w.paths {
		now, err := stat(p)
		if err != nil {
			if !w.failing[p] {
				w.log.Warn().Err(err).Str("path", p).Msg("kill files: reading kill file failed")
				w.failing[p] = true
			}
			continue
		}
		w.failing[p] = false
		if changed(w.baseline[p], now) {
			w.fired = p
			return p, true
		}
	}
	return "", false
}

func changed(before, now fileState) bool {
	if !now.exists {
		return false
	}
	if !before.exists {
		return true
	}
	return !now.modTime.Equal(before.modTime) || now.inode != before.inode || now.size != before.size
}

func stat(path string) (fileState, error) {
	info, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return fileState{}, nil
	}
	if err != nil {
		return fileState{}, err
	}
	state := fileState{exists: true, modTime: info.ModTime(), size: info.Size()}
	if sys, ok := info.Sys().(*syscall.Stat_t); ok {
		state.inode = sys.Ino
	}
	return state, nil
}
