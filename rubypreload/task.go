package rubypreload

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bolt-runner/bolt/childproc"
	"github.com/bolt-runner/bolt/taskpath"
)

// startWait bounds the time from sending a task to the preloader until it reports the
// forked child. Forking takes milliseconds; a preloader that takes longer is stuck.
const startWait = 30 * time.Second

// taskEnvNames are the variables that differ from task to task. They are left out of
// the preloader's own environment.
var taskEnvNames = []string{"BOLT_TASK_ID", "BOLT_TASK", childproc.ResultFileEnv}

// runRequest is the request to fork a child for one task.
type runRequest struct {
	Op       string            `json:"op"`
	ID       int64             `json:"id"`
	Task     string            `json:"task"`
	TaskFile string            `json:"task_file"`
	Constant string            `json:"constant"`
	Env      map[string]string `json:"env"`
	UnsetEnv []string          `json:"unset_env"`
}

// reapRequest lets the preloader reap an exited child.
type reapRequest struct {
	Op string `json:"op"`
	ID int64  `json:"id"`
}

// taskRun is one task forked by the preloader.
type taskRun struct {
	proc    *process
	id      int64
	replies *pendingTask
	pid     int
	started time.Time
	streams *childproc.Streams
}

// runTask runs the task in a child of the preloader and fills result the way
// childproc.Run does.
func (p *process) runTask(ctx context.Context, task taskpath.Task, spec childproc.Spec, result *childproc.Result) {
	run, err := p.startTask(task, spec)
	if err != nil {
		result.StartErr = err
		return
	}
	result.PID = run.pid
	result.Started = run.started
	spec.Guard.Add(run.pid)

	exit, exitedAt, timedOut := run.supervise(ctx, spec)
	result.TimedOut = timedOut
	result.Duration = exitedAt.Sub(run.started)

	// Until the reap request the child is unreaped, so its process ID, which is also its
	// group ID, cannot have been reused: killing the group reaches only its leftovers.
	run.signalGroup(syscall.SIGKILL)
	spec.Guard.Remove(run.pid)
	if exit.Event == "exited" {
		_ = p.send(reapRequest{Op: "reap", ID: run.id})
		result.ExitCode, result.Signal = exit.Status, signalName(exit.Signal)
	} else {
		p.log.Warn().Int("pid", run.pid).Str("task", task.Name).
			Msg("rubypreload: preloader exited while the task ran; the task was killed with it")
		result.ExitCode, result.Signal = -1, "SIGKILL"
	}
	p.unregister(run.id)

	run.streams.Collect(result)
}

// startTask creates the task's pipes and result file, sends the request with them and
// waits for the preloader to report the child. On error nothing is left open.
func (p *process) startTask(task taskpath.Task, spec childproc.Spec) (*taskRun, error) {
	streams, err := childproc.OpenStreams(spec)
	if err != nil {
		return nil, err
	}
	run := &taskRun{proc: p, streams: streams}
	stdin, stdout, stderr := streams.ChildFiles()
	if stdin == nil {
		// The preloader always receives three descriptors, and no input is /dev/null.
		if stdin, err = os.Open(os.DevNull); err != nil {
			streams.Abandon()
			return nil, fmt.Errorf("opening %s for stdin: %w", os.DevNull, err)
		}
		defer stdin.Close()
	}

	set, unset := p.envChanges(spec.Env, streams.ResultPath())
	run.id, run.replies = p.register()
	request := runRequest{
		Op: "run", ID: run.id, Task: task.Name, TaskFile: task.Path, Constant: task.Constant,
		Env: set, UnsetEnv: unset,
	}

	run.started = time.Now()
	err = p.send(request, int(stdin.Fd()), int(stdout.Fd()), int(stderr.Fd()))
	if err != nil {
		p.unregister(run.id)
		streams.Abandon()
		return nil, err
	}
	// The message in flight holds its own copies of the descriptors.
	streams.Started()

	pid, err := run.waitStarted()
	if err != nil {
		p.unregister(run.id)
		streams.Abandon()
		return nil, err
	}
	run.pid = pid

	return run, nil
}

// envChanges returns the variables of env that differ from the preloader's environment,
// with the result file's path added, and the names that env lacks.
func (p *process) envChanges(env []string, resultPath string) (map[string]string, []string) {
	want := envMap(env)
	want[childproc.ResultFileEnv] = resultPath

	set := map[string]string{}
	for name, value := range want {
		if current, ok := p.env[name]; !ok || current != value {
			set[name] = value
		}
	}
	unset := []string{}
	for name := range p.env {
		if _, ok := want[name]; !ok {
			unset = append(unset, name)
		}
	}
	slices.Sort(unset)

	return set, unset
}

// waitStarted waits for the preloader's reply to the run request.
func (r *taskRun) waitStarted() (int, error) {
	timer := time.NewTimer(startWait)
	defer timer.Stop()

	select {
	case msg := <-r.replies.started:
		if msg.Event == "start_failed" {
			return 0, fmt.Errorf("the Ruby preloader could not fork the task: %s", msg.Ex)
		}
		return msg.PID, nil
	case <-r.proc.died:
		return 0, fmt.Errorf("the Ruby preloader exited before it started the task: %s", r.proc.deathReason())
	case <-timer.C:
		// The preloader's children die with it, so killing it also ends a child that it
		// forked without saying so.
		r.proc.log.Error().Int("pid", r.proc.cmd.Process.Pid).Dur("waited", startWait).
			Msg("rubypreload: preloader did not start a task in time; killing it")
		r.proc.kill()
		return 0, fmt.Errorf("the Ruby preloader did not start the task within %s; it was killed and is restarted", startWait)
	}
}

// supervise waits for the child to exit, stopping its group when the timeout expires or
// ctx is done. It returns the exit reply (an empty Event when the preloader died first),
// the exit time and whether the timeout stopped the run.
func (r *taskRun) supervise(ctx context.Context, spec childproc.Spec) (reply, time.Time, bool) {
	var timeout <-chan time.Time
	if spec.Timeout > 0 {
		timer := time.NewTimer(spec.Timeout - time.Since(r.started))
		defer timer.Stop()
		timeout = timer.C
	}

	var kill <-chan time.Time
	var killTimer *time.Timer
	defer func() {
		if killTimer != nil {
			killTimer.Stop()
		}
	}()
	terminate := func() {
		r.signalGroup(syscall.SIGTERM)
		killTimer = time.NewTimer(spec.KillGrace)
		kill = killTimer.C
	}

	done := ctx.Done()
	timedOut := false
	for {
		select {
		case msg := <-r.replies.exited:
			return msg, time.Now(), timedOut

		case <-r.proc.died:
			// A reply dispatched just before the socket closed still counts.
			select {
			case msg := <-r.replies.exited:
				return msg, time.Now(), timedOut
			default:
				return reply{}, time.Now(), timedOut
			}

		case <-timeout:
			// An exit that is ready at the same time wins: the task finished in time.
			select {
			case msg := <-r.replies.exited:
				return msg, time.Now(), timedOut
			default:
			}
			timedOut = true
			timeout, done = nil, nil
			terminate()

		case <-done:
			timeout, done = nil, nil
			terminate()

		case <-kill:
			kill = nil
			r.signalGroup(syscall.SIGKILL)
		}
	}
}

// signalGroup sends sig to the child's process group; a group that is gone is no error.
func (r *taskRun) signalGroup(sig syscall.Signal) {
	_ = syscall.Kill(-r.pid, sig)
}

// signalName returns the name of signal number n, such as "SIGKILL", or "" for 0.
func signalName(n int) string {
	if n == 0 {
		return ""
	}
	if name := unix.SignalName(syscall.Signal(n)); name != "" {
		return name
	}

	return syscall.Signal(n).String()
}

// presetEnv returns env without the variables that differ from task to task.
func presetEnv(env []string) []string {
	return slices.DeleteFunc(slices.Clone(env), func(entry string) bool {
		name, _, _ := strings.Cut(entry, "=")
		return slices.Contains(taskEnvNames, name)
	})
}
