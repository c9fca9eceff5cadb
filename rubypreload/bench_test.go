package rubypreload

import (
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/bolt-runner/bolt/childproc"
	"github.com/bolt-runner/bolt/rubyrunner"
	"github.com/bolt-runner/bolt/taskpath"
)

// benchConcurrency is how many tasks the throughput benchmarks run at once, as a
// Bolt with throttle = 4 would.
const benchConcurrency = 4

const noopTask = "class Bolt::Tasks::Noop\n  def self.run(task:) = nil\nend\n"

// clockTask records when its run method starts, in seconds since the Unix epoch.
const clockTask = `
class Bolt::Tasks::Clock
  def self.run(task:)
    task["ran_at"] = Process.clock_gettime(Process::CLOCK_REALTIME)
  end
end
`

// bareForkLoop forks ARGV[0] children, at most ARGV[1] at a time, and prints the
// seconds the loop took. With ARGV[2] "exit!" each child exits at once with exit!,
// which skips at_exit handlers and Ruby's teardown: the floor of forking. With ARGV[2]
// "task" each child requires the task file ARGV[3], calls its run method with an empty
// document and ends with exit, as a preloaded task's child does, but without Bolt's
// document, pipes, result file and messages.
const bareForkLoop = `
total, concurrency = ARGV[0, 2].map(&:to_i)
mode, task_file = ARGV[2, 2]
require "json"
module Bolt; module Tasks; end; end
started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
running = 0
total.times do
  if running == concurrency
    Process.wait
    running -= 1
  end
  if mode == "task"
    fork do
      require task_file
      Bolt::Tasks::Noop.run(task: {})
      exit(0)
    end
  else
    fork { exit!(0) }
  end
  running += 1
end
running.times { Process.wait }
puts Process.clock_gettime(Process::CLOCK_MONOTONIC) - started
`

// runConcurrently calls run b.N times, benchConcurrency at a time, and reports the rate.
func runConcurrently(b *testing.B, run func()) {
	b.Helper()

	jobs := make(chan struct{})
	var wg sync.WaitGroup
	for range benchConcurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range jobs {
				run()
			}
		}()
	}

	b.ResetTimer()
	started := time.Now()
	for range b.N {
		jobs <- struct{}{}
	}
	close(jobs)
	wg.Wait()
	b.ReportMetric(float64(b.N)/time.Since(started).Seconds(), "tasks/s")
}

// freshRun runs a task the way Bolt does without preloading: a new Ruby per task.
func (a *app) freshRun(name, document string) childproc.Result {
	a.t.Helper()

	task, err := taskpath.Resolve(a.dir, nil, name)
	require.NoError(a.t, err)
	spec := a.spec(name, document)
	spec.Path, spec.Args, err = rubyrunner.Command(rubyrunner.Options{AppDir: a.dir}, task)
	require.NoError(a.t, err)

	return childproc.Run(context.Background(), spec)
}

func requireSuccess(b *testing.B, result childproc.Result) {
	if result.ExitCode != 0 || result.StartErr != nil {
		b.Fatalf("task failed: exit %d, start error %v, stderr:\n%s", result.ExitCode, result.StartErr, result.Stderr)
	}
}

func BenchmarkNoopTasks(b *testing.B) {
	b.Run("preloaded", func(b *testing.B) {
		a := newApp(b)
		a.write("lib/bolt/tasks/noop.rb", noopTask)
		requireSuccess(b, a.start(context.Background(), "noop", a.spec("noop", `{}`)))

		runConcurrently(b, func() { requireSuccess(b, a.start(context.Background(), "noop", a.spec("noop", `{}`))) })
	})

	b.Run("fresh", func(b *testing.B) {
		a := newApp(b)
		a.write("lib/bolt/tasks/noop.rb", noopTask)

		runConcurrently(b, func() { requireSuccess(b, a.freshRun("noop", `{}`)) })
	})

	loops := []struct{ name, mode string }{
		{"bare_fork_loop_exit_bang", "exit!"},
		{"bare_fork_loop_task", "task"},
	}
	for _, bare := range loops {
		b.Run(bare.name, func(b *testing.B) {
			a := newApp(b)
			a.write("lib/bolt/tasks/noop.rb", noopTask)

			output, err := exec.Command("ruby", "-e", bareForkLoop, strconv.Itoa(b.N), strconv.Itoa(benchConcurrency),
				bare.mode, filepath.Join(a.dir, "lib/bolt/tasks/noop.rb")).Output()
			require.NoError(b, err)
			seconds, err := strconv.ParseFloat(strings.TrimSpace(string(output)), 64)
			require.NoError(b, err)
			b.ReportMetric(float64(b.N)/seconds, "tasks/s")
		})
	}
}

// BenchmarkTaskStartSlowBoot measures the time from handing a task to Bolt's runner
// until its run method starts, when the boot file takes one second. first_start_ms is
// the first task of a new application folder, which starts the preloader; start_ms
// the mean of the b.N tasks after it.
func BenchmarkTaskStartSlowBoot(b *testing.B) {
	measure := func(b *testing.B, run func(a *app) childproc.Result) {
		a := newApp(b)
		a.write("config/bolt.rb", "sleep 1\n")
		a.write("lib/bolt/tasks/clock.rb", clockTask)
		startDelay := func() time.Duration {
			called := time.Now()
			result := run(a)
			requireSuccess(b, result)

			var out outcome
			require.NoError(b, json.Unmarshal(result.ResultJSON, &out))
			ranAt := out.Fields["ran_at"].(float64)
			return time.Unix(0, int64(ranAt*1e9)).Sub(called)
		}

		first := startDelay()
		var total time.Duration
		b.ResetTimer()
		for range b.N {
			total += startDelay()
		}
		b.ReportMetric(float64(first.Milliseconds()), "first_start_ms")
		b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N), "start_ms")
	}

	b.Run("preloaded", func(b *testing.B) {
		measure(b, func(a *app) childproc.Result {
			return a.start(context.Background(), "clock", a.spec("clock", `{}`))
		})
	})
	b.Run("fresh", func(b *testing.B) {
		measure(b, func(a *app) childproc.Result { return a.freshRun("clock", `{}`) })
	})
}

// TestBenchmarkHelpersWork keeps the benchmarks' task files and fork loop working in
// the ordinary test run.
func TestBenchmarkHelpersWork(t *testing.T) {
	t.Parallel()

	a := newApp(t)
	a.write("lib/bolt/tasks/clock.rb", clockTask)
	before := time.Now()
	_, out := a.run("clock", `{}`)
	ranAt := time.Unix(0, int64(out.Fields["ran_at"].(float64)*1e9))
	require.True(t, ranAt.After(before.Add(-time.Second)), "ran at %s, called at %s", ranAt, before)

	result := a.freshRun("clock", `{}`)
	require.Equal(t, 0, result.ExitCode, "stderr:\n%s", result.Stderr)

	a.write("lib/bolt/tasks/noop.rb", noopTask+"File.write(File.join(__dir__, \"ran-#{Process.pid}\"), \"\")\n")
	for _, mode := range []string{"exit!", "task"} {
		output, err := exec.Command("ruby", "-e", bareForkLoop, "3", "2", mode, filepath.Join(a.dir, "lib/bolt/tasks/noop.rb")).Output()
		require.NoError(t, err, "mode %s", mode)
		_, err = strconv.ParseFloat(strings.TrimSpace(string(output)), 64)
		require.NoError(t, err, "mode %s: output %s", mode, output)
	}
	ran, err := filepath.Glob(filepath.Join(a.dir, "lib/bolt/tasks/ran-*"))
	require.NoError(t, err)
	require.Len(t, ran, 3, "the task mode loads the task file in each of its 3 children")
}
