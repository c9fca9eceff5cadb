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

// requireRubyInPath skips the test when Ruby is missing, except in CI, where a missing
// Ruby is a failure.
func requireRubyInPath(t *testing.T) {
	t.Helper()

	if _, err := exec.LookPath("ruby"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("ruby is required in CI: %v", err)
		}
		t.Skipf("ruby not installed (apt-get install ruby): %v", err)
	}
}

// lingeringTask is a Ruby task that records its process, its parent (the preloader) and
// a grandchild in its process group, and then waits until it is killed.
const lingeringTask = `
class Bolt::Tasks::Linger
  def self.run(task:)
    grandchild = Process.spawn("sleep", "600")
    File.write("pids/#{task['_id']}.tmp", [Process.pid, Process.ppid, grandchild].join(" "))
    File.rename("pids/#{task['_id']}.tmp", "pids/#{task['_id']}")
    sleep 600
  end
end
`

// startLingeringTasks starts `bolt run` with two lingering tasks and returns the daemon
// and the process IDs that the tasks recorded.
func startLingeringTasks(t *testing.T, app *testApp) (*exec.Cmd, []int) {
	t.Helper()

	app.writeRuby("linger", lingeringTask)
	require.NoError(t, os.MkdirAll(filepath.Join(app.dir, "pids"), 0o755))
	ids := []bson.ObjectID{
		app.insert(bson.D{{Key: "task", Value: "linger"}}),
		app.insert(bson.D{{Key: "task", Value: "linger"}}),
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	daemon := app.command(ctx, "run")
	require.NoError(t, daemon.Start())
	t.Cleanup(func() {
		_ = daemon.Process.Kill()
		_ = daemon.Wait()
	})

	var pids []int
	for _, id := range ids {
		path := filepath.Join(app.dir, "pids", id.Hex())
		waitFor(t, time.Minute, "task "+id.Hex()+" to start", func() bool { _, err := os.Stat(path); return err == nil })
		for _, field := range strings.Fields(readFile(t, path)) {
			pid, err := strconv.Atoi(field)
			require.NoError(t, err)
			pids = append(pids, pid)
		}
	}
	require.Len(t, pids, 6)
	require.Equal(t, pids[1], pids[4], "both tasks must be children of one preloader")
	require.NotEqual(t, daemon.Process.Pid, pids[1], "the task's parent must be the preloader, not Bolt")

	return daemon, pids
}

func TestPreloadedTasksDieWithKilledBolt(t *testing.T) {
	t.Parallel()
	requireRubyInPath(t)
	app := newApp(t)
	daemon, pids := startLingeringTasks(t, app)

	require.NoError(t, daemon.Process.Signal(syscall.SIGKILL))
	_ = daemon.Wait()

	// Tasks, their grandchildren and the preloader all end with Bolt.
	for _, pid := range pids {
		waitFor(t, 10*time.Second, "process "+strconv.Itoa(pid)+" to die with Bolt", func() bool { return processGone(pid) })
	}
}

func TestPreloadedTasksDieWithKilledBoltAndPreloader(t *testing.T) {
	t.Parallel()
	requireRubyInPath(t)
	app := newApp(t)
	daemon, pids := startLingeringTasks(t, app)

	require.NoError(t, syscall.Kill(pids[1], syscall.SIGKILL))
	require.NoError(t, daemon.Process.Signal(syscall.SIGKILL))
	_ = daemon.Wait()

	for _, pid := range pids {
		waitFor(t, 10*time.Second, "process "+strconv.Itoa(pid)+" to die with Bolt", func() bool { return processGone(pid) })
	}
}

func TestBootSyntaxErrorFailsOnlyRubyTasks(t *testing.T) {
	t.Parallel()
	requireRubyInPath(t)
	app := newApp(t)
	app.writeFile("config/bolt.rb", "def broken(\n")
	app.writeRuby("greet", "class Bolt::Tasks::Greet\n  def self.run(task:) = nil\nend\n")
	app.writeExecutable("disk_usage", "#!/bin/sh\necho fine\n")
	rubyIDs := []bson.ObjectID{
		app.insert(bson.D{{Key: "task", Value: "greet"}}),
		app.insert(bson.D{{Key: "task", Value: "greet"}}),
	}
	executableID := app.insert(bson.D{{Key: "task", Value: "disk_usage"}})

	app.drain()

	for _, id := range rubyIDs {
		line := app.logLine(id, "task failed")
		require.Contains(t, line, "boot file "+filepath.Join(app.dir, "config", "bolt.rb")+" failed: SyntaxError")
	}
	require.Contains(t, app.logLine(executableID, "task finished"), "success=true")
	require.Equal(t, 1, strings.Count(app.log(), "booting the application failed"), "log:\n%s", app.log())
	require.Zero(t, app.count())
}

func TestRubyPreloadSettingChoosesParent(t *testing.T) {
	t.Parallel()
	requireRubyInPath(t)

	for _, preload := range []bool{true, false} {
		app := newApp(t)
		app.writeFile("config/bolt.rb", `File.open("boots.log", "a") { |f| f.puts(Process.pid) }`+"\n")
		app.writeRuby("parent", `
class Bolt::Tasks::Parent
  def self.run(task:)
    File.write("parent-#{task['_id']}", Process.ppid.to_s)
  end
end
`)
		ids := []bson.ObjectID{
			app.insert(bson.D{{Key: "task", Value: "parent"}}),
			app.insert(bson.D{{Key: "task", Value: "parent"}}),
			app.insert(bson.D{{Key: "task", Value: "parent"}}),
		}

		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		daemon := app.command(ctx, "run", "--drain", "--ruby-preload="+strconv.FormatBool(preload))
		output, err := daemon.CombinedOutput()
		cancel()
		require.NoError(t, err, "bolt run failed:\n%s\nlog:\n%s", output, app.log())

		boltPID := daemon.Process.Pid
		boots := strings.Fields(readFile(t, filepath.Join(app.dir, "boots.log")))
		for _, id := range ids {
			parent, err := strconv.Atoi(readFile(t, filepath.Join(app.dir, "parent-"+id.Hex())))
			require.NoError(t, err)
			if preload {
				require.NotEqual(t, boltPID, parent, "a preloaded task is forked by the preloader")
				require.Equal(t, boots[0], strconv.Itoa(parent))
			} else {
				require.Equal(t, boltPID, parent, "without preloading Bolt starts each task")
			}
		}
		if preload {
			require.Len(t, boots, 1, "the boot file is loaded once")
		} else {
			require.Len(t, boots, 3, "the boot file is loaded by each task")
			require.Contains(t, app.log(), "Ruby preloading is off")
		}
	}
}
