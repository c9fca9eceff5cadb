package watchdog

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/bolt-runner/bolt/lifecycle"
)

// helperEnv makes the test binary act as a daemon; its value is the behaviour.
const helperEnv = "WATCHDOG_TEST_HELPER"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(helperDaemon(mode))
	}
	os.Exit(m.Run())
}

// helperDaemon behaves like a Bolt daemon for the watchdog: it takes the daemon lock, touches
// the heartbeat and writes its pid file. With mode "task" it also starts a child in a process
// group of its own, as Bolt starts tasks. With "fail" it exits at once with status 3, and with
// "silent" it never writes its pid file.
func helperDaemon(mode string) int {
	dir, _ := os.Getwd()
	files := lifecycle.FilesFor(dir, "test")
	if mode == "fail" {
		fmt.Fprintln(os.Stderr, "helper: failing on purpose")
		return 3
	}

	lock, err := lifecycle.AcquireDaemonLock(files, time.Second)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer lock.Release()
	hb, err := lifecycle.NewHeartbeat(filepath.Join(dir, "heartbeat"), zerolog.Nop())
	if err != nil {
		return 1
	}
	hb.Touch()

	if mode == "task" {
		task := exec.Command("/bin/sh", "-c", `sleep 1000 & echo $! > grandchild.pid; echo $$ > task.pid; wait`)
		task.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := task.Start(); err != nil {
			return 1
		}
	}

	if mode != "silent" {
		if err := lock.WritePidFile(); err != nil {
			return 1
		}
	}
	time.Sleep(time.Hour)
	return 0
}

// testConfig returns a watchdog configuration whose daemon is this test binary in mode.
func testConfig(t *testing.T, mode string) Config {
	t.Helper()
	dir := t.TempDir()
	exe, err := os.Executable()
	require.NoError(t, err)
	return Config{
		AppDir:       dir,
		Files:        lifecycle.FilesFor(dir, "test"),
		Heartbeat:    filepath.Join(dir, "heartbeat"),
		KillAfter:    time.Minute,
		StartTimeout: 10 * time.Second,
		Command:      []string{exe},
		Env:          append(os.Environ(), helperEnv+"="+mode),
		LogFile:      filepath.Join(dir, "log", "flagella.log"),
		Logger:       zerolog.Nop(),
	}
}

// killOnCleanup kills pid's process group, and pid itself, at the end of the test.
func killOnCleanup(t *testing.T, pid int) {
	t.Cleanup(func() {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	})
}

// gone reports whether pid has ended: no such process, or a zombie.
func gone(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	return len(fields) > 0 && fields[0] == "Z"
}

func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !gone(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("process %d still runs after 10s", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func waitPID(t *testing.T, path string) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if pid := lifecycle.ReadPID(path); pid > 0 {
			return pid
		}
		if time.Now().After(deadline) {
			t.Fatalf("no pid in %s after 10s", path)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRunStartsThenLeavesAliveDaemon(t *testing.T) {
	cfg := testConfig(t, "plain")

	out, err := Run(context.Background(), cfg)
	require.NoError(t, err)
	killOnCleanup(t, out.PID)
	require.Equal(t, Started, out.Action)
	require.Equal(t, out.PID, lifecycle.ReadPID(cfg.Files.PidFile))
	pgid, err := syscall.Getpgid(out.PID)
	require.NoError(t, err)
	require.Equal(t, out.PID, pgid, "the daemon leads a session and group of its own")

	again, err := Run(context.Background(), cfg)
	require.NoError(t, err)
	require.Equal(t, Outcome{Action: Alive, PID: out.PID}, again)
}

func TestRunReplacesStuckDaemonAndItsTasks(t *testing.T) {
	cfg := testConfig(t, "task")
	first, err := Run(context.Background(), cfg)
	require.NoError(t, err)
	killOnCleanup(t, first.PID)
	taskPID := waitPID(t, filepath.Join(cfg.AppDir, "task.pid"))
	grandchild := waitPID(t, filepath.Join(cfg.AppDir, "grandchild.pid"))
	killOnCleanup(t, taskPID)
	killOnCleanup(t, grandchild)

	require.NoError(t, syscall.Kill(first.PID, syscall.SIGSTOP))
	old := time.Now().Add(-2 * cfg.KillAfter)
	require.NoError(t, os.Chtimes(cfg.Heartbeat, old, old))

	second, err := Run(context.Background(), cfg)
	require.NoError(t, err)
	killOnCleanup(t, second.PID)
	require.Equal(t, Replaced, second.Action)
	require.Equal(t, first.PID, second.OldPID)
	require.Contains(t, second.Reason, "more than the kill threshold 1m0s")
	require.NotEqual(t, first.PID, second.PID)
	// The task ran in a group of its own; its grandchild must die with it.
	for _, pid := range []int{first.PID, taskPID, grandchild} {
		waitGone(t, pid)
	}
}

func TestRunStartsAfterStaleLock(t *testing.T) {
	cfg := testConfig(t, "plain")
	first, err := Run(context.Background(), cfg)
	require.NoError(t, err)
	require.NoError(t, syscall.Kill(first.PID, syscall.SIGKILL))
	waitGone(t, first.PID)

	second, err := Run(context.Background(), cfg)
	require.NoError(t, err)
	killOnCleanup(t, second.PID)
	require.Equal(t, Started, second.Action)
	require.NotEqual(t, first.PID, second.PID)
}

func TestRunReportsDaemonExitDuringStart(t *testing.T) {
	cfg := testConfig(t, "fail")
	_, err := Run(context.Background(), cfg)
	require.ErrorContains(t, err, "exited during start (exit status 3)")
	require.ErrorContains(t, err, "helper: failing on purpose", "the error shows the end of the log")
}

func TestRunReportsStartTimeout(t *testing.T) {
	cfg := testConfig(t, "silent")
	cfg.StartTimeout = 500 * time.Millisecond
	_, err := Run(context.Background(), cfg)
	require.ErrorContains(t, err, "did not register within 500ms (setting start_timeout)")
	// The silent daemon holds the lock; end it through the pid it wrote there.
	pid := lifecycle.ReadPID(cfg.Files.DaemonLock)
	require.Positive(t, pid)
	require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
}

func TestRunRefusesToKillUnidentifiedHolder(t *testing.T) {
	cfg := testConfig(t, "plain")
	first, err := Run(context.Background(), cfg)
	require.NoError(t, err)
	killOnCleanup(t, first.PID)

	// A pid in the lock file that is not the holder must not be killed.
	sleeper := exec.Command("sleep", "1000")
	require.NoError(t, sleeper.Start())
	killOnCleanup(t, sleeper.Process.Pid)
	require.NoError(t, os.WriteFile(cfg.Files.DaemonLock, []byte(strconv.Itoa(sleeper.Process.Pid)+"\n"), 0o644))
	old := time.Now().Add(-2 * cfg.KillAfter)
	require.NoError(t, os.Chtimes(cfg.Heartbeat, old, old))

	_, err = Run(context.Background(), cfg)
	require.ErrorContains(t, err, "cannot be identified")
	require.False(t, gone(sleeper.Process.Pid))
	require.False(t, gone(first.PID))
}

func TestHeartbeatAgeFallsBackToLockFile(t *testing.T) {
	cfg := testConfig(t, "plain")
	require.NoError(t, os.MkdirAll(filepath.Dir(cfg.Files.DaemonLock), 0o755))
	require.NoError(t, os.WriteFile(cfg.Files.DaemonLock, nil, 0o644))
	lockTime := time.Now().Add(-time.Hour)
	require.NoError(t, os.Chtimes(cfg.Files.DaemonLock, lockTime, lockTime))
	now := time.Now()
	require.InDelta(t, time.Hour.Seconds(), heartbeatAge(cfg, now).Seconds(), 1, "no heartbeat: the lock file's age")

	require.NoError(t, os.WriteFile(cfg.Heartbeat, nil, 0o644))
	beat := now.Add(-5 * time.Second)
	require.NoError(t, os.Chtimes(cfg.Heartbeat, beat, beat))
	require.Equal(t, 5*time.Second, heartbeatAge(cfg, now))
}
