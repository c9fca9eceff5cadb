// Package watchdog keeps one Bolt daemon alive per application folder and environment, and
// prepares an application folder for it (bolt setup).
//
// A watchdog run, meant for cron every minute, looks at the daemon lock: when a daemon holds
// it and its heartbeat is fresh, the run ends at once. When no daemon holds it, the run starts
// one, detached in a new session, and waits until it has registered. When the heartbeat is
// older than the kill threshold, the daemon is stuck: the run kills its process group and the
// groups of its tasks, then starts a new daemon, which recovers the killed daemon's tasks.
package watchdog

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/bolt-runner/bolt/lifecycle"
)

// Action is the step a watchdog run took.
type Action string

// The actions of a watchdog run.
const (
	Alive    Action = "alive"    // a healthy daemon was running; nothing was done
	Started  Action = "started"  // no daemon was running; one was started
	Replaced Action = "replaced" // a stuck daemon was killed and a new one started
)

// Outcome describes a watchdog run.
type Outcome struct {
	Action Action
	PID    int // the running or started daemon

	// OldPID and Reason describe the stuck daemon a Replaced run killed.
	OldPID int
	Reason string
}

// Config holds the files, thresholds and daemon command of a watchdog run.
type Config struct {
	AppDir string
	Files  lifecycle.Files

	// Heartbeat is the daemon's heartbeat file. A daemon whose heartbeat is older than
	// KillAfter is stuck.
	Heartbeat string
	KillAfter time.Duration

	// StartTimeout bounds the wait for a started daemon to write its pid file.
	StartTimeout time.Duration

	// Command is the daemon's program and arguments, Env its environment. Its stdout and
	// stderr are appended to LogFile.
	Command []string
	Env     []string
	LogFile string

	Logger zerolog.Logger
}

// killWait bounds the wait for a killed daemon to release its lock.
const killWait = 10 * time.Second

// Run checks for a daemon and starts one when none is alive. Concurrent runs for the same
// files start at most one daemon: each run holds the watchdog lock while it checks and starts.
func Run(ctx context.Context, cfg Config) (Outcome, error) {
	log := cfg.Logger.With().Str("component", "watchdog").Logger()
	// A run may wait for another one that is starting a daemon.
	lock, err := lifecycle.AcquireWatchdogLock(cfg.Files, cfg.StartTimeout+killWait+5*time.Second)
	if err != nil {
		return Outcome{}, err
	}
	defer lock.Release()

	held, pid, err := lifecycle.Probe(cfg.Files)
	if err != nil {
		return Outcome{}, err
	}
	if held && pid > 0 && exiting(pid) {
		// The daemon's main thread has exited, and the kernel releases the lock once its
		// other threads have too, a moment later.
		log.Info().Int("pid", pid).Msg("watchdog: daemon is exiting, waiting for it to release its lock")
		if err := waitReleased(ctx, cfg, pid); err != nil {
			return Outcome{}, err
		}
		held = false
	}

	var out Outcome
	if held {
		age := heartbeatAge(cfg, time.Now())
		if age <= cfg.KillAfter {
			return Outcome{Action: Alive, PID: pid}, nil
		}
		out = Outcome{Action: Replaced, OldPID: pid,
			Reason: fmt.Sprintf("heartbeat %s is %s old, more than the kill threshold %s", cfg.Heartbeat, age.Round(time.Second), cfg.KillAfter)}
		if err := replace(ctx, cfg, pid, out.Reason, log); err != nil {
			return Outcome{}, err
		}
	} else {
		log.Info().Str("lock", cfg.Files.DaemonLock).Msg("watchdog: no daemon holds the lock")
		out.Action = Started
	}

	out.PID, err = start(ctx, cfg, log)
	if err != nil {
		return Outcome{}, err
	}
	return out, nil
}

// heartbeatAge returns the age of the daemon's heartbeat. The daemon touches the heartbeat
// right after it writes the daemon lock file, so a missing heartbeat (removed by hand, or a
// changed heartbeat_dir) is as old as the lock file.
func heartbeatAge(cfg Config, now time.Time) time.Duration {
	for _, path := range []string{cfg.Heartbeat, cfg.Files.DaemonLock} {
		if info, err := os.Stat(path); err == nil {
			return now.Sub(info.ModTime())
		}
	}
	return 0
}

// replace kills the stuck daemon pid and waits until its lock is free.
func replace(ctx context.Context, cfg Config, pid int, reason string, log zerolog.Logger) error {
	// The pid comes from the lock file; only a process that has the lock file open is the daemon.
	if pid == 0 || !lifecycle.HoldsFile(pid, cfg.Files.DaemonLock) {
		return fmt.Errorf("the daemon is stuck (%s), but the process holding %s cannot be identified, so it was not killed; "+
			"find it with fuser %s and kill it", reason, cfg.Files.DaemonLock, cfg.Files.DaemonLock)
	}
	log.Warn().Int("pid", pid).Str("reason", reason).Msg("watchdog: daemon is stuck, killing its process group and its tasks")
	groups, err := killDaemon(pid)
	if err != nil {
		return fmt.Errorf("killing stuck daemon %d: %w", pid, err)
	}
	log.Info().Int("pid", pid).Ints("process_groups", groups).Msg("watchdog: stuck daemon killed")
	return waitReleased(ctx, cfg, pid)
}

// waitReleased waits until no process holds the daemon lock, for at most killWait.
func waitReleased(ctx context.Context, cfg Config, pid int) error {
	deadline := time.Now().Add(killWait)
	for {
		held, _, err := lifecycle.Probe(cfg.Files)
		if err != nil {
			return err
		}
		if !held {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s waiting for daemon %d to release %s; check whether it is stuck in the kernel (ps -o stat %d)",
				killWait, pid, cfg.Files.DaemonLock, pid)
		}
		if !sleep(ctx, 50*time.Millisecond) {
			return ctx.Err()
		}
	}
}

// start starts the daemon in a new session and waits until it writes its pid file.
func start(ctx context.Context, cfg Config, log zerolog.Logger) (int, error) {
	if err := os.MkdirAll(filepath.Dir(cfg.LogFile), 0o755); err != nil {
		return 0, fmt.Errorf("creating log folder: %w", err)
	}
	logFile, err := os.OpenFile(cfg.LogFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return 0, fmt.Errorf("opening log file: %w", err)
	}
	// Not exec.CommandContext: the daemon must outlive this run.
	cmd := exec.Command(cfg.Command[0], cfg.Command[1:]...)
	cmd.Dir = cfg.AppDir
	cmd.Env = cfg.Env
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// A new session detaches the daemon from cron's or the terminal's process group and
	// makes it the leader of its own group. Stdin stays nil, which is /dev/null.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	_ = logFile.Close()
	if err != nil {
		return 0, fmt.Errorf("starting %s: %w", cfg.Command[0], err)
	}
	pid := cmd.Process.Pid
	// The arguments may hold a secret such as a MongoDB URI, so only the binary is logged.
	log.Info().Int("pid", pid).Str("binary", cfg.Command[0]).Msg("watchdog: starting daemon")

	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	deadline := time.NewTimer(cfg.StartTimeout)
	defer deadline.Stop()
	poll := time.NewTicker(50 * time.Millisecond)
	defer poll.Stop()
	for {
		select {
		case err := <-exited:
			log.Error().Err(err).Int("pid", pid).Msg("watchdog: daemon exited during start")
			return 0, fmt.Errorf("the daemon (pid %d) exited during start (%v); the last lines of %s:\n%s",
				pid, exitDescription(err), cfg.LogFile, tail(cfg.LogFile, 15))
		case <-deadline.C:
			log.Error().Int("pid", pid).Dur("start_timeout", cfg.StartTimeout).Msg("watchdog: daemon did not register in time")
			return 0, fmt.Errorf("the daemon (pid %d) did not register within %s (setting start_timeout); it may still be starting, see %s",
				pid, cfg.StartTimeout, cfg.LogFile)
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-poll.C:
			if lifecycle.ReadPID(cfg.Files.PidFile) == pid {
				log.Info().Int("pid", pid).Msg("watchdog: daemon is up")
				return pid, nil
			}
		}
	}
}

func exitDescription(err error) string {
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		return exitErr.ProcessState.String()
	}
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// tail returns the last n lines of a file, at most its last 16 KiB, for error messages that
// cron mails.
func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	defer f.Close()
	const maxBytes = 16 << 10
	buf := make([]byte, maxBytes)
	offset := int64(0)
	if info, err := f.Stat(); err == nil && info.Size() > maxBytes {
		offset = info.Size() - maxBytes
	}
	read, _ := f.ReadAt(buf, offset)
	lines := strings.Split(strings.TrimRight(string(buf[:read]), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// sleep waits for d or until ctx is done; it returns false in the second case.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
