package childproc

import (
	"context"
	"errors"
	"os/exec"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// process is a started child with its pipes.
type process struct {
	cmd     *exec.Cmd
	started time.Time

	// exited receives the time the leader exited. The leader is still a zombie then,
	// because waitForExit waits without reaping it.
	exited chan time.Time
}

// waitForExit waits until the leader exits and sends the time on p.exited. It leaves
// the leader unreaped (WNOWAIT) so that its PID, and with it the process group ID,
// stays reserved until reap.
func (p *process) waitForExit() {
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, p.cmd.Process.Pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if !errors.Is(err, unix.EINTR) {
			// Any other error, such as ECHILD when something else reaped the
			// child, counts as an exit so that Run does not wait forever.
			break
		}
	}

	p.exited <- time.Now()
}

// supervise waits for the leader to exit, stopping the group when the timeout expires or
// ctx is done. It returns the exit time and whether the timeout stopped the run.
func (p *process) supervise(ctx context.Context, spec Spec) (time.Time, bool) {
	var timeout <-chan time.Time
	if spec.Timeout > 0 {
		timer := time.NewTimer(spec.Timeout - time.Since(p.started))
		defer timer.Stop()
		timeout = timer.C
	}

	var killTimer *time.Timer
	var kill <-chan time.Time
	defer func() {
		if killTimer != nil {
			killTimer.Stop()
		}
	}()

	done := ctx.Done()
	timedOut := false
	for {
		select {
		case exitedAt := <-p.exited:
			return exitedAt, timedOut

		case <-timeout:
			// The timer and the exit can be ready at once; an exit wins, because the
			// process finished within its time.
			select {
			case exitedAt := <-p.exited:
				return exitedAt, timedOut
			default:
			}
			timedOut = true
			timeout, done = nil, nil
			killTimer, kill = p.terminate(spec.KillGrace)

		case <-done:
			timeout, done = nil, nil
			killTimer, kill = p.terminate(spec.KillGrace)

		case <-kill:
			kill = nil
			p.signalGroup(syscall.SIGKILL)
		}
	}
}

// terminate sends SIGTERM to the group and returns a timer for the SIGKILL that follows.
func (p *process) terminate(grace time.Duration) (*time.Timer, <-chan time.Time) {
	p.signalGroup(syscall.SIGTERM)
	timer := time.NewTimer(grace)

	return timer, timer.C
}

// signalGroup sends sig to every process in the child's group. The group ID is the
// leader's PID because the child was started with Setpgid and Pgid 0. A group that no
// longer exists is not an error.
func (p *process) signalGroup(sig syscall.Signal) {
	_ = syscall.Kill(-p.cmd.Process.Pid, sig)
}

// reap collects the leader's exit status and returns its exit code and the name of the
// signal that ended it. The exit code is -1 when a signal ended the process.
func (p *process) reap() (int, string) {
	// Wait returns an *exec.ExitError for a non-zero status; ProcessState holds the
	// status either way, and is nil only if the wait itself failed.
	_ = p.cmd.Wait()
	state := p.cmd.ProcessState
	if state == nil {
		return -1, ""
	}

	status, ok := state.Sys().(syscall.WaitStatus)
	if ok && status.Signaled() {
		return -1, signalName(status.Signal())
	}

	return state.ExitCode(), ""
}

// signalName returns the conventional name of sig, such as "SIGSEGV".
func signalName(sig syscall.Signal) string {
	if name := unix.SignalName(sig); name != "" {
		return name
	}

	return sig.String()
}
