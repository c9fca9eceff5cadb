package childproc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// The test binary re-executes itself as the child programs that the tests need, in the
// way os/exec's own tests do. helperEnv selects the program; pidFileEnv names a file in
// which a helper writes a process ID once it is set up.
const (
	helperEnv  = "BOLT_CHILDPROC_HELPER"
	pidFileEnv = "BOLT_TEST_PIDFILE"
)

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == GuardCommand {
		RunGuard(os.Stdin)
		os.Exit(0)
	}
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(runHelper(mode, os.Args[1:]))
	}

	goleak.VerifyTestMain(m)
}

// runHelper runs one helper program and returns its exit status.
func runHelper(mode string, args []string) int {
	switch mode {
	case "exit":
		fmt.Fprint(os.Stdout, "out")
		fmt.Fprint(os.Stderr, "err")
		code, _ := strconv.Atoi(args[0])
		return code

	case "hang":
		writePIDFile(os.Getpid())
		time.Sleep(time.Hour)
		return 0

	case "ignore-term":
		signal.Ignore(syscall.SIGTERM)
		writePIDFile(os.Getpid())
		time.Sleep(time.Hour)
		return 0

	case "grandchild":
		return helperGrandchild(args[0], args[1], false)

	case "escape":
		return helperGrandchild("exit", "hang", true)

	case "flood":
		return helperFlood(args[0])

	case "cat":
		_, err := io.Copy(os.Stdout, os.Stdin)
		return exitStatus(err)

	case "ignore-stdin":
		return 0

	case "env":
		fmt.Fprint(os.Stdout, strings.Join(os.Environ(), "\n"))
		return 0

	case "result":
		return exitStatus(os.WriteFile(os.Getenv(ResultFileEnv), []byte(args[0]), 0o600))

	case "result-rename":
		path := os.Getenv(ResultFileEnv)
		tmp := filepath.Join(filepath.Dir(path), "result.tmp")
		if err := os.WriteFile(tmp, []byte(args[0]), 0o600); err != nil {
			return exitStatus(err)
		}
		return exitStatus(os.Rename(tmp, path))

	case "result-fifo":
		path := os.Getenv(ResultFileEnv)
		if err := os.Remove(path); err != nil {
			return exitStatus(err)
		}
		return exitStatus(syscall.Mkfifo(path, 0o600))

	case "parent":
		return helperParent()

	case "guarded-parent":
		return helperGuardedParent()
	}

	fmt.Fprintf(os.Stderr, "unknown helper %q\n", mode)
	return 2
}

func exitStatus(err error) int {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}

	return 0
}

// writePIDFile writes pid to the file named by pidFileEnv, if set. The rename makes the
// file appear complete to a test that polls for it.
func writePIDFile(pid int) {
	path := os.Getenv(pidFileEnv)
	if path == "" {
		return
	}

	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(pid)), 0o600); err != nil {
		panic(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		panic(err)
	}
}

// helperGrandchild starts a grandchild running grandchildMode that shares this process's
// stdout and stderr, writes the grandchild's PID, and then does leaderAction: "exit",
// "hang" or "ignore-term". With escape the grandchild starts a new session, so it
// leaves the process group.
func helperGrandchild(leaderAction, grandchildMode string, escape bool) int {
	if leaderAction == "ignore-term" {
		signal.Ignore(syscall.SIGTERM)
	}

	self, err := os.Executable()
	if err != nil {
		return exitStatus(err)
	}
	cmd := exec.Command(self)
	cmd.Env = []string{helperEnv + "=" + grandchildMode}
	cmd.Stdout = os.Stdout
	cmd.Stderr = os.Stderr
	if escape {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	}
	if err := cmd.Start(); err != nil {
		return exitStatus(err)
	}
	writePIDFile(cmd.Process.Pid)

	if leaderAction == "exit" {
		fmt.Fprint(os.Stdout, "leader done")
		return 0
	}
	time.Sleep(time.Hour)
	return 0
}

// floodEnd ends the output of the "flood" helper, so a test can check that the tail
// was kept.
const floodEnd = "END-OF-OUTPUT\n"

// helperFlood writes the given number of bytes to stdout, ending with floodEnd.
func helperFlood(sizeArg string) int {
	size, err := strconv.Atoi(sizeArg)
	if err != nil {
		return exitStatus(err)
	}

	chunk := bytes.Repeat([]byte("0123456789abcdef"), 4096)
	remaining := size - len(floodEnd)
	for remaining > 0 {
		n := min(remaining, len(chunk))
		if _, err := os.Stdout.Write(chunk[:n]); err != nil {
			return exitStatus(err)
		}
		remaining -= n
	}
	fmt.Fprint(os.Stdout, floodEnd)
	fmt.Fprint(os.Stderr, "stderr-line\n")

	return 0
}

// helperParent runs a "hang" child through Run, as Bolt would, and waits. The test kills
// this process with SIGKILL and expects the child to die with it.
func helperParent() int {
	self, err := os.Executable()
	if err != nil {
		return exitStatus(err)
	}

	Run(context.Background(), Spec{
		Path: self,
		Env:  []string{helperEnv + "=hang", pidFileEnv + "=" + os.Getenv(pidFileEnv)},
	})

	return 0
}

// helperGuardedParent runs a task whose leader and grandchild both hang, under a guard.
func helperGuardedParent() int {
	self, err := os.Executable()
	if err != nil {
		return exitStatus(err)
	}
	guard, err := StartGuard(self)
	if err != nil {
		return exitStatus(err)
	}

	Run(context.Background(), Spec{
		Path:  self,
		Args:  []string{"hang", "hang"},
		Env:   []string{helperEnv + "=grandchild", pidFileEnv + "=" + os.Getenv(pidFileEnv)},
		Guard: guard,
	})

	return 0
}

// helperSpec returns a Spec that runs this test binary as the helper mode.
func helperSpec(t *testing.T, mode string, args ...string) Spec {
	t.Helper()

	self, err := os.Executable()
	require.NoError(t, err)

	return Spec{
		Path: self,
		Args: args,
		Env:  []string{helperEnv + "=" + mode},
	}
}

// withPIDFile adds a PID file to spec and returns its path.
func withPIDFile(t *testing.T, spec *Spec) string {
	t.Helper()

	path := filepath.Join(t.TempDir(), "pid")
	spec.Env = append(spec.Env, pidFileEnv+"="+path)

	return path
}

// waitForPID polls until the PID file exists and returns the PID in it.
func waitForPID(t *testing.T, path string) int {
	t.Helper()

	var pid int
	require.Eventually(t, func() bool {
		data, err := os.ReadFile(path)
		if err != nil {
			return false
		}
		pid, err = strconv.Atoi(string(data))
		return err == nil
	}, 30*time.Second, 5*time.Millisecond, "helper did not write its PID file %s", path)

	return pid
}

// readPID returns the PID in the file, failing the test if the helper never wrote it.
func readPID(t *testing.T, path string) int {
	t.Helper()

	data, err := os.ReadFile(path)
	require.NoError(t, err, "helper did not write its PID file before it was stopped; the machine may be overloaded")
	pid, err := strconv.Atoi(string(data))
	require.NoError(t, err)

	return pid
}

// isRunning reports whether the process exists and is not a zombie. A killed process
// whose parent has died stays a zombie until init reaps it, and kill(pid, 0) still
// succeeds on a zombie, so /proc is checked instead.
func isRunning(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if errors.Is(err, os.ErrNotExist) {
		return false
	}
	if err != nil {
		return true
	}

	// The state follows the command name, which is in parentheses and may contain
	// spaces, so look after the last ')'.
	fields := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+1:]))
	return len(fields) > 0 && fields[0] != "Z" && fields[0] != "X"
}

// requireGone waits until the process is no longer running.
func requireGone(t *testing.T, pid int) {
	t.Helper()

	require.Eventually(t, func() bool { return !isRunning(pid) },
		10*time.Second, 5*time.Millisecond, "process %d is still running", pid)
}

// killOnCleanup kills a process that the test expects to outlive Run.
func killOnCleanup(t *testing.T, pid int) {
	t.Cleanup(func() {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	})
}
