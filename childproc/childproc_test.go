package childproc

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestRunExitCode(t *testing.T) {
	t.Parallel()

	for _, code := range []int{0, 3} {
		result := Run(context.Background(), helperSpec(t, "exit", strconv.Itoa(code)))

		require.NoError(t, result.StartErr)
		require.Positive(t, result.PID)
		require.False(t, result.Started.IsZero())
		require.Positive(t, result.Duration)
		require.Equal(t, code, result.ExitCode)
		require.Empty(t, result.Signal)
		require.False(t, result.TimedOut)
		require.Equal(t, "out", string(result.Stdout))
		require.Equal(t, "err", string(result.Stderr))
		require.Zero(t, result.StdoutDropped)
		require.Zero(t, result.StderrDropped)
		require.Nil(t, result.ResultJSON)
		require.NoError(t, result.ResultErr)
	}
}

func TestRunKilledBySignal(t *testing.T) {
	t.Parallel()

	// The shell's own SIGSEGV disposition is the default, so it dies by the signal
	// the way a crashing program does.
	result := Run(context.Background(), Spec{Path: "/bin/sh", Args: []string{"-c", "kill -SEGV $$"}})

	require.NoError(t, result.StartErr)
	require.Equal(t, -1, result.ExitCode)
	require.Equal(t, "SIGSEGV", result.Signal)
	require.False(t, result.TimedOut)
}

func TestRunTimeoutStopsLeader(t *testing.T) {
	t.Parallel()

	spec := helperSpec(t, "hang")
	spec.Timeout = 300 * time.Millisecond
	result := Run(context.Background(), spec)

	require.NoError(t, result.StartErr)
	require.True(t, result.TimedOut)
	require.Equal(t, -1, result.ExitCode)
	require.Equal(t, "SIGTERM", result.Signal)
	require.GreaterOrEqual(t, result.Duration, spec.Timeout)
	requireGone(t, result.PID)
}

func TestRunTimeoutKillsGroup(t *testing.T) {
	t.Parallel()

	for _, mode := range []string{"hang", "ignore-term"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()

			// Both the leader and its grandchild run mode; with "ignore-term" only
			// the SIGKILL after the grace period ends them. The timeout leaves the
			// helpers ample time to set themselves up.
			spec := helperSpec(t, "grandchild", mode, mode)
			pidFile := withPIDFile(t, &spec)
			spec.Timeout = 3 * time.Second
			spec.KillGrace = 200 * time.Millisecond
			result := Run(context.Background(), spec)

			grandchild := readPID(t, pidFile)
			killOnCleanup(t, grandchild)

			require.True(t, result.TimedOut)
			require.Equal(t, -1, result.ExitCode)
			if mode == "ignore-term" {
				require.Equal(t, "SIGKILL", result.Signal)
				require.GreaterOrEqual(t, result.Duration, spec.Timeout+spec.KillGrace)
			} else {
				require.Equal(t, "SIGTERM", result.Signal)
			}
			requireGone(t, result.PID)
			requireGone(t, grandchild)
		})
	}
}

func TestRunCancelIsNotTimeout(t *testing.T) {
	t.Parallel()

	spec := helperSpec(t, "hang")
	pidFile := withPIDFile(t, &spec)
	spec.Timeout = time.Hour

	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	go func() {
		waitForPID(t, pidFile)
		cancel(errors.New("shutting down"))
	}()
	result := Run(ctx, spec)

	require.NoError(t, result.StartErr)
	require.False(t, result.TimedOut)
	require.Equal(t, -1, result.ExitCode)
	require.Equal(t, "SIGTERM", result.Signal)
}

func TestRunCancelEscalatesToKill(t *testing.T) {
	t.Parallel()

	spec := helperSpec(t, "grandchild", "ignore-term", "ignore-term")
	pidFile := withPIDFile(t, &spec)
	spec.KillGrace = 100 * time.Millisecond

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	grandchildPID := make(chan int, 1)
	go func() {
		pid := waitForPID(t, pidFile)
		grandchildPID <- pid
		cancel()
	}()
	result := Run(ctx, spec)

	grandchild := <-grandchildPID
	killOnCleanup(t, grandchild)
	require.False(t, result.TimedOut)
	require.Equal(t, "SIGKILL", result.Signal)
	requireGone(t, result.PID)
	requireGone(t, grandchild)
}

func TestRunLeaderExitKillsGrandchild(t *testing.T) {
	t.Parallel()

	// The grandchild shares stdout, so Run returns promptly only if it killed the
	// grandchild when the leader exited.
	spec := helperSpec(t, "grandchild", "exit", "hang")
	pidFile := withPIDFile(t, &spec)

	began := time.Now()
	result := Run(context.Background(), spec)
	elapsed := time.Since(began)

	grandchild := readPID(t, pidFile)
	killOnCleanup(t, grandchild)
	require.Equal(t, 0, result.ExitCode)
	require.Equal(t, "leader done", string(result.Stdout))
	require.Less(t, elapsed, pipeDrainTimeout, "Run waited for the pipe drain timeout")
	requireGone(t, grandchild)
}

func TestRunEscapedProcessDoesNotBlock(t *testing.T) {
	t.Parallel()

	// The grandchild calls setsid, so the group kill misses it while it keeps stdout
	// open. Run must close the pipe after the drain timeout rather than wait for it.
	spec := helperSpec(t, "escape")
	pidFile := withPIDFile(t, &spec)

	began := time.Now()
	result := Run(context.Background(), spec)
	elapsed := time.Since(began)

	escaped := readPID(t, pidFile)
	killOnCleanup(t, escaped)
	require.Equal(t, 0, result.ExitCode)
	require.Equal(t, "leader done", string(result.Stdout))
	require.GreaterOrEqual(t, elapsed, pipeDrainTimeout)
	require.Less(t, elapsed, pipeDrainTimeout+10*time.Second)
	require.True(t, isRunning(escaped), "the escaped process should be outside the group's reach")
}

// TestRunOutputFloodKeepsTail is not parallel, so that the allocation count measures
// only this run.
func TestRunOutputFloodKeepsTail(t *testing.T) {
	const size = 200 << 20

	spec := helperSpec(t, "flood", "209715200")
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	result := Run(context.Background(), spec)
	runtime.ReadMemStats(&after)

	require.NoError(t, result.StartErr)
	require.Equal(t, 0, result.ExitCode)
	require.Len(t, result.Stdout, DefaultOutputLimit)
	require.True(t, bytes.HasSuffix(result.Stdout, []byte(floodEnd)))
	require.Equal(t, int64(size-DefaultOutputLimit), result.StdoutDropped)
	require.Equal(t, "stderr-line\n", string(result.Stderr))
	require.Zero(t, result.StderrDropped)

	allocated := after.TotalAlloc - before.TotalAlloc
	t.Logf("allocated %d bytes while reading %d bytes of output", allocated, size)
	require.Less(t, allocated, uint64(4<<20), "reading output should not allocate in proportion to its size")
}

func TestRunOutputLimit(t *testing.T) {
	t.Parallel()

	spec := helperSpec(t, "flood", "1000")
	spec.OutputLimit = 20
	result := Run(context.Background(), spec)

	require.Len(t, result.Stdout, 20)
	require.True(t, bytes.HasSuffix(result.Stdout, []byte(floodEnd)))
	require.Equal(t, int64(980), result.StdoutDropped)
	require.Equal(t, "stderr-line\n", string(result.Stderr))
}

func TestTailBufferMatchesNaiveTail(t *testing.T) {
	t.Parallel()

	random := rand.New(rand.NewPCG(1, 2))
	for _, limit := range []int{1, 7, 64, 1000} {
		buffer := tailBuffer{limit: limit}
		var all []byte
		for range 200 {
			chunk := make([]byte, random.IntN(3*limit+2))
			for i := range chunk {
				chunk[i] = byte(random.IntN(256))
			}
			buffer.Write(chunk)
			all = append(all, chunk...)

			wantTail := all[max(0, len(all)-limit):]
			if len(wantTail) == 0 {
				wantTail = nil
			}
			require.Equal(t, wantTail, buffer.Bytes(), "limit %d", limit)
			require.Equal(t, int64(len(all)-len(wantTail)), buffer.dropped, "limit %d", limit)
		}
	}
}

func TestRunStdinDelivered(t *testing.T) {
	t.Parallel()

	// Larger than a pipe's buffer, so the child must read while Run writes.
	input := bytes.Repeat([]byte(`{"_id":{"$oid":"65a000000000000000000001"}}`+"\n"), 30000)
	spec := helperSpec(t, "cat")
	spec.Stdin = input
	spec.OutputLimit = 2 * len(input)
	result := Run(context.Background(), spec)

	require.Equal(t, 0, result.ExitCode)
	require.Equal(t, input, result.Stdout)
}

func TestRunChildIgnoresStdin(t *testing.T) {
	t.Parallel()

	spec := helperSpec(t, "ignore-stdin")
	spec.Stdin = bytes.Repeat([]byte("x"), 4<<20)
	spec.Timeout = time.Minute
	result := Run(context.Background(), spec)

	require.NoError(t, result.StartErr)
	require.Equal(t, 0, result.ExitCode)
	require.False(t, result.TimedOut)
}

func TestRunEnvIsExact(t *testing.T) {
	t.Parallel()

	spec := helperSpec(t, "env")
	spec.Env = append(spec.Env, "BOLT_TASK=send_report", ResultFileEnv+"=/caller/value")
	result := Run(context.Background(), spec)
	require.Equal(t, 0, result.ExitCode)

	env := strings.Split(string(result.Stdout), "\n")
	require.Len(t, env, 3, "the child should get exactly the given environment: %q", env)
	require.Equal(t, helperEnv+"=env", env[0])
	require.Equal(t, "BOLT_TASK=send_report", env[1])
	require.True(t, strings.HasPrefix(env[2], ResultFileEnv+"="+os.TempDir()), "got %q", env[2])

	resultPath := strings.TrimPrefix(env[2], ResultFileEnv+"=")
	_, err := os.Stat(filepath.Dir(resultPath))
	require.ErrorIs(t, err, fs.ErrNotExist, "Run should remove the result folder")
}

func TestRunResultFile(t *testing.T) {
	t.Parallel()

	for _, mode := range []string{"result", "result-rename"} {
		result := Run(context.Background(), helperSpec(t, mode, `{"sent":3}`))

		require.Equal(t, 0, result.ExitCode, "stderr: %s", result.Stderr)
		require.NoError(t, result.ResultErr)
		require.Equal(t, `{"sent":3}`, string(result.ResultJSON), "mode %s", mode)
		require.False(t, result.ResultTruncated)
	}
}

func TestRunResultFileTruncated(t *testing.T) {
	t.Parallel()

	spec := helperSpec(t, "result", strings.Repeat("a", 100))
	spec.ResultLimit = 10
	result := Run(context.Background(), spec)

	require.NoError(t, result.ResultErr)
	require.Equal(t, strings.Repeat("a", 10), string(result.ResultJSON))
	require.True(t, result.ResultTruncated)
}

func TestRunResultFileFIFO(t *testing.T) {
	t.Parallel()

	result := Run(context.Background(), helperSpec(t, "result-fifo"))

	require.Equal(t, 0, result.ExitCode, "stderr: %s", result.Stderr)
	require.Nil(t, result.ResultJSON)
	require.ErrorContains(t, result.ResultErr, "is not a regular file")
}

func TestRunStartErrors(t *testing.T) {
	t.Parallel()

	dir := t.TempDir()
	notExecutable := filepath.Join(dir, "not-executable")
	require.NoError(t, os.WriteFile(notExecutable, []byte("#!/bin/sh\n"), 0o644))
	badFormat := filepath.Join(dir, "bad-format")
	require.NoError(t, os.WriteFile(badFormat, []byte("not a program\x00\x01"), 0o755))

	cases := []struct {
		spec Spec
		want error
	}{
		{Spec{Path: filepath.Join(dir, "missing")}, fs.ErrNotExist},
		{Spec{Path: notExecutable}, fs.ErrPermission},
		{Spec{Path: badFormat}, syscall.ENOEXEC},
		{Spec{Path: "/bin/sh", Dir: filepath.Join(dir, "missing-dir")}, fs.ErrNotExist},
	}
	for _, c := range cases {
		result := Run(context.Background(), c.spec)

		require.ErrorIs(t, result.StartErr, c.want, "spec %+v", c.spec)
		require.Contains(t, result.StartErr.Error(), c.spec.Path)
		require.Zero(t, result.PID)
		require.Equal(t, -1, result.ExitCode)
	}
}

func TestRunContextAlreadyDone(t *testing.T) {
	t.Parallel()

	cause := errors.New("daemon stopping")
	ctx, cancel := context.WithCancelCause(context.Background())
	cancel(cause)

	result := Run(ctx, helperSpec(t, "exit", "0"))
	require.ErrorIs(t, result.StartErr, cause)
	require.Zero(t, result.PID)
	require.Equal(t, -1, result.ExitCode)
}

func TestRunChildDiesWithParent(t *testing.T) {
	t.Parallel()

	self, err := os.Executable()
	require.NoError(t, err)
	pidFile := filepath.Join(t.TempDir(), "pid")

	parent := exec.Command(self)
	parent.Env = []string{helperEnv + "=parent", pidFileEnv + "=" + pidFile}
	require.NoError(t, parent.Start())
	t.Cleanup(func() {
		_ = parent.Process.Kill()
		_ = parent.Wait()
	})

	child := waitForPID(t, pidFile)
	killOnCleanup(t, child)
	require.True(t, isRunning(child))

	require.NoError(t, parent.Process.Signal(syscall.SIGKILL))
	_ = parent.Wait()
	requireGone(t, child)
}

func TestGuardKillsGrandchildWhenParentDies(t *testing.T) {
	t.Parallel()

	self, err := os.Executable()
	require.NoError(t, err)
	pidFile := filepath.Join(t.TempDir(), "pid")

	parent := exec.Command(self)
	parent.Env = []string{helperEnv + "=guarded-parent", pidFileEnv + "=" + pidFile}
	require.NoError(t, parent.Start())
	t.Cleanup(func() {
		_ = parent.Process.Kill()
		_ = parent.Wait()
	})

	grandchild := waitForPID(t, pidFile)
	killOnCleanup(t, grandchild)
	require.True(t, isRunning(grandchild))

	require.NoError(t, parent.Process.Signal(syscall.SIGKILL))
	_ = parent.Wait()
	requireGone(t, grandchild)
}
