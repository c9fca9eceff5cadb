package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.mongodb.org/mongo-driver/v2/bson"
)

func TestRubyTaskGetsWholeDocument(t *testing.T) {
	t.Parallel()
	app := newApp(t)
	app.writeFile("config/bolt.rb", "GREETING = 'hi from boot'\n")
	app.writeRuby("greet", `
module Bolt
  module Tasks
    module Greet
      def self.run(task:)
        File.write("out.json", JSON.generate({"greeting" => GREETING, "task" => task}))
        task["answer"] = 42
      end
    end
  end
end
`)
	id := app.insert(bson.D{{Key: "task", Value: "greet"}, {Key: "name", Value: "Ada"}, {Key: "nested", Value: bson.D{{Key: "n", Value: 1}}}})

	app.drain()

	var got struct {
		Greeting string         `json:"greeting"`
		Task     map[string]any `json:"task"`
	}
	require.NoError(t, json.Unmarshal([]byte(readFile(t, filepath.Join(app.dir, "out.json"))), &got))
	require.Equal(t, "hi from boot", got.Greeting)
	require.Equal(t, "Ada", got.Task["name"])
	require.Equal(t, "greet", got.Task["task"])
	require.Equal(t, id.Hex(), got.Task["_id"])
	require.Equal(t, map[string]any{"n": float64(1)}, got.Task["nested"])
	require.Contains(t, app.logLine(id, "task finished"), "success=true")
	require.Zero(t, app.count(), "finished task's document must be removed")
}

func TestRubyTaskPositionalArgsStyle(t *testing.T) {
	t.Parallel()
	app := newApp(t)
	app.writeRuby("legacy/old_style", `
module Bolt
  module Tasks
    module Legacy
      module OldStyle
        def self.run(args)
          File.write("old_style.txt", args[:task]["word"])
        end
      end
    end
  end
end
`)
	app.insert(bson.D{{Key: "task", Value: "legacy/old_style"}, {Key: "word", Value: "namespaced"}})
	app.drain()
	require.Equal(t, "namespaced", readFile(t, filepath.Join(app.dir, "old_style.txt")))
}

func TestExecutableGetsExtendedJSONAndEnvironment(t *testing.T) {
	t.Parallel()
	app := newApp(t)
	app.writeExecutable("dump", `#!/bin/sh
cat > stdin.json
env | grep '^BOLT_' | grep -v RESULT_FILE | sort > env.txt
`)
	when := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	id := app.insert(bson.D{
		{Key: "task", Value: "dump"},
		{Key: "big", Value: int64(1) << 53},
		{Key: "when", Value: when},
		{Key: "blob", Value: bson.Binary{Subtype: 0, Data: []byte{1, 2, 3}}},
	})
	app.drain()

	stdin := readFile(t, filepath.Join(app.dir, "stdin.json"))
	var doc bson.M
	require.NoError(t, bson.UnmarshalExtJSON([]byte(stdin), true, &doc))
	require.Equal(t, id, doc["_id"])
	require.Equal(t, int64(1)<<53, doc["big"])
	require.Equal(t, bson.NewDateTimeFromTime(when), doc["when"])
	require.Equal(t, bson.Binary{Subtype: 0, Data: []byte{1, 2, 3}}, doc["blob"])
	require.Equal(t, true, doc["dispatched"])

	env := readFile(t, filepath.Join(app.dir, "env.txt"))
	require.Contains(t, env, "BOLT_TASK_ID="+id.Hex()+"\n")
	require.Contains(t, env, "BOLT_TASK=dump\n")
	require.Contains(t, env, "BOLT_ENV=test\n")
	require.Contains(t, env, "BOLT_DATABASE=bolt_test\n")
	require.Contains(t, env, "BOLT_COLLECTION=task_queue\n")
	require.Contains(t, env, "BOLT_MONGO_URI="+app.uri+"\n")
}

func TestExecutableFailureRecordsExitAndStderr(t *testing.T) {
	t.Parallel()
	app := newApp(t)
	app.writeExecutable("broken", "#!/bin/sh\necho 'first problem' >&2\necho 'last problem' >&2\nexit 3\n")
	id := app.insert(bson.D{{Key: "task", Value: "broken"}})
	app.drain()

	line := app.logLine(id, "task failed")
	require.Contains(t, line, "exited with status 3")
	mail := mailFor(t, app, id)
	require.Contains(t, mail, "last problem")
	require.Zero(t, app.count())
}

func TestRubyExceptionRecordsClassAndBacktrace(t *testing.T) {
	t.Parallel()
	app := newApp(t)
	app.writeRuby("explode", `
module Bolt
  module Tasks
    module Explode
      def self.run(task:)
        raise ArgumentError, "bad input #{task['n']}"
      end
    end
  end
end
`)
	id := app.insert(bson.D{{Key: "task", Value: "explode"}, {Key: "n", Value: 7}})
	app.drain()
	require.Contains(t, app.logLine(id, "task failed"), "ArgumentError: bad input 7")
	require.Contains(t, mailFor(t, app, id), "explode.rb:6")
}

func TestBadDocumentsFailAndDaemonLives(t *testing.T) {
	t.Parallel()
	app := newApp(t)
	app.writeExecutable("ok", "#!/bin/sh\ntouch \"ran-$BOLT_TASK_ID\"\n")
	app.writeFile("lib/bolt/tasks/not_executable", "#!/bin/sh\nexit 0\n")
	app.writeRuby("syntax_error", "module Bolt\n  module Tasks\n    module SyntaxError\n      def self.run(task:\n")
	app.writeRuby("no_run", "module Bolt\n  module Tasks\n    module NoRun\n    end\n  end\nend\n")
	app.writeFile("secret/bolt/tasks/outside", "#!/bin/sh\ntouch escaped\n")

	cases := []struct {
		doc  bson.D
		want string
	}{
		{bson.D{{Key: "name", Value: "no task field"}}, "task is missing"},
		{bson.D{{Key: "task", Value: 42}}, "task must be a string"},
		{bson.D{{Key: "task", Value: "does_not_exist"}}, "not found"},
		{bson.D{{Key: "task", Value: "../secret/bolt/tasks/outside"}}, "invalid task name"},
		{bson.D{{Key: "task", Value: "Upper"}}, "invalid task name"},
		{bson.D{{Key: "task", Value: "ok"}, {Key: "timeout", Value: -1}}, "invalid timeout"},
		{bson.D{{Key: "task", Value: "ok"}, {Key: "timeout", Value: 0}}, "invalid timeout"},
		{bson.D{{Key: "task", Value: "ok"}, {Key: "timeout", Value: "10"}}, "invalid timeout"},
		{bson.D{{Key: "task", Value: "ok"}, {Key: "timeout", Value: 1e12}}, "invalid timeout"},
		{bson.D{{Key: "task", Value: "ok"}, {Key: "run_at", Value: "tomorrow"}}, "invalid run_at"},
		{bson.D{{Key: "task", Value: "ok"}, {Key: "run_at", Value: -5}}, "invalid run_at"},
		{bson.D{{Key: "task", Value: "ok"}, {Key: "run_at", Value: time.Now().UnixMilli()}}, "looks like milliseconds"},
		{bson.D{{Key: "task", Value: "not_executable"}}, "not executable"},
		{bson.D{{Key: "task", Value: "syntax_error"}}, "SyntaxError"},
		{bson.D{{Key: "task", Value: "no_run"}}, "NoMethodError"},
	}
	ids := make([]bson.ObjectID, len(cases))
	for i, c := range cases {
		ids[i] = app.insert(c.doc)
	}
	good := app.insert(bson.D{{Key: "task", Value: "ok"}})
	nullRunAt := app.insert(bson.D{{Key: "task", Value: "ok"}, {Key: "run_at", Value: nil}})

	app.drain()

	for i, c := range cases {
		line := app.logLine(ids[i], "success=false")
		require.Contains(t, line, c.want, "document %v", c.doc)
	}
	require.FileExists(t, filepath.Join(app.dir, "ran-"+good.Hex()))
	require.FileExists(t, filepath.Join(app.dir, "ran-"+nullRunAt.Hex()), "a null run_at runs now")
	require.NoFileExists(t, filepath.Join(app.dir, "escaped"))
	require.Zero(t, app.count(), "every bad document must be failed and removed, not left waiting")
}

func TestTimeoutKillsGroupWithGrandchild(t *testing.T) {
	t.Parallel()
	app := newApp(t)
	// The task ignores SIGTERM and leaves a grandchild that would outlive it.
	app.writeExecutable("stubborn", `#!/bin/sh
trap '' TERM
sleep 1000 &
echo $! > grandchild.pid
echo $$ > leader.pid
while true; do sleep 1; done
`)
	id := app.insert(bson.D{{Key: "task", Value: "stubborn"}, {Key: "timeout", Value: 1}})
	app.drain()

	require.Contains(t, app.logLine(id, "task timed out"), "timed out after 1s")
	for _, name := range []string{"leader.pid", "grandchild.pid"} {
		pid, err := strconv.Atoi(strings.TrimSpace(readFile(t, filepath.Join(app.dir, name))))
		require.NoError(t, err)
		waitFor(t, 10*time.Second, name+" to be gone", func() bool { return processGone(pid) })
	}
	require.Zero(t, app.count())
}

func TestTaskDaemonForkOutlivingItIsKilled(t *testing.T) {
	t.Parallel()
	app := newApp(t)
	app.writeExecutable("forker", `#!/bin/sh
sleep 1000 &
echo $! > daemon.pid
exit 0
`)
	id := app.insert(bson.D{{Key: "task", Value: "forker"}})
	app.drain()
	require.Contains(t, app.logLine(id, "task finished"), "success=true")
	pid, err := strconv.Atoi(strings.TrimSpace(readFile(t, filepath.Join(app.dir, "daemon.pid"))))
	require.NoError(t, err)
	waitFor(t, 10*time.Second, "the forked daemon to be killed", func() bool { return processGone(pid) })
}

func TestSegfaultAndGarbageOutput(t *testing.T) {
	t.Parallel()
	app := newApp(t)
	app.writeExecutable("segv", "#!/bin/sh\nkill -SEGV $$\n")
	app.writeExecutable("garbage", "#!/bin/sh\nhead -c 100000 /dev/urandom\nexit 0\n")
	segv := app.insert(bson.D{{Key: "task", Value: "segv"}})
	garbage := app.insert(bson.D{{Key: "task", Value: "garbage"}})
	app.drain()
	require.Contains(t, app.logLine(segv, "task failed"), "killed by signal SIGSEGV")
	require.Contains(t, app.logLine(garbage, "task finished"), "success=true")
}

func TestLargeDocument(t *testing.T) {
	t.Parallel()
	app := newApp(t)
	app.writeExecutable("size", "#!/bin/sh\nwc -c > size.txt\n")
	app.insert(bson.D{{Key: "task", Value: "size"}, {Key: "payload", Value: strings.Repeat("x", 15<<20)}})
	app.drain()
	size, err := strconv.Atoi(strings.TrimSpace(readFile(t, filepath.Join(app.dir, "size.txt"))))
	require.NoError(t, err)
	require.Greater(t, size, 15<<20)
	require.Zero(t, app.count())
}

func TestRunAtDelaysTask(t *testing.T) {
	t.Parallel()
	app := newApp(t)
	// The stamp is renamed into place so the test never reads a half-written file.
	app.writeExecutable("stamp", "#!/bin/sh\ndate +%s.%N > stamp.tmp\nmv stamp.tmp \"stamp-$BOLT_TASK_ID\"\n")
	runAt := time.Now().Add(2 * time.Second)
	later := app.insert(bson.D{{Key: "task", Value: "stamp"}, {Key: "run_at", Value: float64(runAt.UnixNano()) / 1e9}})

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := app.command(ctx, "run")
	require.NoError(t, cmd.Start())
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()

	stamp := filepath.Join(app.dir, "stamp-"+later.Hex())
	waitFor(t, time.Minute, "the scheduled task to run", func() bool { _, err := os.Stat(stamp); return err == nil })
	ran, err := strconv.ParseFloat(strings.TrimSpace(readFile(t, stamp)), 64)
	require.NoError(t, err)
	require.GreaterOrEqual(t, ran, float64(runAt.UnixNano())/1e9, "task started before its run_at")
}

func TestThrottleBoundsConcurrency(t *testing.T) {
	t.Parallel()
	app := newApp(t)
	// Each task records how many tasks run beside it, using a lock folder as a counter.
	app.writeExecutable("count", `#!/bin/sh
mkdir -p running
touch "running/$BOLT_TASK_ID"
ls running | wc -l >> concurrency.txt
sleep 0.3
rm "running/$BOLT_TASK_ID"
`)
	for i := 0; i < 8; i++ {
		app.insert(bson.D{{Key: "task", Value: "count"}})
	}
	app.drain("--throttle", "2")
	lines := strings.Fields(readFile(t, filepath.Join(app.dir, "concurrency.txt")))
	require.Len(t, lines, 8)
	for _, l := range lines {
		n, err := strconv.Atoi(l)
		require.NoError(t, err)
		require.LessOrEqual(t, n, 2)
	}
}

// mailFor returns the notification mail written for the task under tmp/mail.
func mailFor(t *testing.T, app *testApp, id bson.ObjectID) string {
	t.Helper()
	var found string
	defer func() {
		if found == "" {
			t.Logf("daemon log:\n%s", app.log())
		}
	}()
	waitFor(t, 30*time.Second, "the mail about task "+id.Hex(), func() bool {
		entries, _ := os.ReadDir(filepath.Join(app.dir, "tmp", "mail"))
		for _, e := range entries {
			data, _ := os.ReadFile(filepath.Join(app.dir, "tmp", "mail", e.Name()))
			if strings.Contains(string(data), id.Hex()) {
				found = string(data)
				return true
			}
		}
		return false
	})
	return found
}
