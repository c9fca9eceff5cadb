// Package lifecycle manages the files around a Bolt daemon's life: the heartbeat file that a
// monitor and bolt watchdog read, the kill files that a deploy touches to restart Bolt, and the
// lock and pid files that keep one daemon per application folder and environment.
package lifecycle

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// TouchInterval is the minimum time between two updates of the heartbeat file, so a busy
// loop does not write to the disk on every turn.
const TouchInterval = time.Second

// Heartbeat is a file whose modification time the daemon sets to now on every turn of its
// loop. A monitor warns when the file grows old, and bolt watchdog kills the daemon when it
// grows older than the kill threshold.
type Heartbeat struct {
	path string
	log  zerolog.Logger
	now  func() time.Time

	mu      sync.Mutex
	last    time.Time
	failing bool
}

// NewHeartbeat creates the heartbeat's folder and returns a heartbeat for path. It does not
// touch the file yet.
func NewHeartbeat(path string, log zerolog.Logger) (*Heartbeat, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("creating heartbeat folder: %w", err)
	}
	return &Heartbeat{path: path, log: log, now: time.Now}, nil
}

// Path returns the heartbeat file.
func (h *Heartbeat) Path() string { return h.path }

// Touch sets the file's modification time to now, creating the file if it is missing. It
// does nothing when the last update is less than TouchInterval old. A failure is logged when
// it starts and when it ends, not on every turn.
func (h *Heartbeat) Touch() {
	h.mu.Lock()
	defer h.mu.Unlock()

	now := h.now()
	if !h.last.IsZero() && now.Sub(h.last) < TouchInterval {
		return
	}
	err := touch(h.path, now)
	switch {
	case err != nil && !h.failing:
		h.log.Error().Err(err).Str("path", h.path).Msg("heartbeat: updating the heartbeat file failed; monitors and bolt watchdog will judge Bolt stuck")
		h.failing = true
	case err == nil && h.failing:
		h.log.Info().Str("path", h.path).Msg("heartbeat: updating the heartbeat file works again")
		h.failing = false
	}
	if err == nil {
		h.last = now
	}
}

func touch(path string, now time.Time) error {
	err := os.Chtimes(path, now, now)
	if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Chtimes(path, now, now)
}

// Age returns how long ago the heartbeat file at path was last updated.
func Age(path string, now time.Time) (time.Duration, error) {
	info, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	return now.Sub(info.ModTime()), nil
}
