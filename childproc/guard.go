package childproc

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// GuardCommand is the hidden command line argument that makes the bolt binary run as a guard.
const GuardCommand = "__guard"

// Guard is a helper process that kills the process groups of running tasks when Bolt dies.
//
// The parent-death signal reaches only a task's leader, so a grandchild in the task's group
// (a daemon the task forked, a shell pipeline) would outlive a Bolt killed with SIGKILL. The
// guard reads the group IDs of running tasks from a pipe. When Bolt dies, for any reason, the
// kernel closes Bolt's end of the pipe; the guard reads end-of-file and kills every group it
// still holds. The guard runs in its own session, so killing Bolt's process group does not
// take it along.
type Guard struct {
	mu  sync.Mutex
	w   *os.File
	cmd *exec.Cmd
}

// StartGuard starts the guard as `exe GuardCommand`. exe is normally os.Executable().
func StartGuard(exe string) (*Guard, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("starting task guard: %w", err)
	}
	cmd := exec.Command(exe, GuardCommand)
	cmd.Stdin = r
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		_ = r.Close()
		_ = w.Close()
		return nil, fmt.Errorf("starting task guard: %w", err)
	}
	_ = r.Close()
	return &Guard{w: w, cmd: cmd}, nil
}

// Add registers the process group of a task that just started.
func (g *Guard) Add(pgid int) { g.send('+', pgid) }

// Remove unregisters a task's group. Call it while the leader is still unreaped, so the
// group ID cannot have been reused by another process.
func (g *Guard) Remove(pgid int) { g.send('-', pgid) }

func (g *Guard) send(op byte, pgid int) {
	if g == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	// A failed write means the guard is gone. Each task's leader still dies with its
	// parent-death signal, so carrying on is the best that can be done.
	_, _ = fmt.Fprintf(g.w, "%c%d\n", op, pgid)
}

// Close ends the guard after the last task has ended and waits for it to exit.
func (g *Guard) Close() error {
	if g == nil {
		return nil
	}
	g.mu.Lock()
	err := g.w.Close()
	g.mu.Unlock()
	if waitErr := g.cmd.Wait(); err == nil {
		err = waitErr
	}
	return err
}

// RunGuard is the guard process's body: it keeps the registered groups until in reaches
// end-of-file, then sends SIGKILL to every group still registered. It ignores SIGTERM,
// SIGINT and SIGHUP, so `pkill bolt` lets Bolt stop its tasks gracefully instead.
func RunGuard(in io.Reader) {
	signal.Ignore(syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	// The process is named so that `pgrep bolt` finds the daemon, not its guard.
	if name, err := unix.BytePtrFromString("task-guard"); err == nil {
		_ = unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(name)), 0, 0, 0)
	}

	groups := map[int]bool{}
	scanner := bufio.NewScanner(in)
	for scanner.Scan() {
		line := scanner.Text()
		if len(line) < 2 {
			continue
		}
		pgid, err := strconv.Atoi(line[1:])
		if err != nil || pgid <= 1 {
			continue
		}
		switch line[0] {
		case '+':
			groups[pgid] = true
		case '-':
			delete(groups, pgid)
		}
	}
	for pgid := range groups {
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
	}
}
