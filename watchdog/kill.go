package watchdog

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// killDaemon sends SIGKILL to the daemon's process group and to the process groups of its
// children, and returns the groups it signalled. Bolt runs each task in a process group of its
// own, so killing the daemon's group alone would leave the tasks' grandchildren running.
//
// The children are listed before anything is killed, while they are still the daemon's.
// When the daemon is not the leader of its group (started by hand in a shell), only the daemon
// itself is killed, not the shell's group.
func killDaemon(pid int) ([]int, error) {
	self, err := readStat(pid)
	if err != nil {
		return nil, err
	}
	children, err := childGroups(pid)
	if err != nil {
		return nil, err
	}

	var groups []int
	target := pid
	if self.pgrp == pid {
		target = -pid
		groups = append(groups, pid)
	}
	if err := syscall.Kill(target, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return nil, fmt.Errorf("sending SIGKILL to %d: %w", target, err)
	}
	for _, g := range children {
		if g == self.pgrp {
			continue
		}
		if err := syscall.Kill(-g, syscall.SIGKILL); err == nil {
			groups = append(groups, g)
		}
	}
	return groups, nil
}

// procStat is the part of /proc/<pid>/stat the watchdog reads.
type procStat struct {
	state      string
	ppid, pgrp int
}

// exiting reports whether pid is a zombie or dead: its main thread has exited. The other
// threads of a Go program may still run for a moment and hold its open files.
func exiting(pid int) bool {
	st, err := readStat(pid)
	return err == nil && (st.state == "Z" || st.state == "X")
}

func readStat(pid int) (procStat, error) {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return procStat{}, fmt.Errorf("reading process %d: %w", pid, err)
	}
	// The command name is in parentheses and may contain spaces, so fields are counted
	// after its closing parenthesis: state, ppid, pgrp, ...
	s := string(data)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 3 {
		return procStat{}, fmt.Errorf("reading process %d: unexpected /proc stat format %q", pid, s)
	}
	ppid, err1 := strconv.Atoi(fields[1])
	pgrp, err2 := strconv.Atoi(fields[2])
	if err1 != nil || err2 != nil {
		return procStat{}, fmt.Errorf("reading process %d: unexpected /proc stat format %q", pid, s)
	}
	return procStat{state: fields[0], ppid: ppid, pgrp: pgrp}, nil
}

// childGroups returns the distinct process groups of pid's children.
func childGroups(pid int) ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("listing processes: %w", err)
	}
	seen := map[int]bool{}
	var groups []int
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := readStat(child)
		if err != nil || st.ppid != pid || st.pgrp <= 1 || seen[st.pgrp] {
			// A process that ended while the list was read is simply not there.
			continue
		}
		seen[st.pgrp] = true
		groups = append(groups, st.pgrp)
	}
	return groups, nil
}
