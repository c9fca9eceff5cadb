package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// clockTicks is USER_HZ, the unit of the CPU times in /proc/PID/stat. It is 100 on every
// architecture Linux supports today; see proc(5).
const clockTicks = 100

// statusKB returns the fields of /proc/PID/status that are in kB, such as VmRSS and VmHWM.
func statusKB(pid int) (map[string]int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	fields := map[string]int64{}
	scanner := bufio.NewScanner(bytes.NewReader(data))
	for scanner.Scan() {
		name, value, ok := strings.Cut(scanner.Text(), ":")
		value = strings.TrimSpace(value)
		if !ok || !strings.HasSuffix(value, " kB") {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSuffix(value, " kB"), 10, 64)
		if err == nil {
			fields[name] = n
		}
	}
	return fields, nil
}

// procStat holds the fields of /proc/PID/stat that the benchmark reads.
type procStat struct {
	ppid int
	// cpuTicks is utime + stime: the CPU time of the process itself, without its
	// children, in clockTicks.
	cpuTicks int64
}

// readStat parses /proc/PID/stat. The command name in brackets may contain spaces and
// brackets, so the fields are counted from the last closing bracket.
func readStat(pid int) (procStat, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	return parseStat(string(data))
}

func parseStat(line string) (procStat, error) {
	end := strings.LastIndexByte(line, ')')
	if end < 0 {
		return procStat{}, fmt.Errorf("malformed stat line %q", line)
	}
	// Fields after the name start with field 3 (state); ppid is field 4, utime 14, stime 15.
	fields := strings.Fields(line[end+1:])
	if len(fields) < 13 {
		return procStat{}, fmt.Errorf("stat line has %d fields after the name, want at least 13", len(fields))
	}
	ppid, err := strconv.Atoi(fields[1])
	if err != nil {
		return procStat{}, fmt.Errorf("parsing ppid: %w", err)
	}
	utime, err := strconv.ParseInt(fields[11], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("parsing utime: %w", err)
	}
	stime, err := strconv.ParseInt(fields[12], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("parsing stime: %w", err)
	}
	return procStat{ppid: ppid, cpuTicks: utime + stime}, nil
}

// processTree returns root and all its living descendants.
func processTree(root int) []int {
	entries, _ := filepath.Glob("/proc/[0-9]*/stat")
	children := map[int][]int{}
	for _, entry := range entries {
		pid, err := strconv.Atoi(filepath.Base(filepath.Dir(entry)))
		if err != nil {
			continue
		}
		st, err := readStat(pid)
		if err != nil {
			continue // the process ended while we looked
		}
		children[st.ppid] = append(children[st.ppid], pid)
	}

	tree := []int{root}
	for i := 0; i < len(tree); i++ {
		tree = append(tree, children[tree[i]]...)
	}
	return tree
}

// treeMemory returns the summed resident set (RSS) and proportional set (PSS) sizes in kB
// of root and its descendants. PSS divides each shared page among the processes that map
// it, so forked workers are not counted several times for the same pages.
func treeMemory(root int) (rssKB, pssKB int64, processes int) {
	for _, pid := range processTree(root) {
		status, err := statusKB(pid)
		if err != nil {
			continue
		}
		rssKB += status["VmRSS"]
		pssKB += readPSS(pid)
		processes++
	}
	return rssKB, pssKB, processes
}

// readPSS returns the Pss line of /proc/PID/smaps_rollup in kB, or 0 when it cannot be read.
func readPSS(pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "Pss:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return n
		}
	}
	return 0
}
