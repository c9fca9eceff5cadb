package main

import (
	"context"
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

func TestRecyclesTasksAfterKill9(t *testing.T) {
	t.Parallel()
	app := newApp(t)
	// The first run blocks, with a grandchild, until the daemon is killed; the second finishes.
	app.writeExecutable("resumable", `#!/bin/sh
echo run >> "runs-$BOLT_TASK_ID"
if [ ! -e second-run ]; then
  touch second-run
  sleep 1000 &
  echo $! > grandchild.pid
  echo $$ > "started-$BOLT_TASK_ID"
  wait
fi
`)
	id := app.insert(bson.D{{Key: "task", Value: "resumable"}})

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	daemon := app.command(ctx, "run")
	require.NoError(t, daemon.Start())
	started := filepath.Join(app.dir, "started-"+id.Hex())
	waitFor(t, time.Minute, "the task to start", func() bool { _, err := os.Stat(started); return err == nil })

	require.NoError(t, daemon.Process.Signal(syscall.SIGKILL))
	_ = daemon.Wait()

	// The task's processes die with their daemon: nothing of the first run is left.
	for _, file := range []string{started, filepath.Join(app.dir, "grandchild.pid")} {
		pid, err := strconv.Atoi(strings.TrimSpace(readFile(t, file)))
		require.NoError(t, err)
		waitFor(t, 10*time.Second, "process "+strconv.Itoa(pid)+" to die with its daemon", func() bool { return processGone(pid) })
	}

	app.drain()
	require.Equal(t, "run\nrun\n", readFile(t, filepath.Join(app.dir, "runs-"+id.Hex())))
	require.Contains(t, app.log(), "recycled tasks of a dead daemon")
	require.Zero(t, app.count())
}

func TestThirdPartyClientTasksRun(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("/usr/bin/python3"); err != nil && os.Getenv("CI") == "" {
		t.Skip("needs /usr/bin/python3 with pymongo")
	}
	app := newApp(t)
	app.writeExecutable("from_python", "#!/bin/sh\ncat > \"python-$BOLT_TASK_ID.json\"\n")
	script := `
import sys, pymongo
client = pymongo.MongoClient(sys.argv[1])
queue = client.bolt_test.task_queue
for i in range(3):
    print(queue.insert_one({"task": "from_python", "n": i}).inserted_id)
`
	out, err := exec.Command("/usr/bin/python3", "-c", script, app.uri).CombinedOutput()
	require.NoError(t, err, "pymongo insert failed: %s", out)
	ids := strings.Fields(string(out))
	require.Len(t, ids, 3)

	app.drain()
	for _, id := range ids {
		require.FileExists(t, filepath.Join(app.dir, "python-"+id+".json"))
	}
	require.Zero(t, app.count())
}

func TestEnqueueWithoutDaemonThenRunOnEmbeddedStore(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	app := &testApp{t: t, dir: dir}
	app.writeFile("bolt.conf", "db_listen = 127.0.0.1:0\n")
	app.writeExecutable("hello", "#!/bin/sh\necho hello > hello.txt\n")

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := app.command(ctx, "enqueue", "hello", "--json", `{"greeting": "hi"}`).CombinedOutput()
	require.NoError(t, err, "%s", out)
	id, err := bson.ObjectIDFromHex(strings.TrimSpace(string(out)))
	require.NoError(t, err, "enqueue must print the new task's id, got %q", out)

	app.drain()
	require.Equal(t, "hello\n", readFile(t, filepath.Join(dir, "hello.txt")))
	require.Contains(t, app.logLine(id, "task finished"), "success=true")
}

func TestInvalidEnvironmentStopsAtStart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cmd := exec.Command(boltBinary, "run", "--drain", "--app", dir)
	cmd.Env = append(os.Environ(), "CURRENT_ENV=staging")
	out, err := cmd.CombinedOutput()
	require.Error(t, err)
	require.Contains(t, string(out), "production, development, test")
	require.Contains(t, string(out), "staging")
}

func TestNewTaskArrivesThroughChangeStream(t *testing.T) {
	t.Parallel()
	testPickupPath(t, "auto", "path=change_stream")
}

func TestNewTaskArrivesThroughPolling(t *testing.T) {
	t.Parallel()
	testPickupPath(t, "poll", "path=polling")
}

// testPickupPath starts a daemon on an empty queue, inserts a task from this process once
// the daemon watches, and checks that the task runs and the daemon named the path it took.
func testPickupPath(t *testing.T, watch, wantPath string) {
	app := newApp(t)
	app.setConfig("watch = " + watch)
	app.writeExecutable("ping", "#!/bin/sh\ntouch pinged\n")
	app.startDaemon(nil)
	waitFor(t, time.Minute, "the daemon to say how it finds tasks", func() bool {
		return strings.Contains(app.log(), wantPath)
	})

	id := app.insert(bson.D{{Key: "task", Value: "ping"}})
	waitFor(t, time.Minute, "the inserted task to run", func() bool {
		_, err := os.Stat(filepath.Join(app.dir, "pinged"))
		return err == nil
	})
	require.Contains(t, app.logLine(id, "task finished"), "success=true")
	for _, other := range []string{"path=change_stream", "path=polling"} {
		if other != wantPath {
			require.NotContains(t, app.log(), other)
		}
	}
}
