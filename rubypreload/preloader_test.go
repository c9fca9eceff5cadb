package rubypreload

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/bolt-runner/bolt/childproc"
	"github.com/bolt-runner/bolt/rubyrunner"
	"github.com/bolt-runner/bolt/taskpath"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// requireRuby skips the test when Ruby is missing, except in CI, where a missing Ruby
// is a failure.
func requireRuby(t testing.TB) {
	t.Helper()

	if _, err := exec.LookPath("ruby"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("ruby is required in CI: %v", err)
		}
		t.Skipf("ruby not installed (apt-get install ruby): %v", err)
	}
}

// app is an application folder with a Preloader for one test.
type app struct {
	t         testing.TB
	dir       string
	preloader *Preloader
	log       *syncBuffer
}

// newApp creates an application folder and a Preloader for it, closed at cleanup.
func newApp(t testing.TB) *app {
	t.Helper()
	requireRuby(t)

	dir, err := filepath.EvalSymlinks(t.TempDir())
	require.NoError(t, err)
	a := &app{t: t, dir: dir, log: &syncBuffer{}}

	a.preloader, err = New(Options{
		Ruby:   rubyrunner.Options{AppDir: dir},
		Logger: zerolog.New(a.log),
	})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, a.preloader.Close()) })

	return a
}

// write creates or replaces a file in the application folder.
func (a *app) write(path, content string) {
	a.t.Helper()

	full := filepath.Join(a.dir, path)
	require.NoError(a.t, os.MkdirAll(filepath.Dir(full), 0o755))
	require.NoError(a.t, os.WriteFile(full, []byte(content), 0o644))
}

// read returns a file of the application folder.
func (a *app) read(path string) string {
	a.t.Helper()

	data, err := os.ReadFile(filepath.Join(a.dir, path))
	require.NoError(a.t, err)
	return string(data)
}

// outcome is the JSON object that the runner writes to the result file.
type outcome struct {
	Success   bool           `json:"success"`
	Ex        string         `json:"ex"`
	Backtrace []string       `json:"backtrace"`
	Fields    map[string]any `json:"fields"`
}

// spec returns the Spec that the executor would build for a task with document.
func (a *app) spec(name, document string) childproc.Spec {
	return childproc.Spec{
		Dir: a.dir,
		Env: []string{
			"PATH=" + os.Getenv("PATH"), "HOME=" + a.dir, "LANG=C.UTF-8",
			"BOLT_TASK=" + name, "BOLT_TASK_ID=id-" + name,
		},
		Stdin:   []byte(document),
		Timeout: 2 * time.Minute,
	}
}

// start runs the task through the preloader with spec and returns the raw result.
func (a *app) start(ctx context.Context, name string, spec childproc.Spec) childproc.Result {
	a.t.Helper()

	task, err := taskpath.Resolve(a.dir, nil, name)
	require.NoError(a.t, err)
	return a.preloader.RunRuby(ctx, task, spec)
}

// run runs the task with document and requires a result file.
func (a *app) run(name, document string) (childproc.Result, outcome) {
	a.t.Helper()

	result := a.start(context.Background(), name, a.spec(name, document))
	return result, a.outcome(result)
}

func (a *app) outcome(result childproc.Result) outcome {
	a.t.Helper()

	require.NoError(a.t, result.ResultErr)
	require.NotEmpty(a.t, result.ResultJSON, "no result; start error %v; stderr:\n%s", result.StartErr, result.Stderr)
	var out outcome
	require.NoError(a.t, json.Unmarshal(result.ResultJSON, &out), "result: %s", result.ResultJSON)
	return out
}

// preloaderPID returns the process ID of the current preloader.
func (a *app) preloaderPID() int {
	a.t.Helper()

	a.preloader.mu.Lock()
	defer a.preloader.mu.Unlock()
	require.NotNil(a.t, a.preloader.current, "no preloader running")
	return a.preloader.current.cmd.Process.Pid
}

// syncBuffer is a log destination that tests can read while the preloader writes to it.
type syncBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()

	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// processGone reports whether pid has ended: no such process, or a zombie.
func processGone(pid int) bool {
	if syscall.Kill(pid, 0) == syscall.ESRCH {
		return true
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	return len(fields) > 0 && fields[0] == "Z"
}

// waitForPIDFile waits until the file contains a process ID and returns it.
func (a *app) waitForPIDFile(path string) int {
	a.t.Helper()

	var pid int
	waitFor(a.t, 30*time.Second, path, func() bool {
		data, err := os.ReadFile(filepath.Join(a.dir, path))
		if err != nil {
			return false
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(data)))
		return err == nil && pid > 0
	})
	return pid
}

const bootCounter = `File.open(File.join(__dir__, "..", "boots.log"), "a") { |f| f.puts(Process.pid) }
`

func TestTaskSeesBootConstant(t *testing.T) {
	t.Parallel()

	a := newApp(t)
	a.write("config/bolt.rb", bootCounter+"GREETING = 'hello from boot'\n")
	a.write("lib/bolt/tasks/greet.rb", `
class Bolt::Tasks::Greet
  def self.run(task:)
    task["greeting"] = "#{GREETING}, #{task.fetch('name')}"
    task["env"] = [ENV["BOLT_TASK"], ENV["BOLT_TASK_ID"], ENV["BOLT_RESULT_FILE"].nil?]
    task["ppid"] = Process.ppid
    puts "printed by the task"
  end
end
`)

	for i := range 3 {
		result, out := a.run("greet", fmt.Sprintf(`{"name": "Ada", "n": %d}`, i))

		require.Equal(t, 0, result.ExitCode, "stderr:\n%s", result.Stderr)
		require.True(t, out.Success, "ex: %s", out.Ex)
		require.Equal(t, "hello from boot, Ada", out.Fields["greeting"])
		require.Equal(t, []any{"greet", "id-greet", false}, out.Fields["env"])
		require.Equal(t, float64(a.preloaderPID()), out.Fields["ppid"], "the task must be a child of the preloader")
		require.Equal(t, "printed by the task\n", string(result.Stdout))
		require.NotZero(t, result.PID)
		require.NotEqual(t, a.preloaderPID(), result.PID)
	}

	boots := strings.Fields(a.read("boots.log"))
	require.Len(t, boots, 1, "the boot file must be loaded once for all tasks")
}

func TestGlobalsDoNotLeakBetweenTasks(t *testing.T) {
	t.Parallel()

	a := newApp(t)
	a.write("config/bolt.rb", "SETTINGS = { 'mode' => 'boot' }\n$counter = 0\n")
	a.write("lib/bolt/tasks/corrupt.rb", `
class Bolt::Tasks::Corrupt
  def self.run(task:)
    SETTINGS["mode"] = "changed by a task"
    $counter += 1
    $leaked = "from the first task"
    String.class_eval { def shout = upcase }
  end
end
`)
	a.write("lib/bolt/tasks/inspect.rb", `
class Bolt::Tasks::Inspect
  def self.run(task:)
    task["mode"] = SETTINGS["mode"]
    task["counter"] = $counter
    task["leaked"] = $leaked
    task["shout"] = "x".respond_to?(:shout)
    task["corrupt_loaded"] = defined?(Bolt::Tasks::Corrupt) ? true : false
  end
end
`)

	result, out := a.run("corrupt", `{}`)
	require.True(t, out.Success, "ex: %s; stderr:\n%s", out.Ex, result.Stderr)

	_, out = a.run("inspect", `{}`)
	require.True(t, out.Success, "ex: %s", out.Ex)
	require.Equal(t, "boot", out.Fields["mode"])
	require.Equal(t, float64(0), out.Fields["counter"])
	require.Nil(t, out.Fields["leaked"])
	require.Equal(t, false, out.Fields["shout"])
	require.Equal(t, false, out.Fields["corrupt_loaded"])
}

func TestTaskCrashLeavesPreloader(t *testing.T) {
	t.Parallel()

	a := newApp(t)
	a.write("lib/bolt/tasks/crash.rb", `
class Bolt::Tasks::Crash
  def self.run(task:)
    Process.kill(:KILL, Process.pid)
  end
end
`)
	a.write("lib/bolt/tasks/exit_three.rb", `
class Bolt::Tasks::ExitThree
  def self.run(task:)
    exit!(3)
  end
end
`)
	a.write("lib/bolt/tasks/fails.rb", `
class Bolt::Tasks::Fails
  def self.run(task:)
    task["progress"] = "half"
    raise ArgumentError, "day is missing"
  end
end
`)

	result := a.start(context.Background(), "crash", a.spec("crash", `{}`))
	require.NoError(t, result.StartErr)
	require.Equal(t, "SIGKILL", result.Signal)
	require.Equal(t, -1, result.ExitCode)
	preloader := a.preloaderPID()

	result = a.start(context.Background(), "exit_three", a.spec("exit_three", `{}`))
	require.Equal(t, 3, result.ExitCode)
	require.Empty(t, result.Signal)

	result, out := a.run("fails", `{}`)
	require.Equal(t, 1, result.ExitCode)
	require.False(t, out.Success)
	require.Equal(t, "ArgumentError: day is missing", out.Ex)
	require.Equal(t, map[string]any{"progress": "half"}, out.Fields)
	require.Contains(t, out.Backtrace[0], "lib/bolt/tasks/fails.rb:5")
	require.Contains(t, string(result.Stderr), "Bolt task failed: ArgumentError: day is missing")

	require.Equal(t, preloader, a.preloaderPID(), "a crashing task must not restart the preloader")
}

func TestBootFileEditedBetweenTasks(t *testing.T) {
	t.Parallel()

	a := newApp(t)
	a.write("config/bolt.rb", bootCounter+"VERSION_SEEN = 'first'\n")
	a.write("lib/bolt/tasks/version.rb", `
class Bolt::Tasks::Version
  def self.run(task:)
    task["version"] = VERSION_SEEN
  end
end
`)

	_, out := a.run("version", `{}`)
	require.Equal(t, "first", out.Fields["version"])
	first := a.preloaderPID()

	a.write("config/bolt.rb", bootCounter+"VERSION_SEEN = 'second'\n")
	_, out = a.run("version", `{}`)
	require.Equal(t, "second", out.Fields["version"])
	require.NotEqual(t, first, a.preloaderPID())
	waitFor(t, 10*time.Second, "the old preloader to stop", func() bool { return processGone(first) })

	require.Len(t, strings.Fields(a.read("boots.log")), 2)
}

func TestBootFileChangeRestartsEagerly(t *testing.T) {
	t.Parallel()

	a := newApp(t)
	a.write("config/bolt.rb", bootCounter)
	a.write("lib/bolt/tasks/noop.rb", "class Bolt::Tasks::Noop\n  def self.run(task:) = nil\nend\n")

	_, out := a.run("noop", `{}`)
	require.True(t, out.Success)

	// The watcher boots the new version before any task asks for it.
	a.write("config/bolt.rb", bootCounter+"# changed\n")
	waitFor(t, 30*time.Second, "a second boot", func() bool {
		data, _ := os.ReadFile(filepath.Join(a.dir, "boots.log"))
		return len(strings.Fields(string(data))) == 2
	})
}

func TestBootFileSyntaxError(t *testing.T) {
	t.Parallel()

	a := newApp(t)
	a.write("config/bolt.rb", "def broken(\n")
	a.write("lib/bolt/tasks/noop.rb", "class Bolt::Tasks::Noop\n  def self.run(task:) = nil\nend\n")

	for range 3 {
		result, out := a.run("noop", `{}`)
		require.False(t, out.Success)
		require.Contains(t, out.Ex, "boot file "+filepath.Join(a.dir, "config/bolt.rb")+" failed: SyntaxError")
		require.ErrorContains(t, result.StartErr, "SyntaxError")
		require.Zero(t, result.PID)
	}
	require.Equal(t, 1, strings.Count(a.log.String(), "booting the application failed"),
		"a failed boot is not retried until the file changes")

	a.write("config/bolt.rb", "FIXED = true\n")
	result, out := a.run("noop", `{}`)
	require.True(t, out.Success, "ex: %s; stderr:\n%s", out.Ex, result.Stderr)
}

func TestBootFileRaises(t *testing.T) {
	t.Parallel()

	a := newApp(t)
	a.write("config/bolt.rb", "raise 'database settings missing'\n")
	a.write("lib/bolt/tasks/noop.rb", "class Bolt::Tasks::Noop\n  def self.run(task:) = nil\nend\n")

	_, out := a.run("noop", `{}`)
	require.False(t, out.Success)
	require.Contains(t, out.Ex, "failed: RuntimeError: database settings missing")
	require.NotEmpty(t, out.Backtrace)
	require.Contains(t, out.Backtrace[0], "config/bolt.rb:1")
}

func TestPreloaderKilledMidRun(t *testing.T) {
	t.Parallel()

	a := newApp(t)
	a.write("lib/bolt/tasks/slow.rb", `
class Bolt::Tasks::Slow
  def self.run(task:)
    File.write("slow.pid", Process.pid.to_s)
    sleep 600
  end
end
`)
	a.write("lib/bolt/tasks/noop.rb", "class Bolt::Tasks::Noop\n  def self.run(task:)\n    task[\"ppid\"] = Process.ppid\n  end\nend\n")

	done := make(chan childproc.Result, 1)
	go func() { done <- a.start(context.Background(), "slow", a.spec("slow", `{}`)) }()
	child := a.waitForPIDFile("slow.pid")
	first := a.preloaderPID()

	require.NoError(t, syscall.Kill(first, syscall.SIGKILL))

	result := <-done
	require.Equal(t, "SIGKILL", result.Signal)
	require.Equal(t, child, result.PID)
	waitFor(t, 10*time.Second, "the task to die with its preloader", func() bool { return processGone(child) })

	_, out := a.run("noop", `{}`)
	require.True(t, out.Success, "ex: %s", out.Ex)
	second := a.preloaderPID()
	require.NotEqual(t, first, second)
	require.Equal(t, float64(second), out.Fields["ppid"])
	require.Contains(t, a.log.String(), "preloader died; starting a new one")
}

func TestTimeoutKillsGroup(t *testing.T) {
	t.Parallel()

	a := newApp(t)
	a.write("lib/bolt/tasks/stubborn.rb", `
class Bolt::Tasks::Stubborn
  def self.run(task:)
    trap("TERM") { File.write("term.txt", "ignored") }
    grandchild = Process.spawn("sleep", "600")
    File.write("grandchild.pid", grandchild.to_s)
    loop { sleep 1 }
  end
end
`)

	spec := a.spec("stubborn", `{}`)
	spec.Timeout = 2 * time.Second
	spec.KillGrace = time.Second
	started := time.Now()
	result := a.start(context.Background(), "stubborn", spec)

	require.NoError(t, result.StartErr)
	require.True(t, result.TimedOut)
	require.Equal(t, "SIGKILL", result.Signal, "the task ignored SIGTERM, so SIGKILL ended it")
	require.Less(t, time.Since(started), 20*time.Second)
	require.Equal(t, "ignored", a.read("term.txt"), "SIGTERM must come first")
	grandchild := a.waitForPIDFile("grandchild.pid")
	waitFor(t, 10*time.Second, "the grandchild to be killed", func() bool { return processGone(grandchild) })
	require.True(t, processGone(result.PID))
}

func TestCancelStopsTask(t *testing.T) {
	t.Parallel()

	a := newApp(t)
	a.write("lib/bolt/tasks/waits.rb", `
class Bolt::Tasks::Waits
  def self.run(task:)
    File.write("waits.pid", Process.pid.to_s)
    sleep 600
  end
end
`)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan childproc.Result, 1)
	go func() { done <- a.start(ctx, "waits", a.spec("waits", `{}`)) }()
	a.waitForPIDFile("waits.pid")
	cancel()

	result := <-done
	require.False(t, result.TimedOut)
	require.Equal(t, "SIGTERM", result.Signal)
	out := a.outcome(result)
	require.Equal(t, "SignalException: SIGTERM", out.Ex, "the runner records the signal before dying of it")
}

func TestOutputIsCapped(t *testing.T) {
	t.Parallel()

	a := newApp(t)
	a.write("lib/bolt/tasks/chatty.rb", `
class Bolt::Tasks::Chatty
  def self.run(task:)
    2000.times { |i| $stdout.write(format("out %06d\n", i)) }
    500.times { |i| $stderr.write(format("err %06d\n", i)) }
  end
end
`)

	spec := a.spec("chatty", `{}`)
	spec.OutputLimit = 1100 // 100 lines of 11 bytes
	result := a.start(context.Background(), "chatty", spec)

	require.Equal(t, 0, result.ExitCode, "stderr:\n%s", result.Stderr)
	require.Len(t, result.Stdout, 1100)
	require.True(t, strings.HasPrefix(string(result.Stdout), "out 001900\n"), "stdout: %.40q", result.Stdout)
	require.True(t, strings.HasSuffix(string(result.Stdout), "out 001999\n"))
	require.Equal(t, int64(1900*11), result.StdoutDropped)
	require.Len(t, result.Stderr, 1100)
	require.True(t, strings.HasPrefix(string(result.Stderr), "err 000400\n"), "stderr: %.40q", result.Stderr)
	require.Equal(t, int64(400*11), result.StderrDropped)
}

func TestConcurrentTasksKeepTheirResults(t *testing.T) {
	t.Parallel()

	a := newApp(t)
	a.write("lib/bolt/tasks/echo.rb", `
class Bolt::Tasks::Echo
  def self.run(task:)
    sleep(rand / 10)
    task["doubled"] = task.fetch("n") * 2
    puts "n=#{task['n']}"
  end
end
`)

	const tasks = 12
	var wg sync.WaitGroup
	results := make([]childproc.Result, tasks)
	for i := range tasks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = a.start(context.Background(), "echo", a.spec("echo", fmt.Sprintf(`{"n": %d}`, i)))
		}()
	}
	wg.Wait()

	for i, result := range results {
		out := a.outcome(result)
		require.True(t, out.Success, "task %d: %s", i, out.Ex)
		require.Equal(t, float64(2*i), out.Fields["doubled"])
		require.Equal(t, fmt.Sprintf("n=%d\n", i), string(result.Stdout))
	}
}

func TestGemfileLockChangeRestarts(t *testing.T) {
	t.Parallel()

	a := newApp(t)
	a.write("Gemfile", "gem \"greeter\", path: \"vendor/greeter\"\n")
	a.write("vendor/greeter/greeter.gemspec", `Gem::Specification.new do |spec|
  spec.name = "greeter"
  spec.version = "1.0.0"
  spec.summary = "Test gem"
  spec.authors = ["Bolt"]
  spec.files = ["lib/greeter.rb"]
end
`)
	a.write("vendor/greeter/lib/greeter.rb", "module Greeter\n  def self.greet = \"hello from a gem\"\nend\n")
	a.write("config/bolt.rb", bootCounter+"require \"greeter\"\n")
	a.write("lib/bolt/tasks/greet.rb", `
class Bolt::Tasks::Greet
  def self.run(task:)
    task["greeting"] = Greeter.greet
    task["gemfile"] = ENV["BUNDLE_GEMFILE"]
  end
end
`)

	result, out := a.run("greet", `{}`)
	require.True(t, out.Success, "ex: %s; stderr:\n%s", out.Ex, result.Stderr)
	require.Equal(t, "hello from a gem", out.Fields["greeting"])
	require.Equal(t, filepath.Join(a.dir, "Gemfile"), out.Fields["gemfile"], "the environment set at boot reaches the task")
	require.Empty(t, result.Stdout)

	// Bundler wrote Gemfile.lock while booting, which replaces the preloader once more,
	// at the latest before the next task.
	lock := filepath.Join(a.dir, "Gemfile.lock")
	data, err := os.ReadFile(lock)
	require.NoError(t, err, "Bundler writes Gemfile.lock at setup")
	_, out = a.run("greet", `{}`)
	require.True(t, out.Success, "ex: %s", out.Ex)
	boots := len(strings.Fields(a.read("boots.log")))

	require.NoError(t, os.WriteFile(lock, append(data, '\n'), 0o644))
	_, out = a.run("greet", `{}`)
	require.True(t, out.Success, "ex: %s", out.Ex)
	require.Len(t, strings.Fields(a.read("boots.log")), boots+1)
}

func TestCloseKillsRunningTask(t *testing.T) {
	t.Parallel()

	a := newApp(t)
	a.write("lib/bolt/tasks/slow.rb", `
class Bolt::Tasks::Slow
  def self.run(task:)
    File.write("slow.pid", Process.pid.to_s)
    sleep 600
  end
end
`)

	done := make(chan childproc.Result, 1)
	go func() { done <- a.start(context.Background(), "slow", a.spec("slow", `{}`)) }()
	child := a.waitForPIDFile("slow.pid")
	preloader := a.preloaderPID()

	require.NoError(t, a.preloader.Close())
	result := <-done
	require.Equal(t, "SIGKILL", result.Signal)
	require.True(t, processGone(child))
	require.True(t, processGone(preloader))

	result = a.start(context.Background(), "slow", a.spec("slow", `{}`))
	require.ErrorIs(t, result.StartErr, errClosed)
}

func TestCloseDuringBootKillsAtOnce(t *testing.T) {
	t.Parallel()

	a := newApp(t)
	a.write("config/bolt.rb", "File.write(File.join(__dir__, 'booting'), Process.pid.to_s)\nsleep 600\n")
	a.write("lib/bolt/tasks/noop.rb", noopTask)

	done := make(chan childproc.Result, 1)
	go func() { done <- a.start(context.Background(), "noop", a.spec("noop", `{}`)) }()
	preloader := a.waitForPIDFile("config/booting")

	started := time.Now()
	require.NoError(t, a.preloader.Close())
	require.Less(t, time.Since(started), stopWait, "Close must not wait for a boot to finish")
	require.True(t, processGone(preloader))

	result := <-done
	require.Error(t, result.StartErr)
	require.Zero(t, result.PID)
}
