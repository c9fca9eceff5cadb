package rubypreload

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/bolt-runner/bolt/childproc"
	"github.com/bolt-runner/bolt/rubyrunner"
)

// Limits of the preloader's own output, which goes to Bolt's log.
const (
	maxLoggedLines = 200
	maxLineBytes   = 1024
	stderrTailSize = 10 // lines kept for the error when the preloader dies during boot
)

// maxReply is the largest message the preloader sends, a boot failure with its backtrace.
const maxReply = 1 << 20

// stopWait is how long a stopping preloader may take to kill its children and exit
// before Bolt kills it.
const stopWait = 5 * time.Second

// reply is a message from the preloader; preloader.rb describes each kind.
type reply struct {
	Event     string   `json:"event"`
	ID        int64    `json:"id"`
	PID       int      `json:"pid"`
	Ex        string   `json:"ex"`
	Backtrace []string `json:"backtrace"`
	Status    int      `json:"status"`
	Signal    int      `json:"signal"`
}

// pendingTask receives the replies about one task.
type pendingTask struct {
	started chan reply // "started" or "start_failed"
	exited  chan reply
}

// process is one running preloader.
type process struct {
	cmd      *exec.Cmd
	conn     *net.UnixConn
	log      zerolog.Logger
	guard    *childproc.Guard
	bootFile string
	started  time.Time

	// stamp identifies the versions of the watched files that the preloader loaded.
	// env is the environment it started with, and tasks send only their differences.
	stamp stamp
	env   map[string]string

	// ready is closed when booting has ended: bootErr is set when it failed, pid is 0
	// when the process died first.
	ready   chan struct{}
	pid     int
	bootErr *BootError

	// died is closed when the socket to the preloader has closed, after which no more
	// replies come. exited is closed when the process has been reaped as well.
	died   chan struct{}
	exited chan struct{}

	// onBoot is called when booting has ended, before ready is closed. onDied is called
	// when the socket has closed, before died is closed. onExit is called once the
	// process has been reaped.
	onBoot func(*process)
	onDied func(*process)
	onExit func(*process)

	writeMu sync.Mutex
	mu      sync.Mutex
	nextID  int64
	pending map[int64]*pendingTask
	stderr  []string // last lines of the preloader's stderr
	exitErr error    // the error from Wait, set before exited is closed

	stopOnce sync.Once
	stopping bool // set by stop, under mu
}

// processConfig contains the settings of startProcess.
type processConfig struct {
	paths  rubyrunner.Paths
	env    []string
	stamp  stamp
	guard  *childproc.Guard
	log    zerolog.Logger
	onBoot func(*process)
	onDied func(*process)
	onExit func(*process)
}

// startProcess starts a preloader and returns at once; the preloader boots in the
// background and closes ready when done.
func startProcess(cfg processConfig) (*process, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("creating the preloader's socket: %w", err)
	}
	boltEnd := os.NewFile(uintptr(fds[0]), "preloader-control")
	rubyEnd := os.NewFile(uintptr(fds[1]), "preloader-control-child")
	defer rubyEnd.Close()

	conn, err := net.FileConn(boltEnd)
	_ = boltEnd.Close()
	if err != nil {
		return nil, fmt.Errorf("creating the preloader's socket: %w", err)
	}

	proc := &process{
		conn:     conn.(*net.UnixConn),
		log:      cfg.log,
		guard:    cfg.guard,
		bootFile: cfg.paths.BootFile,
		stamp:    cfg.stamp,
		env:      envMap(cfg.env),
		ready:    make(chan struct{}),
		died:     make(chan struct{}),
		exited:   make(chan struct{}),
		onBoot:   cfg.onBoot,
		onDied:   cfg.onDied,
		onExit:   cfg.onExit,
		pending:  map[int64]*pendingTask{},
	}

	if err := proc.startCommand(cfg, rubyEnd); err != nil {
		_ = proc.conn.Close()
		return nil, err
	}
	go proc.readReplies()

	return proc, nil
}

// startCommand starts Ruby on a goroutine that stays locked to its OS thread until the
// preloader exits. Linux sends the parent-death signal when the thread that started the
// child ends, so the thread must live as long as the preloader does.
func (p *process) startCommand(cfg processConfig, rubyEnd *os.File) error {
	// "--" ends Ruby's own options, so that a folder name that starts with "-" reaches
	// the script unchanged.
	script := rubyrunner.LibrarySource() + "\n" + preloaderScript
	args := append([]string{"-e", script, "--", cfg.paths.AppDir, cfg.paths.BootFile}, cfg.paths.LoadDirs...)

	stdout, stdoutWriter, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("creating the preloader's stdout pipe: %w", err)
	}
	stderr, stderrWriter, err := os.Pipe()
	if err != nil {
		_ = stdout.Close()
		_ = stdoutWriter.Close()
		return fmt.Errorf("creating the preloader's stderr pipe: %w", err)
	}

	cmd := exec.Command(cfg.paths.Ruby, args...)
	cmd.Dir = cfg.paths.AppDir
	cmd.Env = cfg.env
	cmd.Stdout = stdoutWriter
	cmd.Stderr = stderrWriter
	cmd.ExtraFiles = []*os.File{rubyEnd} // file descriptor 3
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	p.cmd = cmd

	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()

		p.started = time.Now()
		err := cmd.Start()
		_ = stdoutWriter.Close()
		_ = stderrWriter.Close()
		started <- err
		if err != nil {
			_ = stdout.Close()
			_ = stderr.Close()
			return
		}
		p.wait(stdout, stderr)
	}()

	if err := <-started; err != nil {
		return fmt.Errorf("starting the Ruby preloader %s: %w", cfg.paths.Ruby, err)
	}
	p.guard.Add(cmd.Process.Pid)

	return nil
}

// wait logs the preloader's output until it exits, then reaps it.
func (p *process) wait(stdout, stderr *os.File) {
	var output sync.WaitGroup
	output.Add(2)
	go p.logOutput(&output, stdout, "stdout")
	go p.logOutput(&output, stderr, "stderr")

	// The preloader stays unreaped until the guard has forgotten its group, so that the
	// guard never kills a group whose ID was reused.
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, p.cmd.Process.Pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	p.guard.Remove(p.cmd.Process.Pid)
	waitErr := p.cmd.Wait()

	// Children hold no copy of the preloader's output pipes, so they reach end-of-file
	// once the preloader has exited.
	output.Wait()
	<-p.died

	p.mu.Lock()
	p.exitErr = waitErr
	p.mu.Unlock()
	close(p.exited)
	if p.onExit != nil {
		p.onExit(p)
	}
}

// logOutput logs the preloader's own output line by line, up to maxLoggedLines lines.
func (p *process) logOutput(done *sync.WaitGroup, r io.ReadCloser, stream string) {
	defer done.Done()
	defer r.Close()

	scanner := bufio.NewScanner(r)
	scanner.Buffer(make([]byte, 0, 4096), 1<<20)
	logged := 0
	for scanner.Scan() {
		line := scanner.Text()
		if stream == "stderr" {
			p.mu.Lock()
			p.stderr = append(p.stderr, line)
			if len(p.stderr) > stderrTailSize {
				p.stderr = p.stderr[1:]
			}
			p.mu.Unlock()
		}

		logged++
		switch {
		case logged <= maxLoggedLines:
			if len(line) > maxLineBytes {
				line = line[:maxLineBytes] + " [cut]"
			}
			p.log.Info().Int("pid", p.cmd.Process.Pid).Str("stream", stream).Str("line", line).
				Msg("rubypreload: preloader output")
		case logged == maxLoggedLines+1:
			p.log.Warn().Int("pid", p.cmd.Process.Pid).Str("stream", stream).
				Msgf("rubypreload: preloader printed more than %d lines; further lines are not logged", maxLoggedLines)
		}
	}
	// A line longer than the scanner's buffer ends the scan; the rest is discarded so
	// that the preloader never blocks on a full pipe.
	_, _ = io.Copy(io.Discard, r)
}

// readReplies dispatches the preloader's messages until the socket closes.
func (p *process) readReplies() {
	defer p.endReplies()

	buf := make([]byte, maxReply)
	for {
		n, _, flags, _, err := p.conn.ReadMsgUnix(buf, nil)
		if err != nil || n == 0 {
			return
		}
		if flags&unix.MSG_TRUNC != 0 {
			p.log.Warn().Int("pid", p.cmd.Process.Pid).Msg("rubypreload: message from the preloader too long; ignored")
			continue
		}

		var msg reply
		if err := json.Unmarshal(buf[:n], &msg); err != nil {
			p.log.Warn().Err(err).Int("pid", p.cmd.Process.Pid).Msg("rubypreload: invalid message from the preloader; ignored")
			continue
		}
		p.dispatch(msg)
	}
}

func (p *process) dispatch(msg reply) {
	switch msg.Event {
	case "ready":
		p.pid = msg.PID
		p.endBoot()
	case "boot_failed":
		p.bootErr = &BootError{BootFile: p.bootFile, Ex: msg.Ex, Backtrace: msg.Backtrace}
		p.endBoot()
	case "started", "start_failed", "exited":
		p.mu.Lock()
		task := p.pending[msg.ID]
		p.mu.Unlock()
		if task == nil {
			p.log.Warn().Int64("request", msg.ID).Str("event", msg.Event).Msg("rubypreload: reply about an unknown task; ignored")
			return
		}
		channel := task.started
		if msg.Event == "exited" {
			channel = task.exited
		}
		// Each channel has room for one reply. A second one would be a preloader bug, and
		// dropping it keeps the reader from blocking.
		select {
		case channel <- msg:
		default:
			p.log.Warn().Int64("request", msg.ID).Str("event", msg.Event).Msg("rubypreload: repeated reply about a task; ignored")
		}
	default:
		p.log.Warn().Str("event", msg.Event).Msg("rubypreload: unknown message from the preloader; ignored")
	}
}

// endBoot records the end of booting once.
func (p *process) endBoot() {
	select {
	case <-p.ready:
		return
	default:
	}
	if p.onBoot != nil {
		p.onBoot(p)
	}
	close(p.ready)
}

func (p *process) endReplies() {
	_ = p.conn.Close()
	p.endBoot()
	if p.onDied != nil {
		p.onDied(p)
	}
	close(p.died)
}

// register returns a new request ID and the channels for its replies.
func (p *process) register() (int64, *pendingTask) {
	p.mu.Lock()
	defer p.mu.Unlock()

	p.nextID++
	task := &pendingTask{started: make(chan reply, 1), exited: make(chan reply, 1)}
	p.pending[p.nextID] = task

	return p.nextID, task
}

func (p *process) unregister(id int64) {
	p.mu.Lock()
	defer p.mu.Unlock()

	delete(p.pending, id)
}

// send writes one request, passing fds with SCM_RIGHTS.
func (p *process) send(request any, fds ...int) error {
	data, err := json.Marshal(request)
	if err != nil {
		return fmt.Errorf("encoding request to the preloader: %w", err)
	}

	var rights []byte
	if len(fds) > 0 {
		rights = unix.UnixRights(fds...)
	}

	p.writeMu.Lock()
	defer p.writeMu.Unlock()
	if _, _, err := p.conn.WriteMsgUnix(data, rights, nil); err != nil {
		return fmt.Errorf("sending request to the preloader: %w", err)
	}

	return nil
}

// isDead reports whether the preloader can no longer take requests.
func (p *process) isDead() bool {
	select {
	case <-p.died:
		return true
	default:
		return false
	}
}

// stop closes the socket, which makes the preloader kill its remaining children and
// exit, and waits until it has. A preloader that does not exit within stopWait is killed.
func (p *process) stop() {
	p.stopOnce.Do(func() {
		p.mu.Lock()
		p.stopping = true
		p.mu.Unlock()

		// A preloader still booting reads the socket only after the boot, which could
		// take long, and it has no children yet. The check comes first because closing
		// the socket ends the reader, which closes ready.
		booting := false
		select {
		case <-p.ready:
		default:
			booting = true
		}
		_ = p.conn.Close()
		if booting {
			p.kill()
		}
		timer := time.NewTimer(stopWait)
		defer timer.Stop()
		select {
		case <-p.exited:
		case <-timer.C:
			p.log.Warn().Int("pid", p.cmd.Process.Pid).Msg("rubypreload: preloader did not exit after its socket closed; killing it")
			p.kill()
		}
	})
	<-p.exited
}

// kill sends SIGKILL to the preloader's process group. Its children are in groups of
// their own and die by their parent-death signal.
func (p *process) kill() {
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
}

// stoppedByBolt reports whether stop was called.
func (p *process) stoppedByBolt() bool {
	p.mu.Lock()
	defer p.mu.Unlock()

	return p.stopping
}

// deathReason describes how the preloader ended, with the end of its stderr.
func (p *process) deathReason() string {
	p.mu.Lock()
	defer p.mu.Unlock()

	reason := "exited"
	if p.exitErr != nil {
		reason = p.exitErr.Error()
	}
	if len(p.stderr) > 0 {
		reason += "; its stderr ends with: " + strings.Join(p.stderr, " | ")
	}

	return reason
}

// envMap turns NAME=value entries into a map; a later entry wins, as in exec.Cmd.
func envMap(env []string) map[string]string {
	out := make(map[string]string, len(env))
	for _, entry := range env {
		name, value, _ := strings.Cut(entry, "=")
		out[name] = value
	}

	return out
}
