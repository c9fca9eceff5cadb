package lifecycle

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Files are the files in the application's tmp folder through which a daemon and bolt
// watchdog agree that at most one daemon runs per application folder and environment.
type Files struct {
	// DaemonLock is locked with flock by the daemon for its whole life and contains its pid.
	// The kernel releases the lock when the daemon dies, even by SIGKILL, so it never goes stale.
	DaemonLock string
	// PidFile contains the daemon's pid once the daemon has registered with the store.
	PidFile string
	// WatchdogLock is locked by a watchdog while it checks for a daemon and starts one.
	WatchdogLock string
}

// FilesFor returns the files for an application folder and environment.
func FilesFor(appDir, env string) Files {
	tmp := filepath.Join(appDir, "tmp")
	return Files{
		DaemonLock:   filepath.Join(tmp, "bolt."+env+".lock"),
		PidFile:      filepath.Join(tmp, "bolt."+env+".pid"),
		WatchdogLock: filepath.Join(tmp, "bolt."+env+".watchdog.lock"),
	}
}

// RunningError means another daemon holds the daemon lock.
type RunningError struct {
	PID      int // 0 when the holder has not written its pid yet
	LockFile string
}

func (e *RunningError) Error() string {
	holder := "another process"
	if e.PID > 0 {
		holder = "process " + strconv.Itoa(e.PID)
	}
	return fmt.Sprintf("another Bolt daemon is running for this application folder and environment (%s holds %s); "+
		"stop it first, or use another application folder or environment", holder, e.LockFile)
}

// lockPoll is the pause between two attempts to take a lock.
const lockPoll = 50 * time.Millisecond

// DaemonLock is the daemon lock held by this process.
type DaemonLock struct {
	files Files
	file  *os.File
}

// AcquireDaemonLock takes the daemon lock and writes this process's pid into it. It retries for
// up to wait, because bolt watchdog holds the lock for an instant when it checks for a daemon.
// It returns a *RunningError when another daemon holds the lock.
func AcquireDaemonLock(files Files, wait time.Duration) (*DaemonLock, error) {
	f, err := openLockFile(files.DaemonLock)
	if err != nil {
		return nil, err
	}
	if err := flockWithin(f, syscall.LOCK_EX, wait); err != nil {
		_ = f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, &RunningError{PID: ReadPID(files.DaemonLock), LockFile: files.DaemonLock}
		}
		return nil, fmt.Errorf("locking %s: %w", files.DaemonLock, err)
	}

	pid := []byte(strconv.Itoa(os.Getpid()) + "\n")
	if err := f.Truncate(0); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("writing pid to %s: %w", files.DaemonLock, err)
	}
	if _, err := f.WriteAt(pid, 0); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("writing pid to %s: %w", files.DaemonLock, err)
	}
	return &DaemonLock{files: files, file: f}, nil
}

// WritePidFile writes this process's pid to the pid file, the sign bolt watchdog waits for
// after it started a daemon. The file is replaced by a rename, so a reader never sees half of it.
func (l *DaemonLock) WritePidFile() error {
	tmp := l.files.PidFile + ".new"
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return fmt.Errorf("writing pid file: %w", err)
	}
	if err := os.Rename(tmp, l.files.PidFile); err != nil {
		return fmt.Errorf("writing pid file: %w", err)
	}
	return nil
}

// Release removes the pid file if it still names this process and releases the lock. The lock
// file itself stays: removing it would let a second daemon lock a new file while a first one
// still holds the old one.
func (l *DaemonLock) Release() {
	if ReadPID(l.files.PidFile) == os.Getpid() {
		_ = os.Remove(l.files.PidFile)
	}
	_ = l.file.Close()
}

// Probe reports whether a process holds the daemon lock and, when it has written it, its pid.
// It takes the lock for an instant when it is free.
func Probe(files Files) (held bool, pid int, err error) {
	f, err := os.Open(files.DaemonLock)
	if errors.Is(err, os.ErrNotExist) {
		return false, 0, nil
	}
	if err != nil {
		return false, 0, fmt.Errorf("opening daemon lock: %w", err)
	}
	defer f.Close()

	err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		return true, ReadPID(files.DaemonLock), nil
	}
	if err != nil {
		return false, 0, fmt.Errorf("checking daemon lock %s: %w", files.DaemonLock, err)
	}
	return false, 0, nil
}

// HoldsFile reports whether process pid has path open. A pid read from a lock file belongs to
// the lock's holder only if the process has the file open.
func HoldsFile(pid int, path string) bool {
	want, err := os.Stat(path)
	if err != nil {
		return false
	}
	fdDir := fmt.Sprintf("/proc/%d/fd", pid)
	entries, err := os.ReadDir(fdDir)
	if err != nil {
		return false
	}
	for _, e := range entries {
		// Stat follows the link to the open file itself, so a renamed path still matches.
		if info, err := os.Stat(filepath.Join(fdDir, e.Name())); err == nil && os.SameFile(info, want) {
			return true
		}
	}
	return false
}

// WatchdogLock is the short lock a watchdog holds while it checks and starts a daemon.
type WatchdogLock struct{ file *os.File }

// AcquireWatchdogLock takes the watchdog lock, waiting up to wait for another watchdog to
// release it.
func AcquireWatchdogLock(files Files, wait time.Duration) (*WatchdogLock, error) {
	f, err := openLockFile(files.WatchdogLock)
	if err != nil {
		return nil, err
	}
	if err := flockWithin(f, syscall.LOCK_EX, wait); err != nil {
		_ = f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("another bolt watchdog has held %s for more than %s; check for a hung watchdog process", files.WatchdogLock, wait)
		}
		return nil, fmt.Errorf("locking %s: %w", files.WatchdogLock, err)
	}
	return &WatchdogLock{file: f}, nil
}

// Release releases the watchdog lock.
func (l *WatchdogLock) Release() { _ = l.file.Close() }

func openLockFile(path string) (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("creating folder for %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening lock file: %w", err)
	}
	return f, nil
}

// flockWithin tries a non-blocking flock until it succeeds or wait has passed. It returns
// EWOULDBLOCK when the lock stayed held.
func flockWithin(f *os.File, how int, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		err := syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB)
		if !errors.Is(err, syscall.EWOULDBLOCK) || !time.Now().Before(deadline) {
			return err
		}
		time.Sleep(lockPoll)
	}
}

// ReadPID returns the pid in a pid or lock file, or 0 when the file is missing or holds none.
func ReadPID(path string) int {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 {
		return 0
	}
	return pid
}
