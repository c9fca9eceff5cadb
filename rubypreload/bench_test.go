package rubypreload

import (
	"context"
	"encoding/json"
	"os/exec"
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

// bareForkLoop forks ARGV[0] children that exit at once, at most ARGV[1] at a time,
// and prints the seconds the loop took. It is the upper bound of a forking runner.
// ARGV[2] "exit!" ends each child with exit!, which skips at_exit handlers and Ruby's
// teardown; "exit" ends it as a preloaded task's child ends.
const bareForkLoop = `
total, concurrency = ARGV[0, 2].map(&:to_i)
teardown = ARGV[2] == "exit"
require "json"
started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
running = 0
total.times do
  if running == concurrency
    Process.wait
    running -= 1
  end
  fork { teardown ? exit(0) : exit!(0) }
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

	loops := []struct{ name, exit string }{
		{"bare_fork_loop_exit_bang", "exit!"},
		{"bare_fork_loop_exit", "exit"},
	}
	for _, bare := range loops {
		b.Run(bare.name, func(b *testing.B) {
			requireRuby(b)

			loop := exec.Command("ruby", "-e", bareForkLoop, strconv.Itoa(b.N), strconv.Itoa(benchConcurrency), bare.exit)
			output, err := loop.Output()
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

	output, err := exec.Command("ruby", "-e", bareForkLoop, "3", "2", "exit").Output()
	require.NoError(t, err)
	_, err = strconv.ParseFloat(strings.TrimSpace(string(output)), 64)
	require.NoError(t, err, "output: %s", output)
}
