package main

import (
	"bufio"
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

	"github.com/stretchr/testify/require"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

func init() {
	// Every daemon the tests start touches a heartbeat file, by default in the home folder.
	// This variable points all of them at one folder under the temporary folder instead.
	// Tests that read the heartbeat give their daemons a folder of their own.
	if os.Getenv("BOLT_HEARTBEAT_DIR") == "" {
		_ = os.Setenv("BOLT_HEARTBEAT_DIR", filepath.Join(os.TempDir(), "bolt-test-heartbeats"))
	}
}

// opsApp is a test application for starting and stopping daemons: it has its own heartbeat
// folder and keeps the `bolt db` process, which tests pause to make store calls hang.
type opsApp struct {
	*testApp
	db           *exec.Cmd
	heartbeatDir string
}

// newOpsApp creates an application folder whose bolt.conf has the store's URI, kill_grace = 1
// and the extra lines given. Every process left in the folder is killed at the end of the test.
func newOpsApp(t *testing.T, conf string) *opsApp {
	t.Helper()
	dir := t.TempDir()
	app := &opsApp{testApp: &testApp{t: t, dir: dir}, heartbeatDir: filepath.Join(dir, "heartbeats")}
	t.Cleanup(func() { killProcessesIn(dir) })

	app.db, app.uri = startPausableDB(t, filepath.Join(dir, "db"))
	app.writeFile("bolt.conf", fmt.Sprintf("mongo_uri = %s\nkill_grace = 1\n%s", app.uri, conf))

	client, err := mongo.Connect(options.Client().ApplyURI(app.uri))
	require.NoError(t, err)
	t.Cleanup(func() { _ = client.Disconnect(context.Background()) })
	app.tasks = client.Database("bolt_test").Collection("task_queue")
	return app
}

// startPausableDB runs `bolt db` on a free loopback port and returns the process and its URI.
func startPausableDB(t *testing.T, dataDir string) (*exec.Cmd, string) {
	t.Helper()
	cmd := exec.Command(boltBinary, "db", "--listen", "127.0.0.1:0", "--data", dataDir, "--app", filepath.Dir(dataDir))
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	cmd.Stderr = os.Stderr
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		// A paused store must be resumed to stop.
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	require.NoError(t, err, "bolt db printed no URI")
	return cmd, strings.TrimSpace(line)
}

// command returns the bolt binary set to run in the application folder with CURRENT_ENV=test
// and the application's own heartbeat folder.
func (a *opsApp) command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := a.testApp.command(ctx, args...)
	cmd.Env = append(cmd.Env, "BOLT_HEARTBEAT_DIR="+a.heartbeatDir)
	return cmd
}

// heartbeat returns the heartbeat file with the default thresholds.
func (a *opsApp) heartbeat() string { return filepath.Join(a.heartbeatDir, "bolt__60__300") }

// pidFile returns the daemon's pid file for the test environment.
func (a *opsApp) pidFile() string { return filepath.Join(a.dir, "tmp", "bolt.test.pid") }

// watchdog runs `bolt watchdog` and returns its combined output; it fails the test on a
// non-zero exit.
func (a *opsApp) watchdog() string {
	a.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := a.command(ctx, "watchdog").CombinedOutput()
	require.NoError(a.t, err, "bolt watchdog failed:\n%s\nlog:\n%s", out, a.log())
	return string(out)
}

// daemonPID returns the pid in the pid file, failing the test when there is none.
func (a *opsApp) daemonPID() int {
	a.t.Helper()
	pid, err := strconv.Atoi(strings.TrimSpace(readFile(a.t, a.pidFile())))
	require.NoError(a.t, err)
	return pid
}

// testDaemon is a `bolt run` started by a test.
type testDaemon struct {
	cmd    *exec.Cmd
	exited chan struct{}
	err    error // valid once exited is closed
}

// startDaemon starts `bolt run` with extra arguments and waits until it has written its pid file.
func (a *opsApp) startDaemon(extra ...string) *testDaemon {
	a.t.Helper()
	d := &testDaemon{cmd: a.command(context.Background(), append([]string{"run"}, extra...)...), exited: make(chan struct{})}
	require.NoError(a.t, d.cmd.Start())
	go func() {
		d.err = d.cmd.Wait()
		close(d.exited)
	}()
	waitFor(a.t, time.Minute, "the daemon to write its pid file", func() bool {
		select {
		case <-d.exited:
			a.t.Fatalf("bolt run exited during start: %v\nlog:\n%s", d.err, a.log())
		default:
		}
		pid, _ := strconv.Atoi(strings.TrimSpace(readFileIfExists(a.pidFile())))
		return pid == d.cmd.Process.Pid
	})
	return d
}

// waitExit waits for the daemon to exit and returns its exit code.
func (d *testDaemon) waitExit(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-d.exited:
	case <-time.After(timeout):
		t.Fatalf("bolt run did not exit within %s", timeout)
	}
	return d.cmd.ProcessState.ExitCode()
}

// signal sends sig to the daemon.
func (d *testDaemon) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	require.NoError(t, d.cmd.Process.Signal(sig))
}

// waitPIDFile waits until path holds a pid and returns it.
func waitPIDFile(t *testing.T, path string) int {
	t.Helper()
	var pid int
	waitFor(t, time.Minute, "a pid in "+filepath.Base(path), func() bool {
		pid, _ = strconv.Atoi(strings.TrimSpace(readFileIfExists(path)))
		return pid > 0
	})
	return pid
}

func readFileIfExists(path string) string {
	data, _ := os.ReadFile(path)
	return string(data)
}

// requireReleased checks that the task's document is back in the queue, not claimed.
func (a *opsApp) requireReleased(id bson.ObjectID) {
	a.t.Helper()
	var doc bson.M
	require.NoError(a.t, a.tasks.FindOne(context.Background(), bson.D{{Key: "_id", Value: id}}).Decode(&doc),
		"the interrupted task's document must stay in the queue")
	require.NotEqual(a.t, true, doc["dispatched"], "the interrupted task must not stay claimed: %v", doc)
	require.Nil(a.t, doc["dispatched_by"], "the interrupted task must not stay claimed: %v", doc)
}

// liveProcessesIn returns the processes whose working folder is dir, leaving out zombies.
// Tasks and daemons run in the application folder, so this finds what a stop left behind.
func liveProcessesIn(dir string) []int {
	if resolved, err := filepath.EvalSymlinks(dir); err == nil {
		dir = resolved
	}
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cwd, err := os.Readlink(filepath.Join("/proc", e.Name(), "cwd"))
		if err != nil || cwd != dir || processGone(pid) {
			continue
		}
		pids = append(pids, pid)
	}
	return pids
}

// daemonsIn returns the live `bolt run` processes of the application folder dir. A child that
// a daemon has forked but not yet replaced by exec (a task starting) has the daemon's command
// line for a moment, so children of a daemon are left out.
func daemonsIn(dir string) []int {
	candidates := map[int]bool{}
	for _, pid := range liveProcessesIn(dir) {
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue
		}
		args := strings.Split(string(cmdline), "\x00")
		if len(args) > 1 && args[0] == boltBinary && args[1] == "run" {
			candidates[pid] = true
		}
	}
	var pids []int
	for pid := range candidates {
		if !candidates[parentPID(pid)] {
			pids = append(pids, pid)
		}
	}
	return pids
}

// parentPID returns the parent of pid, or 0 when pid is gone.
func parentPID(pid int) int {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The parent follows the state, after the command name in parentheses.
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	if len(fields) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(fields[1])
	return ppid
}

// killProcessesIn kills every process whose working folder is dir, resuming paused ones.
func killProcessesIn(dir string) {
	for _, pid := range liveProcessesIn(dir) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
		_ = syscall.Kill(pid, syscall.SIGCONT)
	}
}

// requireNoProcessesIn waits until no process runs in dir, failing with the ones left.
func requireNoProcessesIn(t *testing.T, dir string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		left := liveProcessesIn(dir)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			var desc []string
			for _, pid := range left {
				cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
				desc = append(desc, fmt.Sprintf("%d %s", pid, strings.ReplaceAll(string(cmdline), "\x00", " ")))
			}
			t.Fatalf("processes left running in %s:\n%s", dir, strings.Join(desc, "\n"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}
