package rubyrunner

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/bolt-runner/bolt/childproc"
	"github.com/bolt-runner/bolt/taskpath"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// requireRuby skips the test when Ruby is missing, except in CI, where a missing Ruby
// is a failure.
func requireRuby(t *testing.T) {
	t.Helper()

	if _, err := exec.LookPath("ruby"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("ruby is required in CI: %v", err)
		}
		t.Skipf("ruby not installed (apt-get install ruby): %v", err)
	}
}

// app is an application folder for one test.
type app struct {
	t   *testing.T
	dir string
}

func newApp(t *testing.T) *app {
	t.Helper()
	requireRuby(t)

	dir, err := filepath.EvalSymlinks(t.TempDir())
	require.NoError(t, err)

	return &app{t: t, dir: dir}
}

// write creates a file in the application folder.
func (a *app) write(path, content string) {
	a.t.Helper()

	full := filepath.Join(a.dir, path)
	require.NoError(a.t, os.MkdirAll(filepath.Dir(full), 0o755))
	require.NoError(a.t, os.WriteFile(full, []byte(content), 0o644))
}

// outcome is the JSON object that the runner writes to the result file.
type outcome struct {
	Success   bool           `json:"success"`
	Ex        string         `json:"ex"`
	Backtrace []string       `json:"backtrace"`
	Fields    map[string]any `json:"fields"`
}

// run resolves and runs the task with document on stdin, the way Bolt does.
func (a *app) run(ctx context.Context, opts Options, name, document string) (childproc.Result, outcome) {
	a.t.Helper()

	opts.AppDir = a.dir
	task, err := taskpath.Resolve(a.dir, opts.LoadPath, name)
	require.NoError(a.t, err)
	path, args, err := Command(opts, task)
	require.NoError(a.t, err)

	result := childproc.Run(ctx, childproc.Spec{
		Path:    path,
		Args:    args,
		Dir:     a.dir,
		Env:     []string{"PATH=" + os.Getenv("PATH"), "HOME=" + a.t.TempDir(), "LANG=C.UTF-8"},
		Stdin:   []byte(document),
		Timeout: 2 * time.Minute,
	})
	require.NoError(a.t, result.StartErr)
	require.NoError(a.t, result.ResultErr)
	require.NotEmpty(a.t, result.ResultJSON, "the runner wrote no result; stderr:\n%s", result.Stderr)

	var out outcome
	require.NoError(a.t, json.Unmarshal(result.ResultJSON, &out), "result: %s", result.ResultJSON)

	return result, out
}

const sampleDocument = `{
	"_id": {"$oid": "65a000000000000000000001"},
	"task": "reports/daily",
	"when": {"$date": "2024-01-02T03:04:05.678Z"},
	"long": {"$numberLong": "9007199254740993"},
	"canonical_date": {"$date": {"$numberLong": "1704164645678"}},
	"nested": {"at": {"$date": "2024-01-02T03:04:05Z"}, "ids": [{"$oid": "65a000000000000000000002"}]},
	"count": 2
}`

func TestKeywordRunGetsDocument(t *testing.T) {
	t.Parallel()

	a := newApp(t)
	a.write("lib/bolt/tasks/reports/daily.rb", `
module Bolt::Tasks::Reports
  class Daily
    def self.run(task:)
      task["seen"] = {
        "id" => task["_id"],
        "when_class" => task["when"].class.name,
        "when_ms" => (task["when"].to_r * 1000).to_i,
        "long" => task["long"].to_s,
        "canonical_ms" => (task["canonical_date"].to_r * 1000).to_i,
        "nested_at_class" => task["nested"]["at"].class.name,
        "nested_id" => task["nested"]["ids"][0],
        "keys" => task.keys,
      }
      task["count"] = task["count"] + 1
      task["finished_at"] = task["when"] + 60
    end
  end
end
`)

	result, out := a.run(context.Background(), Options{}, "reports/daily", sampleDocument)

	require.Equal(t, 0, result.ExitCode, "stderr:\n%s", result.Stderr)
	require.True(t, out.Success)
	require.Empty(t, out.Ex)
	require.Equal(t, map[string]any{
		"id":              "65a000000000000000000001",
		"when_class":      "Time",
		"when_ms":         float64(1704164645678),
		"long":            "9007199254740993",
		"canonical_ms":    float64(1704164645678),
		"nested_at_class": "Time",
		"nested_id":       "65a000000000000000000002",
		"keys":            []any{"_id", "task", "when", "long", "canonical_date", "nested", "count"},
	}, out.Fields["seen"])
	require.Equal(t, float64(3), out.Fields["count"])
	require.Equal(t, map[string]any{"$date": "2024-01-02T03:05:05.678Z"}, out.Fields["finished_at"])
	require.Len(t, out.Fields, 3, "unchanged keys must not be handed back: %v", out.Fields)
	require.Empty(t, result.Stdout, "the runner must not write to stdout")
}

func TestPositionalRunGetsArgs(t *testing.T) {
	t.Parallel()

	a := newApp(t)
	a.write("lib/bolt/tasks/send_report.rb", `
module Bolt
  module Tasks
    class SendReport
      def self.run(args)
        args[:task]["recipient_seen"] = args[:task]["recipient"]
      end
    end
  end
end
`)

	result, out := a.run(context.Background(), Options{}, "send_report", `{"recipient": "ops@example.com"}`)

	require.Equal(t, 0, result.ExitCode, "stderr:\n%s", result.Stderr)
	require.True(t, out.Success)
	require.Equal(t, map[string]any{"recipient_seen": "ops@example.com"}, out.Fields)
}

func TestExceptionIsFailure(t *testing.T) {
	t.Parallel()

	a := newApp(t)
	a.write("lib/bolt/tasks/explode.rb", `class Bolt::Tasks::Explode
  def self.run(task:)
    task["progress"] = "half"
    raise ArgumentError, "bad recipient"
  end
end
`)

	result, out := a.run(context.Background(), Options{}, "explode", `{"progress": "none"}`)

	require.Equal(t, 1, result.ExitCode)
	require.False(t, out.Success)
	require.Equal(t, "ArgumentError: bad recipient", out.Ex)
	require.NotEmpty(t, out.Backtrace)
	require.Equal(t, filepath.Join(a.dir, "lib/bolt/tasks/explode.rb")+":4:in `run'", out.Backtrace[0])
	for _, frame := range out.Backtrace {
		require.False(t, strings.HasPrefix(frame, "-e:"), "runner frame in backtrace: %s", frame)
	}
	require.Equal(t, map[string]any{"progress": "half"}, out.Fields, "changes before the exception are handed back")
	require.Contains(t, string(result.Stderr), "ArgumentError: bad recipient")
	require.Empty(t, result.Stdout)
}

func TestSyntaxErrorIsFailure(t *testing.T) {
	t.Parallel()

	a := newApp(t)
	a.write("lib/bolt/tasks/broken.rb", "class Bolt::Tasks::Broken\n  def self.run(task:\nend\n")

	result, out := a.run(context.Background(), Options{}, "broken", `{}`)

	require.Equal(t, 1, result.ExitCode)
	require.False(t, out.Success)
	require.True(t, strings.HasPrefix(out.Ex, "SyntaxError: "), "ex: %s", out.Ex)
	require.Contains(t, out.Ex, filepath.Join(a.dir, "lib/bolt/tasks/broken.rb"))
	require.NotNil(t, out.Fields)
}

func TestLoadErrorIsFailure(t *testing.T) {
	t.Parallel()

	a := newApp(t)
	a.write("lib/bolt/tasks/needs_gem.rb", "require \"a_gem_that_is_not_installed\"\n")

	result, out := a.run(context.Background(), Options{}, "needs_gem", `{}`)

	require.Equal(t, 1, result.ExitCode)
	require.Equal(t, "LoadError: cannot load such file -- a_gem_that_is_not_installed", out.Ex)
	require.Equal(t, filepath.Join(a.dir, "lib/bolt/tasks/needs_gem.rb")+":1:in `<top (required)>'", out.Backtrace[0])
}

func TestModuleWithoutRun(t *testing.T) {
	t.Parallel()

	a := newApp(t)
	a.write("lib/bolt/tasks/idle.rb", "module Bolt::Tasks::Idle\n  def self.perform; end\nend\n")

	result, out := a.run(context.Background(), Options{}, "idle", `{}`)

	require.Equal(t, 1, result.ExitCode)
	require.Equal(t, "NoMethodError: undefined method 'run' for Bolt::Tasks::Idle: define def self.run(task:)", out.Ex)
}

func TestConstantMissing(t *testing.T) {
	t.Parallel()

	a := newApp(t)
	a.write("lib/bolt/tasks/daily_sales.rb", "class Bolt::Tasks::DailySale\n  def self.run(task:); end\nend\n")

	result, out := a.run(context.Background(), Options{}, "daily_sales", `{}`)

	require.Equal(t, 1, result.ExitCode)
	require.True(t, strings.HasPrefix(out.Ex, "NameError: uninitialized constant Bolt::Tasks::DailySales"), "ex: %s", out.Ex)
	require.Contains(t, out.Ex, filepath.Join(a.dir, "lib/bolt/tasks/daily_sales.rb")+" must define Bolt::Tasks::DailySales")
}

func TestBootFileAndLoadPath(t *testing.T) {
	t.Parallel()

	a := newApp(t)
	a.write("config/bolt.rb", "require \"greeting\"\nBOOTED_GREETING = Greeting.text\n")
	a.write("lib/greeting.rb", "module Greeting\n  def self.text = \"hello\"\nend\n")
	a.write("lib/bolt/tasks/greet.rb", `class Bolt::Tasks::Greet
  def self.run(task:)
    task["greeting"] = BOOTED_GREETING
  end
end
`)

	result, out := a.run(context.Background(), Options{}, "greet", `{}`)

	require.Equal(t, 0, result.ExitCode, "stderr:\n%s", result.Stderr)
	require.Equal(t, map[string]any{"greeting": "hello"}, out.Fields)
}

func TestGemfileUsesBundler(t *testing.T) {
	t.Parallel()

	// A path gem needs no network, and only Bundler's setup makes it loadable.
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
	a.write("lib/bolt/tasks/greet.rb", `require "greeter"
class Bolt::Tasks::Greet
  def self.run(task:)
    task["greeting"] = Greeter.greet
    task["gemfile"] = ENV["BUNDLE_GEMFILE"]
  end
end
`)

	result, out := a.run(context.Background(), Options{}, "greet", `{}`)

	require.Equal(t, 0, result.ExitCode, "stderr:\n%s", result.Stderr)
	require.Equal(t, "hello from a gem", out.Fields["greeting"])
	require.Equal(t, filepath.Join(a.dir, "Gemfile"), out.Fields["gemfile"])
	require.Empty(t, result.Stdout, "Bundler's progress output must not reach stdout")
}

func TestTaskOutputIsTasks(t *testing.T) {
	t.Parallel()

	a := newApp(t)
	a.write("lib/bolt/tasks/chatty.rb", `class Bolt::Tasks::Chatty
  def self.run(task:)
    puts "sending 3 reports"
    warn "slow server"
  end
end
`)

	result, out := a.run(context.Background(), Options{}, "chatty", `{}`)

	require.True(t, out.Success)
	require.Equal(t, "sending 3 reports\n", string(result.Stdout))
	require.Equal(t, "slow server\n", string(result.Stderr))
	require.Empty(t, out.Fields)
}

func TestExitInsideTask(t *testing.T) {
	t.Parallel()

	a := newApp(t)
	a.write("lib/bolt/tasks/quit.rb", `class Bolt::Tasks::Quit
  def self.run(task:)
    task["step"] = "before exit"
    exit(task["code"])
  end
end
`)

	result, out := a.run(context.Background(), Options{}, "quit", `{"code": 0}`)
	require.Equal(t, 0, result.ExitCode, "stderr:\n%s", result.Stderr)
	require.True(t, out.Success)
	require.Equal(t, "before exit", out.Fields["step"])

	result, out = a.run(context.Background(), Options{}, "quit", `{"code": 3}`)
	require.Equal(t, 1, result.ExitCode)
	require.False(t, out.Success)
	require.Equal(t, "SystemExit: exit", out.Ex)
}

func TestStoppedTaskRecordsSignal(t *testing.T) {
	t.Parallel()

	a := newApp(t)
	ready := filepath.Join(t.TempDir(), "ready")
	a.write("lib/bolt/tasks/slow.rb", `class Bolt::Tasks::Slow
  def self.run(task:)
    task["state"] = "sleeping"
    File.write(task["ready_file"], "")
    sleep 600
  end
end
`)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for {
			if _, err := os.Stat(ready); err == nil {
				cancel()
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	document, err := json.Marshal(map[string]string{"ready_file": ready})
	require.NoError(t, err)

	result, out := a.run(ctx, Options{}, "slow", string(document))

	require.Equal(t, "SIGTERM", result.Signal, "the runner should end by the signal after writing the result")
	require.False(t, out.Success)
	require.Equal(t, "SignalException: SIGTERM", out.Ex)
	require.Equal(t, filepath.Join(a.dir, "lib/bolt/tasks/slow.rb")+":5:in `sleep'", out.Backtrace[0])
	require.Equal(t, "sleeping", out.Fields["state"])
}

func TestValuesConvertedBack(t *testing.T) {
	t.Parallel()

	a := newApp(t)
	a.write("lib/bolt/tasks/convert.rb", `class Bolt::Tasks::Convert
  def self.run(task:)
    require "date"
    task["old_time"] = Time.utc(1960, 1, 1)
    task["day"] = Date.new(2024, 5, 6)
    task["binary"] = "\xFF\x00".b
    task["text"] = "caf\u00e9".b
    task[:symbol_key] = :done
    task["infinite"] = Float::INFINITY
    task["nested"] = { list: [Time.utc(2024, 1, 2, 3, 4, 5)] }
    task["nan_seen"] = task["nan"].nan?
    task.delete("gone")
  end
end
`)

	result, out := a.run(context.Background(), Options{},
		"convert", `{"gone": 1, "nan": {"$numberDouble": "NaN"}, "int": {"$numberInt": "7"}}`)

	require.Equal(t, 0, result.ExitCode, "stderr:\n%s", result.Stderr)
	require.Equal(t, map[string]any{
		"old_time":   map[string]any{"$date": map[string]any{"$numberLong": "-315619200000"}},
		"day":        map[string]any{"$date": "2024-05-06T00:00:00.000Z"},
		"binary":     map[string]any{"$binary": map[string]any{"base64": "/wA=", "subType": "00"}},
		"text":       "caf\u00e9",
		"symbol_key": "done",
		"infinite":   map[string]any{"$numberDouble": "Infinity"},
		"nested":     map[string]any{"list": []any{map[string]any{"$date": "2024-01-02T03:04:05.000Z"}}},
		"nan_seen":   true,
	}, out.Fields)
}

func TestBadDocumentIsFailure(t *testing.T) {
	t.Parallel()

	a := newApp(t)
	a.write("lib/bolt/tasks/noop.rb", "class Bolt::Tasks::Noop\n  def self.run(task:); end\nend\n")

	for document, want := range map[string]string{
		"":          "ArgumentError: the task document on stdin is empty",
		"[1, 2]":    "ArgumentError: the task document on stdin must be a JSON object, not Array",
		"{not json": "JSON::ParserError: ",
	} {
		result, out := a.run(context.Background(), Options{}, "noop", document)

		require.Equal(t, 1, result.ExitCode, "document %q", document)
		require.True(t, strings.HasPrefix(out.Ex, want), "document %q: ex %s", document, out.Ex)
	}
}

func TestCommandArguments(t *testing.T) {
	t.Parallel()

	a := newApp(t)
	a.write("lib/bolt/tasks/x.rb", "")
	a.write("config/bolt.rb", "")
	task, err := taskpath.Resolve(a.dir, nil, "x")
	require.NoError(t, err)

	path, args, err := Command(Options{AppDir: a.dir}, task)
	require.NoError(t, err)

	ruby, err := exec.LookPath("ruby")
	require.NoError(t, err)
	require.Equal(t, ruby, path)
	require.Equal(t, "-e", args[0])
	require.Equal(t, runnerScript, args[1])
	require.Equal(t, []string{
		"--", a.dir, task.Path, "Bolt::Tasks::X", filepath.Join(a.dir, "config/bolt.rb"),
		filepath.Join(a.dir, "lib"), a.dir,
	}, args[2:])

	_, args, err = Command(Options{AppDir: a.dir, BootFile: "config/missing.rb", LoadPath: []string{"lib"}}, task)
	require.NoError(t, err)
	require.Equal(t, []string{"--", a.dir, task.Path, "Bolt::Tasks::X", "", filepath.Join(a.dir, "lib")}, args[2:],
		"a missing boot file is skipped")
}

func TestCommandErrors(t *testing.T) {
	t.Parallel()

	a := newApp(t)
	a.write("lib/bolt/tasks/x.rb", "")
	task, err := taskpath.Resolve(a.dir, nil, "x")
	require.NoError(t, err)

	cases := []struct {
		opts Options
		task taskpath.Task
		want string
	}{
		{Options{AppDir: a.dir}, taskpath.Task{Name: "x", Kind: taskpath.Executable, Path: "/bin/true"},
			`task "x" is not a Ruby task (kind executable)`},
		{Options{AppDir: a.dir}, taskpath.Task{Name: "x", Kind: taskpath.Ruby},
			"resolve it with taskpath.Resolve"},
		{Options{AppDir: a.dir, RubyPath: filepath.Join(a.dir, "no-ruby")}, task,
			"install Ruby"},
		{Options{AppDir: a.dir, LoadPath: []string{"../outside"}}, task,
			"must be a relative folder inside the application folder"},
		{Options{AppDir: a.dir, BootFile: "lib"}, task,
			"boot file " + filepath.Join(a.dir, "lib") + " is a folder"},
	}
	for _, c := range cases {
		_, _, err := Command(c.opts, c.task)
		require.ErrorContains(t, err, c.want)
	}
}
