package main

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.mongodb.org/mongo-driver/v2/bson"
	"golang.org/x/sys/unix"

	"github.com/bolt-runner/bolt/config"
)

// blockerScript blocks on its first run, with a grandchild in its process group, and
// finishes at once on every later run.
const blockerScript = `#!/bin/sh
echo run >> "runs-$BOLT_TASK_ID"
if [ -e "started-$BOLT_TASK_ID" ]; then
  echo done > "finished-$BOLT_TASK_ID"
  exit 0
fi
sleep 1000 &
echo $! > "grandchild-$BOLT_TASK_ID"
echo $$ > "started-$BOLT_TASK_ID"
wait
`

// stubbornScript is blockerScript ignoring SIGTERM; its grandchild inherits that.
var stubbornScript = strings.Replace(blockerScript, "#!/bin/sh\n", "#!/bin/sh\ntrap '' TERM\n", 1)

// startedTask waits until a blocker task has started and returns its pid and its grandchild's.
func (a *opsApp) startedTask(id bson.ObjectID) (int, int) {
	a.t.Helper()
	pid := waitPIDFile(a.t, filepath.Join(a.dir, "started-"+id.Hex()))
	grandchild := waitPIDFile(a.t, filepath.Join(a.dir, "grandchild-"+id.Hex()))
	return pid, grandchild
}

func requireProcessesGone(t *testing.T, pids ...int) {
	t.Helper()
	for _, pid := range pids {
		waitFor(t, 15*time.Second, "process "+strconv.Itoa(pid)+" to end", func() bool { return processGone(pid) })
	}
}

func touchFile(t *testing.T, path string) {
	t.Helper()
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o644)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	now := time.Now()
	require.NoError(t, os.Chtimes(path, now, now))
}

func fileModTime(t *testing.T, path string) time.Time {
	t.Helper()
	info, err := os.Stat(path)
	require.NoError(t, err)
	return info.ModTime()
}

func TestKillFileStopsDaemonAndReleasesTask(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"kill.flagella", "kill.bolt"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			app := newOpsApp(t, "")
			app.writeExecutable("blocker", blockerScript)
			id := app.insert(bson.D{{Key: "task", Value: "blocker"}})
			d := app.startDaemon()
			pid, grandchild := app.startedTask(id)

			touchFile(t, filepath.Join(app.dir, "tmp", name))

			require.Equal(t, 0, d.waitExit(t, time.Minute), "log:\n%s", app.log())
			requireProcessesGone(t, pid, grandchild)
			require.Contains(t, app.log(), "kill file changed")
			require.Contains(t, app.log(), filepath.Join("tmp", name))
			app.requireReleased(id)

			app.drain()
			require.FileExists(t, filepath.Join(app.dir, "finished-"+id.Hex()))
			require.Zero(t, app.count())
		})
	}
}

func TestKillFileFromBeforeStartIgnored(t *testing.T) {
	t.Parallel()
	app := newOpsApp(t, "")
	killFile := filepath.Join(app.dir, "tmp", "kill.bolt")
	touchFile(t, killFile)
	app.writeExecutable("quick", "#!/bin/sh\ntouch \"ran-$BOLT_TASK_ID\"\n")
	d := app.startDaemon()

	id := app.insert(bson.D{{Key: "task", Value: "quick"}})
	waitFor(t, time.Minute, "the task to run", func() bool { return app.count() == 0 })
	require.FileExists(t, filepath.Join(app.dir, "ran-"+id.Hex()))
	// The loop compares the kill files at most once a second: wait for a later comparison.
	beat := fileModTime(t, app.heartbeat())
	waitFor(t, 30*time.Second, "the heartbeat to advance", func() bool { return fileModTime(t, app.heartbeat()).After(beat) })
	select {
	case <-d.exited:
		t.Fatalf("a kill file that existed at start stopped the daemon: %v\nlog:\n%s", d.err, app.log())
	default:
	}

	touchFile(t, killFile)
	require.Equal(t, 0, d.waitExit(t, time.Minute))
}

func TestSIGTERMStopsStubbornTasksAfterGrace(t *testing.T) {
	t.Parallel()
	app := newOpsApp(t, "stop_grace = 1\nthrottle = 2\n")
	app.writeExecutable("stubborn", stubbornScript)
	app.writeExecutable("blocker", blockerScript)
	stubborn := app.insert(bson.D{{Key: "task", Value: "stubborn"}})
	blocker := app.insert(bson.D{{Key: "task", Value: "blocker"}})
	d := app.startDaemon()
	stubbornPID, stubbornChild := app.startedTask(stubborn)
	blockerPID, blockerChild := app.startedTask(blocker)

	signalled := time.Now()
	d.signal(t, syscall.SIGTERM)

	require.Equal(t, 0, d.waitExit(t, time.Minute), "log:\n%s", app.log())
	require.GreaterOrEqual(t, time.Since(signalled), time.Second, "running tasks must get stop_grace before they are stopped")
	requireProcessesGone(t, stubbornPID, stubbornChild, blockerPID, blockerChild)
	app.requireReleased(stubborn)
	app.requireReleased(blocker)
	require.Contains(t, app.logLine(stubborn, "task interrupted"), "released")
	require.Contains(t, app.log(), `cause="stop signal received"`)

	app.drain()
	for _, id := range []bson.ObjectID{stubborn, blocker} {
		require.FileExists(t, filepath.Join(app.dir, "finished-"+id.Hex()))
	}
	require.Zero(t, app.count())
}

func TestSIGTERMLetsTaskFinishWithinGrace(t *testing.T) {
	t.Parallel()
	app := newOpsApp(t, "stop_grace = 60\n")
	app.writeExecutable("waiter", `#!/bin/sh
echo $$ > "started-$BOLT_TASK_ID"
while [ ! -e release ]; do sleep 0.1; done
echo done > "finished-$BOLT_TASK_ID"
`)
	id := app.insert(bson.D{{Key: "task", Value: "waiter"}})
	d := app.startDaemon()
	waitPIDFile(t, filepath.Join(app.dir, "started-"+id.Hex()))

	d.signal(t, syscall.SIGTERM)
	waitFor(t, 30*time.Second, "the daemon to log its stop", func() bool { return strings.Contains(app.log(), "bolt: stopping") })
	late := app.insert(bson.D{{Key: "task", Value: "waiter"}})
	touchFile(t, filepath.Join(app.dir, "release"))

	require.Equal(t, 0, d.waitExit(t, time.Minute), "log:\n%s", app.log())
	require.FileExists(t, filepath.Join(app.dir, "finished-"+id.Hex()))
	require.Contains(t, app.logLine(id, "task finished"), "success=true")
	require.NoFileExists(t, filepath.Join(app.dir, "started-"+late.Hex()), "no task may be claimed after the stop signal")
	app.requireReleased(late)
	require.Equal(t, int64(1), app.count(), "only the task inserted after the stop signal is left")
}

func TestSecondSignalStopsTasksAtOnce(t *testing.T) {
	t.Parallel()
	app := newOpsApp(t, "stop_grace = 200\n")
	app.writeExecutable("blocker", blockerScript)
	id := app.insert(bson.D{{Key: "task", Value: "blocker"}})
	d := app.startDaemon()
	pid, grandchild := app.startedTask(id)

	d.signal(t, syscall.SIGTERM)
	waitFor(t, 30*time.Second, "the daemon to log its stop", func() bool { return strings.Contains(app.log(), "bolt: stopping") })
	d.signal(t, syscall.SIGINT)

	// stop_grace is 200 s: an exit well before that comes from the second signal.
	require.Equal(t, 0, d.waitExit(t, 30*time.Second), "log:\n%s", app.log())
	requireProcessesGone(t, pid, grandchild)
	require.Contains(t, app.log(), "second signal")
	app.requireReleased(id)
}

func TestSecondDaemonRefused(t *testing.T) {
	t.Parallel()
	app := newOpsApp(t, "")
	d := app.startDaemon()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := app.command(ctx, "run", "--drain").CombinedOutput()
	require.Error(t, err)
	require.Contains(t, string(out), "another Bolt daemon is running")
	require.Contains(t, string(out), strconv.Itoa(d.cmd.Process.Pid))

	d.signal(t, syscall.SIGTERM)
	require.Equal(t, 0, d.waitExit(t, time.Minute))
	require.NoFileExists(t, app.pidFile(), "a stopped daemon removes its pid file")
}

func TestHeartbeatStopsWhileLoopStuck(t *testing.T) {
	t.Parallel()
	app := newOpsApp(t, "log_level = debug\n")
	app.writeExecutable("quick", "#!/bin/sh\ntouch \"ran-$BOLT_TASK_ID\"\n")
	// The task is due a while after start, so the daemon has it in its schedule before the
	// store is paused, and its claim hangs when it comes due.
	runAt := time.Now().Add(10 * time.Second)
	id := app.insert(bson.D{{Key: "task", Value: "quick"}, {Key: "run_at", Value: float64(runAt.UnixMilli()) / 1000}})
	d := app.startDaemon()
	waitFor(t, time.Minute, "the daemon to read the waiting task", func() bool {
		return strings.Contains(app.log(), "reactor: caught up") && strings.Contains(app.log(), "tasks=1")
	})
	require.True(t, time.Now().Before(runAt.Add(-2*time.Second)), "the daemon needed too long to start; the task came due before the store could be paused")

	// A live loop touches the heartbeat at least every 3 seconds.
	beat := fileModTime(t, app.heartbeat())
	waitFor(t, 10*time.Second, "the heartbeat to advance", func() bool { return fileModTime(t, app.heartbeat()).After(beat) })

	require.NoError(t, app.db.Process.Signal(syscall.SIGSTOP))
	resumed := false
	defer func() {
		if !resumed {
			_ = app.db.Process.Signal(syscall.SIGCONT)
		}
	}()
	waitFor(t, time.Minute, "the task to come due", func() bool { return time.Now().After(runAt.Add(2 * time.Second)) })
	stuck := fileModTime(t, app.heartbeat())
	watchUntil := time.Now().Add(6 * time.Second)
	for time.Now().Before(watchUntil) {
		require.Equal(t, stuck, fileModTime(t, app.heartbeat()), "the heartbeat must stop while the loop waits on the paused store")
		time.Sleep(100 * time.Millisecond)
	}

	require.NoError(t, app.db.Process.Signal(syscall.SIGCONT))
	resumed = true
	waitFor(t, 30*time.Second, "the heartbeat to advance after the store resumed", func() bool {
		return fileModTime(t, app.heartbeat()).After(stuck)
	})
	waitFor(t, time.Minute, "the task to run", func() bool {
		_, err := os.Stat(filepath.Join(app.dir, "ran-"+id.Hex()))
		return err == nil
	})
	d.signal(t, syscall.SIGTERM)
	require.Equal(t, 0, d.waitExit(t, time.Minute))
}

func TestWatchdogRunFiveTimesStartsOneDaemon(t *testing.T) {
	t.Parallel()
	app := newOpsApp(t, "")

	var wg sync.WaitGroup
	outputs := make([]string, 5)
	errs := make([]error, 5)
	for i := range outputs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			out, err := app.command(ctx, "watchdog").CombinedOutput()
			outputs[i], errs[i] = string(out), err
		}()
	}
	wg.Wait()
	for i := range outputs {
		require.NoError(t, errs[i], "watchdog %d: %s", i, outputs[i])
		require.Empty(t, outputs[i], "a watchdog run prints nothing unless it replaced a stuck daemon or failed")
	}

	pid := app.daemonPID()
	require.Equal(t, []int{pid}, daemonsIn(app.dir))
	require.Equal(t, 1, strings.Count(app.log(), "watchdog: starting daemon"))
	n, err := app.tasks.Database().Collection("bolt_daemons").CountDocuments(context.Background(), bson.D{})
	require.NoError(t, err)
	require.Equal(t, int64(1), n, "exactly one daemon registers")

	// pgrep bolt matches the process name, which is the binary's name.
	require.Equal(t, "bolt\n", readFile(t, fmt.Sprintf("/proc/%d/comm", pid)))
	if pgrep, err := exec.LookPath("pgrep"); err == nil {
		out, err := exec.Command(pgrep, "bolt").Output()
		require.NoError(t, err)
		require.Contains(t, strings.Fields(string(out)), strconv.Itoa(pid))
	}

	// The daemon is in a session of its own, detached from the watchdog's.
	sid, err := unix.Getsid(pid)
	require.NoError(t, err)
	require.Equal(t, pid, sid)

	// A further run leaves the healthy daemon alone.
	require.Empty(t, app.watchdog())
	require.Equal(t, []int{pid}, daemonsIn(app.dir))

	require.NoError(t, syscall.Kill(pid, syscall.SIGTERM))
	requireProcessesGone(t, pid)
}

func TestWatchdogReplacesStuckDaemon(t *testing.T) {
	t.Parallel()
	app := newOpsApp(t, "lease = 2\n")
	app.writeExecutable("blocker", blockerScript)
	id := app.insert(bson.D{{Key: "task", Value: "blocker"}})
	app.watchdog()
	old := app.daemonPID()
	taskPID, grandchild := app.startedTask(id)

	require.NoError(t, syscall.Kill(old, syscall.SIGSTOP))
	longAgo := time.Now().Add(-10 * time.Minute)
	require.NoError(t, os.Chtimes(app.heartbeat(), longAgo, longAgo))

	out := app.watchdog()
	require.Contains(t, out, fmt.Sprintf("killed stuck Bolt (pid %d)", old))
	require.Contains(t, app.log(), "watchdog: daemon is stuck")
	requireProcessesGone(t, old, taskPID, grandchild)
	replacement := app.daemonPID()
	require.NotEqual(t, old, replacement)
	require.Equal(t, []int{replacement}, daemonsIn(app.dir))
	require.True(t, fileModTime(t, app.heartbeat()).After(longAgo.Add(time.Minute)), "the new daemon touches the heartbeat")

	// The new daemon recovers the killed daemon's task and runs it to its end.
	waitFor(t, time.Minute, "the recovered task to finish", func() bool { return app.count() == 0 })
	require.FileExists(t, filepath.Join(app.dir, "finished-"+id.Hex()))

	require.NoError(t, syscall.Kill(replacement, syscall.SIGTERM))
	requireProcessesGone(t, replacement)
}

func TestWatchdogStartsAfterKill9(t *testing.T) {
	t.Parallel()
	app := newOpsApp(t, "")
	app.watchdog()
	old := app.daemonPID()

	require.NoError(t, syscall.Kill(old, syscall.SIGKILL))
	requireProcessesGone(t, old)
	require.FileExists(t, filepath.Join(app.dir, "tmp", "bolt.test.lock"), "the lock file stays; only its lock is gone")
	require.Equal(t, old, app.daemonPID(), "kill -9 leaves the pid file behind")

	require.Empty(t, app.watchdog())
	replacement := app.daemonPID()
	require.NotEqual(t, old, replacement)
	require.Equal(t, []int{replacement}, daemonsIn(app.dir))

	require.NoError(t, syscall.Kill(replacement, syscall.SIGTERM))
	requireProcessesGone(t, replacement)
}

// setupEnv returns the environment for bolt setup with HOME at home and no Bolt variables, so
// the defaults apply.
func setupEnv(home string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "BOLT_") || strings.HasPrefix(kv, "HOME=") || strings.HasPrefix(kv, "CURRENT_ENV=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "HOME="+home)
}

func runSetup(t *testing.T, binary, appDir, home string, args ...string) string {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Dir = appDir
	cmd.Env = setupEnv(home)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	return string(out)
}

// snapshotTree returns every file and folder under dir with its mode, modification time and a
// hash of its content.
func snapshotTree(t *testing.T, dir string) map[string]string {
	t.Helper()
	files := map[string]string{}
	require.NoError(t, filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		entry := fmt.Sprintf("%s %s", info.Mode(), info.ModTime().Format(time.RFC3339Nano))
		if !d.IsDir() {
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			entry += fmt.Sprintf(" %x", sha256.Sum256(data))
		}
		files[path] = entry
		return nil
	}))
	return files
}

func TestSetupTwiceChangesNothing(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	appDir, home := filepath.Join(root, "app"), filepath.Join(root, "home")
	require.NoError(t, os.MkdirAll(appDir, 0o755))
	require.NoError(t, os.MkdirAll(home, 0o755))

	out := runSetup(t, boltBinary, appDir, home, "setup")
	script := filepath.Join(appDir, "bolt_watchdog")
	require.Contains(t, out, "* * * * * /bin/bash -l -c 'nice "+script+"'\n")
	for _, dir := range []string{filepath.Join(appDir, "log"), filepath.Join(appDir, "tmp"), filepath.Join(home, "flagella", "timestamps")} {
		require.DirExists(t, dir)
	}
	info, err := os.Stat(script)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o755), info.Mode().Perm())
	require.Contains(t, readFile(t, script), boltBinary+" watchdog --app "+appDir)

	// bolt.conf lists every setting with its default, all commented out.
	conf := readFile(t, filepath.Join(appDir, "bolt.conf"))
	for _, line := range strings.Split(conf, "\n") {
		require.True(t, line == "" || strings.HasPrefix(line, "#"), "uncommented line in bolt.conf: %q", line)
	}
	for _, s := range config.Settings {
		require.Contains(t, conf, strings.TrimSpace("# "+s.Name+" = "+s.Default)+"\n")
	}

	before := snapshotTree(t, root)
	out = runSetup(t, boltBinary, appDir, home, "setup")
	require.Equal(t, before, snapshotTree(t, root), "a second bolt setup must change nothing")
	require.Contains(t, out, "kept       "+filepath.Join(appDir, "bolt.conf"))
	require.Contains(t, out, "unchanged  "+script)

	edited := "# mine\nthrottle = 7\n"
	require.NoError(t, os.WriteFile(filepath.Join(appDir, "bolt.conf"), []byte(edited), 0o644))
	runSetup(t, boltBinary, appDir, home, "setup")
	require.Equal(t, edited, readFile(t, filepath.Join(appDir, "bolt.conf")), "bolt setup must keep an edited configuration file")
}

func TestSetupCalledAsBoltSetup(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	appDir, home := filepath.Join(root, "app"), filepath.Join(root, "home")
	require.NoError(t, os.MkdirAll(appDir, 0o755))
	link := filepath.Join(root, "bin", "bolt_setup")
	require.NoError(t, os.MkdirAll(filepath.Dir(link), 0o755))
	require.NoError(t, os.Symlink(boltBinary, link))

	out := runSetup(t, link, appDir, home)
	require.Contains(t, out, "crontab")
	// The script runs the real binary, not the bolt_setup name, which would run setup again.
	require.Contains(t, readFile(t, filepath.Join(appDir, "bolt_watchdog")), "exec "+boltBinary+" watchdog")
}

func TestSetupSystemdWritesUnit(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	appDir, home := filepath.Join(root, "shop"), filepath.Join(root, "home")
	require.NoError(t, os.MkdirAll(appDir, 0o755))

	out := runSetup(t, boltBinary, appDir, home, "setup", "--systemd", "--env", "production")
	unitPath := filepath.Join(appDir, "bolt-shop.service")
	require.Contains(t, out, "systemctl link "+unitPath)
	unit := readFile(t, unitPath)
	require.Contains(t, unit, "ExecStart="+boltBinary+" run --app "+appDir+" --env production\n")
	require.Contains(t, unit, "WorkingDirectory="+appDir+"\n")
	require.Contains(t, unit, "KillMode=mixed\n")
	require.Contains(t, unit, "Restart=always\n")
	require.Contains(t, unit, "TimeoutStopSec=65\n", "stop_grace 30 + kill_grace 5 + 30")
	require.Contains(t, unit, "ExecReload=/bin/kill -HUP $MAINPID\n")
	require.NoFileExists(t, filepath.Join(appDir, "bolt_watchdog"), "with systemd no watchdog script is needed")
}

func TestInvalidStopSettingsStopAtStart(t *testing.T) {
	t.Parallel()
	cases := []struct {
		args []string
		want []string
	}{
		{[]string{"--heartbeat-warn", "300"}, []string{"heartbeat_warn", "less than heartbeat_kill"}},
		{[]string{"--heartbeat-kill", "5"}, []string{"heartbeat_kill", `"5"`, "from 10 to"}},
		{[]string{"--stop-grace", "400"}, []string{"stop_grace", "400", "raise heartbeat_kill"}},
		{[]string{"--stop-grace", "-1"}, []string{"stop_grace", `"-1"`, "greater than 0"}},
		{[]string{"--heartbeat-name", "my__app"}, []string{"heartbeat_name", "my__app", "no '__'"}},
	}
	for _, c := range cases {
		dir := t.TempDir()
		cmd := exec.Command(boltBinary, append([]string{"run", "--drain", "--app", dir}, c.args...)...)
		out, err := cmd.CombinedOutput()
		require.Error(t, err, "%v", c.args)
		for _, want := range c.want {
			require.Contains(t, string(out), want, "%v", c.args)
		}
		require.NoDirExists(t, filepath.Join(dir, "tmp"), "a rejected setting stops Bolt before it creates files")
	}
}

// TestWatchdogKeepsOneBoltAlive runs the script that bolt setup writes, as cron would, through
// kill -9, both kill files and SIGTERM, and checks that every task runs and nothing is left.
func TestWatchdogKeepsOneBoltAlive(t *testing.T) {
	t.Parallel()
	app := newOpsApp(t, "lease = 2\nstop_grace = 2\nmax_attempts = 20\nthrottle = 3\n")
	app.writeExecutable("work", `#!/bin/sh
echo $$ >> "runs-$BOLT_TASK_ID"
sleep 1
touch "done-$BOLT_TASK_ID"
`)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := app.command(ctx, "setup").CombinedOutput()
	require.NoError(t, err, "%s", out)
	script := filepath.Join(app.dir, "bolt_watchdog")
	require.Contains(t, string(out), "nice "+script)

	cron := func() int {
		t.Helper()
		cmd := exec.CommandContext(ctx, "/bin/bash", "-c", "nice "+script)
		cmd.Env = app.command(ctx).Env
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "watchdog script failed: %s\nlog:\n%s", out, app.log())
		pid := app.daemonPID()
		require.Equal(t, []int{pid}, daemonsIn(app.dir), "exactly one Bolt must be alive after a watchdog run; log:\n%s", app.log())
		return pid
	}
	var ids []bson.ObjectID
	enqueue := func(n int) {
		for range n {
			ids = append(ids, app.insert(bson.D{{Key: "task", Value: "work"}}))
		}
	}
	waitRunning := func() {
		waitFor(t, time.Minute, "a task to run", func() bool {
			for _, id := range ids {
				_, started := os.Stat(filepath.Join(app.dir, "runs-"+id.Hex()))
				_, done := os.Stat(filepath.Join(app.dir, "done-"+id.Hex()))
				if started == nil && done != nil {
					return true
				}
			}
			return false
		})
	}

	pid := cron()
	enqueue(8)
	waitRunning()
	require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
	requireProcessesGone(t, pid)

	for _, name := range []string{"kill.flagella", "kill.bolt"} {
		pid = cron()
		enqueue(3)
		waitRunning()
		touchFile(t, filepath.Join(app.dir, "tmp", name))
		requireProcessesGone(t, pid)
	}

	pid = cron()
	require.Equal(t, pid, cron(), "a second run leaves the healthy daemon alone")
	enqueue(3)
	waitRunning()
	require.NoError(t, syscall.Kill(pid, syscall.SIGTERM))
	requireProcessesGone(t, pid)

	pid = cron()
	waitFor(t, 3*time.Minute, "every task to finish", func() bool { return app.count() == 0 })
	for _, id := range ids {
		require.FileExists(t, filepath.Join(app.dir, "done-"+id.Hex()), "task %s was lost", id.Hex())
	}
	require.NoError(t, syscall.Kill(pid, syscall.SIGTERM))
	requireProcessesGone(t, pid)
	requireNoProcessesIn(t, app.dir)
}
