// Package rubypreload runs Ruby tasks by forking them from a preloaded Ruby process.
//
// Starting Ruby, setting up Bundler and loading an application's boot file can take
// seconds, and a fresh interpreter per task (rubyrunner.Command) pays that for every
// task. A Preloader keeps one Ruby process per application, the preloader, that boots
// the application once and then forks one child per task. The child loads the task file
// fresh, runs it with rubyrunner's BoltTaskRunner and writes the result file exactly as
// the fresh runner does, and exits. Each task is still its own process: a task that
// changes globals, leaks memory or crashes affects only itself.
//
// Bolt and the preloader talk over a SOCK_SEQPACKET Unix socket, one JSON object per
// packet; preloader.rb describes the messages. Bolt creates each task's stdin, stdout
// and stderr pipes and passes them with the request (SCM_RIGHTS), so output is capped
// as childproc caps it. The child leads its own process group, and Bolt enforces the
// timeout by signalling that group, as childproc does.
//
// A task's processes do not outlive Bolt. The preloader gets SIGKILL when Bolt dies
// (PR_SET_PDEATHSIG), and each child sets the same for the preloader's death, because
// fork clears it. The guard (childproc.Guard) also kills the registered group of every
// running child and of the preloader when Bolt dies.
//
// The preloader starts with the first Ruby task. It is replaced when the boot file, the
// Gemfile or Gemfile.lock changes (an fsnotify watch, and a check of the files before
// every task), and restarted with backoff when it dies. When booting fails, Ruby tasks
// fail with the boot error until one of those files changes.
package rubypreload

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/fsnotify/fsnotify"
	"github.com/rs/zerolog"

	"github.com/bolt-runner/bolt/childproc"
	"github.com/bolt-runner/bolt/rubyrunner"
	"github.com/bolt-runner/bolt/taskpath"
)

//go:embed preloader.rb
var preloaderScript string

// stableUptime is how long a preloader must have run for its death to count as a new
// problem, which restarts the backoff from its shortest delay.
const stableUptime = time.Minute

// errClosed is the start error of tasks that arrive after Close.
var errClosed = errors.New("the Ruby preloader is closed because Bolt is stopping")

// Options configures a Preloader.
type Options struct {
	// Ruby names the interpreter, the application folder, the load path and the boot file.
	Ruby rubyrunner.Options
	// Guard, when set, receives the process groups of the preloader and of every task,
	// so that they are killed when Bolt dies.
	Guard *childproc.Guard
	// Logger receives the preloader's lifecycle and its own output.
	Logger zerolog.Logger
}

// BootError is the exception that booting the application raised in the preloader:
// Bundler's setup or the boot file.
type BootError struct {
	// BootFile is the absolute boot file, or empty when the application has none.
	BootFile string
	// Ex is the exception's class and message, and Backtrace its frames.
	Ex        string
	Backtrace []string
}

func (e *BootError) Error() string {
	if e.BootFile == "" {
		return "booting the application (Bundler setup) failed: " + e.Ex
	}

	return fmt.Sprintf("boot file %s failed: %s", e.BootFile, e.Ex)
}

// Preloader runs Ruby tasks of one application in children of a preloaded Ruby process.
// It is safe for concurrent use.
type Preloader struct {
	opts    Options
	log     zerolog.Logger
	appDir  string
	watched []string // boot file, Gemfile, Gemfile.lock

	mu        sync.Mutex
	current   *process              // serves new tasks; may still be booting
	processes map[*process]struct{} // every preloader not yet reaped
	active    map[*process]int      // tasks using each preloader
	retired   map[*process]bool     // preloaders that serve no new tasks
	crashed   map[*process]bool     // preloaders that died without being stopped
	failed    *bootFailure          // the last boot error, until the watched files change
	env       []string              // environment for new preloaders; nil until the first task
	policy    *backoff.ExponentialBackOff
	restartAt time.Time
	closed    bool

	// watcher reports changes in the folders of the watched files; watchedDirs maps each
	// folder to whether it is watched yet. Both are nil when watching failed.
	watcher      *fsnotify.Watcher
	watchedDirs  map[string]bool
	stopWatching context.CancelFunc
	watching     sync.WaitGroup
}

// bootFailure is a boot error and the versions of the watched files that caused it.
type bootFailure struct {
	err   *BootError
	stamp stamp
}

// New returns a Preloader and starts watching the application's boot files. It starts
// no Ruby process: the first task does. Call Close when done.
func New(opts Options) (*Preloader, error) {
	appDir, err := filepath.Abs(opts.Ruby.AppDir)
	if err != nil {
		return nil, fmt.Errorf("making application folder %q absolute: %w", opts.Ruby.AppDir, err)
	}

	policy := backoff.NewExponentialBackOff()
	policy.InitialInterval = 500 * time.Millisecond
	policy.MaxInterval = 30 * time.Second
	policy.MaxElapsedTime = 0 // never give up

	p := &Preloader{
		opts:   opts,
		log:    opts.Logger.With().Str("component", "rubypreload").Logger(),
		appDir: appDir,
		watched: []string{
			rubyrunner.BootFilePath(appDir, opts.Ruby.BootFile),
			filepath.Join(appDir, "Gemfile"),
			filepath.Join(appDir, "Gemfile.lock"),
		},
		processes: map[*process]struct{}{},
		active:    map[*process]int{},
		retired:   map[*process]bool{},
		crashed:   map[*process]bool{},
		policy:    policy,
	}

	ctx, cancel := context.WithCancel(context.Background())
	p.stopWatching = cancel
	if err := p.watch(ctx); err != nil {
		// The check before every task still notices changes; only the eager restart is lost.
		p.log.Warn().Err(err).Msg("rubypreload: watching the boot files failed; changes are noticed at the next task")
	}

	return p, nil
}

// RunRuby runs a resolved Ruby task in a child of the preloader, with spec's
// environment, input and limits (spec.Path and spec.Args are not used), and returns
// the outcome as childproc.Run would. When booting the application failed, StartErr is
// a *BootError and ResultJSON contains the failure in the result file's format, with
// the boot error's backtrace.
func (p *Preloader) RunRuby(ctx context.Context, task taskpath.Task, spec childproc.Spec) childproc.Result {
	spec = withDefaults(spec)
	result := childproc.Result{ExitCode: -1}

	if task.Kind != taskpath.Ruby || task.Path == "" || task.Constant == "" {
		result.StartErr = fmt.Errorf("task %q is not a resolved Ruby task; resolve it with taskpath.Resolve", task.Name)
		return result
	}
	if ctx.Err() != nil {
		result.StartErr = fmt.Errorf("not started: %w", context.Cause(ctx))
		return result
	}

	proc, err := p.acquire(ctx, spec.Env, spec.Timeout)
	if err != nil {
		result.StartErr = err
		var bootErr *BootError
		if errors.As(err, &bootErr) {
			result.ResultJSON = bootFailureJSON(bootErr)
		}
		return result
	}
	defer p.release(proc)

	proc.runTask(ctx, task, spec, &result)

	return result
}

// withDefaults sets zero limits of spec to childproc's defaults.
func withDefaults(spec childproc.Spec) childproc.Spec {
	if spec.KillGrace <= 0 {
		spec.KillGrace = childproc.DefaultKillGrace
	}
	if spec.OutputLimit <= 0 {
		spec.OutputLimit = childproc.DefaultOutputLimit
	}
	if spec.ResultLimit <= 0 {
		spec.ResultLimit = childproc.DefaultResultLimit
	}

	return spec
}

// bootFailureJSON returns the result-file object for a task that could not run because
// booting failed.
func bootFailureJSON(err *BootError) []byte {
	data, _ := json.Marshal(map[string]any{
		"success":   false,
		"ex":        err.Error(),
		"backtrace": err.Backtrace,
	})

	return data
}

// Close stops every preloader, which kills the children they still have, and stops
// watching. Call it after the last task has ended. Tasks that arrive later fail to start.
func (p *Preloader) Close() error {
	p.mu.Lock()
	p.closed = true
	processes := make([]*process, 0, len(p.processes))
	for proc := range p.processes {
		processes = append(processes, proc)
	}
	p.current = nil
	p.mu.Unlock()

	p.stopWatching()
	p.watching.Wait()
	for _, proc := range processes {
		proc.stop()
	}

	return nil
}

// acquire returns a booted preloader for a task with environment env, starting or
// replacing one when needed. It waits for booting up to limit (0: no limit). The
// caller must release the preloader.
func (p *Preloader) acquire(ctx context.Context, env []string, limit time.Duration) (*process, error) {
	var deadline <-chan time.Time
	if limit > 0 {
		timer := time.NewTimer(limit)
		defer timer.Stop()
		deadline = timer.C
	}

	for {
		proc, wait, err := p.pick(env)
		if err != nil {
			return nil, err
		}
		if proc == nil {
			// A preloader died a moment ago: wait out the backoff delay.
			if err := sleep(ctx, deadline, wait); err != nil {
				return nil, err
			}
			continue
		}

		select {
		case <-proc.ready:
		case <-ctx.Done():
			p.release(proc)
			return nil, fmt.Errorf("not started: %w", context.Cause(ctx))
		case <-deadline:
			p.release(proc)
			return nil, fmt.Errorf("timed out after %s waiting for the Ruby preloader to load the application", limit)
		}

		switch {
		case proc.bootErr != nil:
			p.release(proc)
			return nil, proc.bootErr
		case proc.pid == 0:
			p.release(proc)
			<-proc.exited
			return nil, fmt.Errorf("the Ruby preloader exited while loading the application: %s", proc.deathReason())
		}
		return proc, nil
	}
}

// pick returns the preloader for the next task and counts the task as active on it.
// It returns a nil process and the time to wait while a restart is held back, and the
// boot error while the watched files are as they were when booting failed.
func (p *Preloader) pick(env []string) (*process, time.Duration, error) {
	p.mu.Lock()
	defer p.mu.Unlock()

	if p.closed {
		return nil, 0, errClosed
	}
	p.env = presetEnv(env)

	stamp := stampFiles(p.watched)
	if p.failed != nil {
		if p.failed.stamp.equal(stamp) {
			return nil, 0, p.failed.err
		}
		p.failed = nil
	}

	proc := p.current
	if proc != nil && (proc.isDead() || !proc.stamp.equal(stamp)) {
		if !proc.isDead() {
			p.log.Info().Int("pid", proc.cmd.Process.Pid).Msg("rubypreload: boot file, Gemfile or Gemfile.lock changed; replacing the preloader")
		}
		p.retire(proc)
		proc = nil
	}

	if proc == nil {
		if wait := time.Until(p.restartAt); wait > 0 {
			return nil, wait, nil
		}
		var err error
		if proc, err = p.spawn(stamp); err != nil {
			return nil, 0, err
		}
	}
	p.active[proc]++

	return proc, 0, nil
}

// release ends a task's use of proc, and stops proc when it is retired and idle.
func (p *Preloader) release(proc *process) {
	p.mu.Lock()
	defer p.mu.Unlock()

	p.active[proc]--
	if p.active[proc] <= 0 {
		delete(p.active, proc)
		if p.retired[proc] {
			go proc.stop()
		}
	}
}

// retire takes proc out of service; it stops once its running tasks have ended, so that
// a deploy does not cut tasks short. Call with p.mu held.
func (p *Preloader) retire(proc *process) {
	if p.current == proc {
		p.current = nil
	}
	p.retired[proc] = true
	if p.active[proc] == 0 {
		go proc.stop()
	}
}

// spawn starts a new current preloader. Call with p.mu held.
func (p *Preloader) spawn(stamp stamp) (*process, error) {
	paths, err := rubyrunner.ResolvePaths(p.opts.Ruby)
	if err != nil {
		return nil, err
	}

	proc, err := startProcess(processConfig{
		paths:  paths,
		env:    p.env,
		stamp:  stamp,
		guard:  p.opts.Guard,
		log:    p.log,
		onBoot: p.booted,
		onDied: p.died,
		onExit: p.exited,
	})
	if err != nil {
		return nil, err
	}
	p.log.Debug().Int("pid", proc.cmd.Process.Pid).Str("boot_file", paths.BootFile).Msg("rubypreload: preloader starting")
	if err := p.addWatches(); err != nil {
		p.log.Warn().Err(err).Msg("rubypreload: watching the boot files failed; changes are noticed at the next task")
	}
	p.current = proc
	p.processes[proc] = struct{}{}

	return proc, nil
}

// booted records how booting ended. It runs on proc's reader before proc.ready closes,
// so a boot error is recorded before any task reads it.
func (p *Preloader) booted(proc *process) {
	pid := proc.cmd.Process.Pid
	switch {
	case proc.bootErr != nil:
		p.mu.Lock()
		if p.current == proc {
			p.failed = &bootFailure{err: proc.bootErr, stamp: proc.stamp}
			p.current = nil
		}
		p.retired[proc] = true
		p.mu.Unlock()
		p.log.Error().Int("pid", pid).Str("error", proc.bootErr.Error()).Strs("backtrace", first(proc.bootErr.Backtrace, 5)).
			Msg("rubypreload: booting the application failed; Ruby tasks fail until the boot file, Gemfile or Gemfile.lock changes")
	case proc.pid != 0:
		p.log.Info().Int("pid", pid).Str("duration", time.Since(proc.started).Round(time.Millisecond).String()).
			Msg("rubypreload: preloader ready")
	}
}

// died takes a preloader that died unexpectedly out of service at once, and schedules
// its replacement with backoff, so that a preloader that keeps dying is not restarted
// in a tight loop.
func (p *Preloader) died(proc *process) {
	p.mu.Lock()
	defer p.mu.Unlock()

	if p.current != proc || proc.stoppedByBolt() || proc.bootErr != nil || p.closed {
		return
	}
	p.current = nil
	p.crashed[proc] = true
	if time.Since(proc.started) > stableUptime {
		p.policy.Reset()
	}
	delay := p.policy.NextBackOff()
	p.restartAt = time.Now().Add(delay)
	time.AfterFunc(delay, p.refresh)
}

// exited removes a reaped preloader from the bookkeeping and logs how it ended.
func (p *Preloader) exited(proc *process) {
	p.mu.Lock()
	defer p.mu.Unlock()

	pid := proc.cmd.Process.Pid
	if p.crashed[proc] {
		p.log.Warn().Int("pid", pid).Str("reason", proc.deathReason()).Str("restart_in", max(time.Until(p.restartAt), 0).Round(time.Millisecond).String()).
			Msg("rubypreload: preloader died; starting a new one")
	} else {
		p.log.Debug().Int("pid", pid).Msg("rubypreload: preloader stopped")
	}

	delete(p.processes, proc)
	delete(p.retired, proc)
	delete(p.active, proc)
	delete(p.crashed, proc)
}

// refresh starts a new preloader when the current one is missing or out of date,
// without waiting for a task. It does nothing before the first task.
func (p *Preloader) refresh() {
	p.mu.Lock()
	defer p.mu.Unlock()

	if p.closed || p.env == nil || time.Now().Before(p.restartAt) {
		return
	}
	stamp := stampFiles(p.watched)
	if p.failed != nil && p.failed.stamp.equal(stamp) {
		return
	}
	if p.current != nil && !p.current.isDead() && p.current.stamp.equal(stamp) {
		return
	}

	if p.current != nil {
		p.log.Info().Int("pid", p.current.cmd.Process.Pid).Msg("rubypreload: boot file, Gemfile or Gemfile.lock changed; replacing the preloader")
		p.retire(p.current)
	}
	p.failed = nil
	if _, err := p.spawn(stamp); err != nil {
		p.log.Error().Err(err).Msg("rubypreload: starting the preloader failed; the next Ruby task tries again")
	}
}

// sleep waits for d, ctx or deadline, whichever comes first.
func sleep(ctx context.Context, deadline <-chan time.Time, d time.Duration) error {
	timer := time.NewTimer(d)
	defer timer.Stop()

	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("not started: %w", context.Cause(ctx))
	case <-deadline:
		return errors.New("timed out waiting for the Ruby preloader to restart")
	}
}

func first(lines []string, n int) []string {
	return lines[:min(n, len(lines))]
}
