// Package childproc runs one task as an OS process in its own process group.
//
// Run writes the task's input to the process's stdin and keeps the tail of its output.
// It enforces a time limit, and it reaps the process and kills everything the process
// left behind in its group.
//
// # Result file
//
// Run creates an empty file in a new private temporary folder (mode 0700) and passes its
// path to the child in the environment variable BOLT_RESULT_FILE. A task may write one
// JSON object there to hand fields back to Bolt; it may write the file directly or write
// another file in the same folder and rename it onto the path. Run reads at most
// Spec.ResultLimit bytes of it after the process has exited and then removes the folder.
// An empty file means that the task wrote no result.
package childproc

import (
	"context"
	"fmt"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"
)

// ResultFileEnv is the environment variable that contains the path of the result file.
const ResultFileEnv = "BOLT_RESULT_FILE"

// Defaults for the zero values of Spec fields.
const (
	DefaultKillGrace   = 5 * time.Second
	DefaultOutputLimit = 64 << 10
	DefaultResultLimit = 1 << 20
)

// pipeDrainTimeout bounds how long Run reads output after the process group was killed.
// Processes in the group are dead by then, so the pipes normally reach end-of-file at
// once. The bound matters only when a process that left the group (by calling setsid,
// for example) still holds a pipe open.
const pipeDrainTimeout = 2 * time.Second

// Spec describes the program to run and its limits.
type Spec struct {
	// Path is the program to run. A name without a slash is looked up in Bolt's own PATH,
	// not in Env, so callers should pass an absolute path.
	Path string
	// Args are the arguments after the program name.
	Args []string
	// Dir is the working folder of the child; empty means Bolt's working folder.
	Dir string
	// Env is the complete environment of the child. Nothing is inherited from Bolt:
	// a nil Env gives the child only BOLT_RESULT_FILE, which Run always sets.
	Env []string
	// Stdin is written to the child's stdin, which is then closed. A child that exits
	// without reading it is not an error. Nil or empty connects stdin to /dev/null.
	Stdin []byte
	// Timeout is the maximum run time of the process, counted from its start;
	// zero means no limit.
	Timeout time.Duration
	// KillGrace is the time between SIGTERM and SIGKILL to the process group when the
	// run is stopped; zero means DefaultKillGrace.
	KillGrace time.Duration
	// OutputLimit is the number of bytes kept from the end of stdout, and separately
	// of stderr; zero or less means DefaultOutputLimit.
	OutputLimit int
	// ResultLimit is the maximum number of bytes read from the result file; zero or
	// less means DefaultResultLimit.
	ResultLimit int
	// Guard, when set, receives the child's process group ID, so that the group is
	// killed even when Bolt dies with SIGKILL (see Guard).
	Guard *Guard
}

// Result describes how a run ended.
type Result struct {
	// PID is the process ID of the child, or 0 if it never started.
	PID int
	// Started is the time just before the process was started.
	Started time.Time
	// Duration is the time from Started until the process exited.
	Duration time.Duration
	// ExitCode is the exit status, or -1 when the process was ended by a signal or
	// never started.
	ExitCode int
	// Signal is the name of the signal that ended the process, such as "SIGKILL",
	// or empty if it exited by itself.
	Signal string
	// TimedOut is true when Spec.Timeout expired and Run stopped the process. It is false
	// when the run was stopped because ctx was cancelled.
	TimedOut bool
	// Stdout and Stderr are the last Spec.OutputLimit bytes of each output.
	Stdout, Stderr []byte
	// StdoutDropped and StderrDropped count the bytes discarded before the kept tails.
	StdoutDropped, StderrDropped int64
	// ResultJSON is the content of the result file, or nil if the child wrote nothing.
	// It holds at most Spec.ResultLimit bytes.
	ResultJSON []byte
	// ResultTruncated is true when the result file was longer than Spec.ResultLimit, so
	// ResultJSON holds only its beginning and is not valid JSON.
	ResultTruncated bool
	// ResultErr is the error from reading the result file, such as the child replacing
	// it with a folder.
	ResultErr error
	// StartErr is the reason the process was not started, such as a missing program,
	// a permission error, an exec format error or a context that was already done.
	StartErr error
}

// withDefaults returns spec with zero fields set to their defaults.
func (spec Spec) withDefaults() Spec {
	if spec.KillGrace <= 0 {
		spec.KillGrace = DefaultKillGrace
	}
	if spec.OutputLimit <= 0 {
		spec.OutputLimit = DefaultOutputLimit
	}
	if spec.ResultLimit <= 0 {
		spec.ResultLimit = DefaultResultLimit
	}

	return spec
}

// Run starts the program of spec in its own process group and waits until it exits.
//
// The child gets PR_SET_PDEATHSIG=SIGKILL, so it dies if Bolt dies. Run writes
// spec.Stdin to the child's stdin and reads stdout and stderr continuously, keeping only
// their tails, so a child that prints gigabytes neither stalls nor grows Bolt's memory.
//
// When spec.Timeout expires or ctx is cancelled, Run sends SIGTERM to the whole process
// group, then SIGKILL after spec.KillGrace. Once the leader has exited, Run sends SIGKILL
// to the group in any case, so that no process the task started outlives it. Run returns
// after the leader is reaped and both pipes have reached end-of-file or were closed.
//
// Only the leader gets the parent-death signal. With spec.Guard set, the rest of the group
// is killed too when Bolt dies.
//
// NOTE: a process that leaves the group (with setsid or setpgid) escapes these signals and
// the guard. Putting each task into its own cgroup would close that gap.
func Run(ctx context.Context, spec Spec) Result {
	spec = spec.withDefaults()
	result := Result{ExitCode: -1}

	if ctx.Err() != nil {
		result.StartErr = fmt.Errorf("not started: %w", context.Cause(ctx))
		return result
	}

	streams, err := OpenStreams(spec)
	if err != nil {
		result.StartErr = err
		return result
	}

	// Linux sends the parent-death signal when the thread that forked the child exits,
	// not when the process does, and the Go runtime ends a thread when a goroutine exits
	// while locked to it. Locking this goroutine to its thread until the child is reaped
	// keeps that thread alive for the child's whole life, because only this goroutine
	// can run on it and the deferred unlock returns the thread to the runtime's pool.
	// The cost is one OS thread per running task.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	proc, err := start(spec, streams)
	if err != nil {
		streams.Abandon()
		result.StartErr = err
		return result
	}
	result.PID = proc.cmd.Process.Pid
	result.Started = proc.started
	spec.Guard.Add(result.PID)

	exitedAt, timedOut := proc.supervise(ctx, spec)
	result.TimedOut = timedOut
	result.Duration = exitedAt.Sub(proc.started)

	// The leader has exited but is not reaped yet, so its PID, which is also the group
	// ID, cannot be reused: killing the group now reaches only its own leftovers.
	proc.signalGroup(syscall.SIGKILL)
	spec.Guard.Remove(result.PID)
	result.ExitCode, result.Signal = proc.reap()

	streams.Collect(&result)

	return result
}

// childEnv returns env without any BOLT_RESULT_FILE entry, followed by the result file's.
func childEnv(env []string, resultPath string) []string {
	out := slices.DeleteFunc(slices.Clone(env), func(entry string) bool {
		return strings.HasPrefix(entry, ResultFileEnv+"=")
	})

	return append(out, ResultFileEnv+"="+resultPath)
}

// start starts the process with its pipes and the goroutines that feed and read them.
// On error nothing is left open.
func start(spec Spec, streams *Streams) (*process, error) {
	stdin, stdout, stderr := streams.ChildFiles()
	cmd := exec.Command(spec.Path, spec.Args...)
	cmd.Dir = spec.Dir
	cmd.Env = childEnv(spec.Env, streams.ResultPath())
	cmd.Stdout = stdout
	cmd.Stderr = stderr
	if stdin != nil {
		cmd.Stdin = stdin
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}

	// Handing *os.File values to exec.Cmd makes the child use the pipes directly, with no
	// copying goroutines inside exec, so Cmd.Wait returns as soon as the leader is reaped
	// and this package decides itself how long to wait for the pipes.
	started := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", spec.Path, err)
	}
	streams.Started()

	proc := &process{
		cmd:     cmd,
		started: started,
		exited:  make(chan time.Time, 1),
	}
	go proc.waitForExit()

	return proc, nil
}
