package main

import (
	"context"
	"fmt"
	"net/url"
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
)

// startDaemon starts `bolt run` in the application folder with extra environment variables
// and stops it (SIGKILL) when the test ends.
func (a *testApp) startDaemon(args []string, env ...string) *exec.Cmd {
	a.t.Helper()
	cmd := exec.Command(boltBinary, append([]string{"run"}, args...)...)
	cmd.Dir = a.dir
	cmd.Env = append(append(os.Environ(), "CURRENT_ENV=test"), env...)
	require.NoError(a.t, cmd.Start())
	a.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd
}

// setConfig replaces bolt.conf, keeping the store's URI.
func (a *testApp) setConfig(lines ...string) {
	a.t.Helper()
	a.writeFile("bolt.conf", fmt.Sprintf("mongo_uri = %s\n%s\n", a.uri, strings.Join(lines, "\n")))
}

// peer returns another application folder on the same store, as a daemon on a second
// machine would have: its own bolt.conf, log and lock, and a copy of the tasks.
func (a *testApp) peer() *testApp {
	a.t.Helper()
	p := &testApp{t: a.t, dir: a.t.TempDir(), uri: a.uri, tasks: a.tasks}
	require.NoError(a.t, os.CopyFS(p.dir, os.DirFS(a.dir)))
	for _, private := range []string{"log", "tmp", "db"} {
		require.NoError(a.t, os.RemoveAll(filepath.Join(p.dir, private)))
	}
	return p
}

// lines returns the non-empty lines of a file in the application folder.
func (a *testApp) lines(name string) []string {
	data, _ := os.ReadFile(filepath.Join(a.dir, name))
	return strings.Fields(string(data))
}

func TestFourDaemonsRunEachTaskOnce(t *testing.T) {
	t.Parallel()
	app := newApp(t)
	app.setConfig("lease = 5")
	ids := filepath.Join(app.dir, "ids.txt")
	app.writeExecutable("append", "#!/bin/sh\necho \"$BOLT_TASK_ID\" >> "+ids+"\n")

	const tasks = 2000
	docs := make([]any, tasks)
	want := map[string]bool{}
	for i := range docs {
		id := bson.NewObjectID()
		want[id.Hex()] = true
		docs[i] = bson.D{{Key: "_id", Value: id}, {Key: "task", Value: "append"}}
	}
	_, err := app.tasks.InsertMany(context.Background(), docs)
	require.NoError(t, err)

	peers := []*testApp{app, app.peer(), app.peer(), app.peer()}
	var daemons []*exec.Cmd
	for _, p := range peers {
		daemons = append(daemons, p.startDaemon([]string{"--drain"}))
	}
	for i, d := range daemons {
		require.NoError(t, d.Wait(), "daemon %d failed; its log:\n%s", i, peers[i].log())
	}

	seen := map[string]int{}
	for _, id := range app.lines("ids.txt") {
		seen[id]++
	}
	for id := range want {
		require.Equal(t, 1, seen[id], "task %s ran %d times", id, seen[id])
	}
	require.Len(t, seen, tasks)
	require.Zero(t, app.count())
}

func TestKilledDaemonsTasksRunOnceMoreElsewhere(t *testing.T) {
	t.Parallel()
	app := newApp(t)
	app.setConfig("lease = 3", "throttle = 3", "kill_grace = 1")
	// Each run logs "<task id> <daemon pid>", then blocks until the file go exists.
	app.writeExecutable("long", fmt.Sprintf(`#!/bin/sh
echo "$BOLT_TASK_ID $PPID" >> %[1]s/runs.txt
while [ ! -e %[1]s/go ]; do sleep 0.1; done
`, app.dir))
	for i := 0; i < 6; i++ {
		app.insert(bson.D{{Key: "task", Value: "long"}})
	}

	first := app.startDaemon(nil)
	waitFor(t, time.Minute, "the first daemon to start 3 tasks", func() bool { return len(app.lines("runs.txt")) == 6 })
	second := app.peer().startDaemon(nil)
	waitFor(t, time.Minute, "the second daemon to start the other 3", func() bool { return len(app.lines("runs.txt")) == 12 })

	firstPID := strconv.Itoa(first.Process.Pid)
	require.NoError(t, first.Process.Signal(syscall.SIGKILL))
	_ = first.Wait()
	app.writeFile("go", "")

	waitFor(t, time.Minute, "the queue to empty", func() bool { return app.count() == 0 })
	require.NoError(t, second.Process.Signal(syscall.SIGTERM))
	require.NoError(t, second.Wait())

	runs := map[string][]string{}
	fields := app.lines("runs.txt")
	for i := 0; i+1 < len(fields); i += 2 {
		runs[fields[i]] = append(runs[fields[i]], fields[i+1])
	}
	require.Len(t, runs, 6)
	secondPID := strconv.Itoa(second.Process.Pid)
	for id, daemons := range runs {
		if daemons[0] == firstPID {
			require.Equal(t, []string{firstPID, secondPID}, daemons, "task %s of the killed daemon must run once more elsewhere", id)
		} else {
			require.Equal(t, []string{secondPID}, daemons, "task %s of the live daemon must run once", id)
		}
	}
}

func TestDaemonKillerFailsAfterMaxAttempts(t *testing.T) {
	t.Parallel()
	app := newApp(t)
	app.setConfig("max_attempts = 3")
	app.writeExecutable("assassin", "#!/bin/sh\necho run >> runs.txt\nkill -9 $PPID\nsleep 5\n")
	id := app.insert(bson.D{{Key: "task", Value: "assassin"}})

	for restart := 0; app.count() > 0; restart++ {
		require.Less(t, restart, 6, "the task was not failed after max_attempts")
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		_ = app.command(ctx, "run", "--drain").Run()
		cancel()
	}
	require.Len(t, app.lines("runs.txt"), 3)
	require.Contains(t, app.logLine(id, "task rejected"), "interrupted 3 times")
}

func TestDaemonsSurviveStoreOutage(t *testing.T) {
	t.Parallel()
	dataDir := filepath.Join(t.TempDir(), "db")
	app := newApp(t)
	// newApp started a store in its own folder; this test needs one it can stop and
	// start again on the same port and data.
	db := startRestartableDB(t, dataDir, "127.0.0.1:0")
	app.uri = db.uri
	app.tasks = connect(t, db.uri)
	app.setConfig("lease = 3", "throttle = 4")
	app.writeExecutable("work", "#!/bin/sh\necho \"$BOLT_TASK_ID\" >> "+filepath.Join(app.dir, "ids.txt")+"\nsleep 0.5\n")

	const tasks = 40
	for i := 0; i < tasks; i++ {
		app.insert(bson.D{{Key: "task", Value: "work"}})
	}
	daemons := []*exec.Cmd{app.startDaemon(nil), app.peer().startDaemon(nil)}
	waitFor(t, time.Minute, "some tasks to run", func() bool { return len(app.lines("ids.txt")) >= 5 })

	db.stop(t)
	outage := time.Now()
	for time.Since(outage) < 30*time.Second {
		// The daemons stay up while the store is down.
		for _, d := range daemons {
			require.NoError(t, d.Process.Signal(syscall.Signal(0)))
		}
		time.Sleep(time.Second)
	}
	db = startRestartableDB(t, dataDir, db.addr)

	waitFor(t, 3*time.Minute, "every task to finish after the outage", func() bool { return app.count() == 0 && len(app.lines("ids.txt")) >= tasks })
	seen := map[string]int{}
	for _, id := range app.lines("ids.txt") {
		seen[id]++
	}
	require.Len(t, seen, tasks)
	for id, n := range seen {
		require.Equal(t, 1, n, "task %s ran %d times", id, n)
	}
}

func TestClockSkewKeepsScheduleAndLiveness(t *testing.T) {
	t.Parallel()
	app := newApp(t)
	app.setConfig("lease = 2")
	app.writeExecutable("stamp", "#!/bin/sh\ndate +%s.%N > \""+app.dir+"/stamp-$BOLT_TASK_ID.tmp\"\nmv \""+app.dir+"/stamp-$BOLT_TASK_ID.tmp\" \""+app.dir+"/stamp-$BOLT_TASK_ID\"\n")
	app.writeExecutable("long", "#!/bin/sh\necho \"$BOLT_TASK_ID\" >> "+app.dir+"/long.txt\nsleep 8\n")

	behind := app.peer()
	app.startDaemon(nil, "BOLT_TEST_CLOCK_SKEW=5m")
	behind.startDaemon(nil, "BOLT_TEST_CLOCK_SKEW=-5m")

	long := app.insert(bson.D{{Key: "task", Value: "long"}})
	runAt := time.Now().Add(3 * time.Second)
	var stamped []bson.ObjectID
	for i := 0; i < 4; i++ {
		stamped = append(stamped, app.insert(bson.D{{Key: "task", Value: "stamp"}, {Key: "run_at", Value: float64(runAt.UnixNano()) / 1e9}}))
	}

	waitFor(t, 2*time.Minute, "the queue to empty", func() bool { return app.count() == 0 })
	for _, id := range stamped {
		ran, err := strconv.ParseFloat(strings.TrimSpace(readFile(t, filepath.Join(app.dir, "stamp-"+id.Hex()))), 64)
		require.NoError(t, err)
		// BSON dates and the server's clock reading have millisecond precision.
		require.GreaterOrEqual(t, ran, float64(runAt.UnixNano())/1e9-0.002, "task %s ran early", id.Hex())
	}
	require.Equal(t, []string{long.Hex()}, app.lines("long.txt"), "a live daemon's long task must not be recycled")
	require.NotContains(t, app.log(), "recycled tasks")
	require.NotContains(t, behind.log(), "recycled tasks")
}

// restartableDB is a `bolt db` the test can stop and start again.
type restartableDB struct {
	cmd  *exec.Cmd
	uri  string
	addr string
}

func startRestartableDB(t *testing.T, dataDir, addr string) *restartableDB {
	t.Helper()
	cmd, uri := startDBAt(t, dataDir, addr)
	u, err := url.Parse(uri)
	require.NoError(t, err)
	return &restartableDB{cmd: cmd, uri: uri, addr: u.Host}
}

func (d *restartableDB) stop(t *testing.T) {
	t.Helper()
	require.NoError(t, d.cmd.Process.Signal(syscall.SIGKILL))
	_ = d.cmd.Wait()
}
