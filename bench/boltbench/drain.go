package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// drainResult is one run of a command that drains a Bolt queue and exits.
type drainResult struct {
	Label string  `json:"label"`
	Jobs  int     `json:"jobs"`
	Wall  float64 `json:"wall_s"`
	// Span runs from the first "task claimed" to the last "task finished" in the daemon's
	// log, so it leaves out start-up and the catch-up query.
	Span float64 `json:"span_s"`
	// TotalCPU is the CPU time of the command and every child it waited for (its tasks),
	// from wait4; memory.CPUSeconds is the daemon's own.
	TotalCPU float64 `json:"total_cpu_s"`
	// StoreCPU is the CPU time that a separate store process (--store-pid) used during
	// the drain.
	StoreCPU float64 `json:"store_cpu_s,omitempty"`
	memory
}

// drain runs a `bolt run --drain` command, samples its memory and CPU from /proc, and
// checks in the daemon's log that exactly the expected number of tasks succeeded.
func drain(args []string) error {
	f := flag.NewFlagSet("drain", flag.ContinueOnError)
	jobs := f.Int("jobs", 0, "number of tasks the drain must finish successfully")
	logPath := f.String("log", "", "the daemon's log file")
	out := f.String("out", "", "file the JSON result line is appended to (default: stdout)")
	label := f.String("label", "", "name of this measurement in the result")
	storePID := f.Int("store-pid", 0, "process id of a separate store process whose CPU time to measure as well")
	if err := f.Parse(args); err != nil {
		return err
	}
	if *jobs <= 0 || *logPath == "" || f.NArg() == 0 {
		return fmt.Errorf("give --jobs, --log and the command after --")
	}
	var storeBefore procStat
	if *storePID != 0 {
		var err error
		if storeBefore, err = readStat(*storePID); err != nil {
			return fmt.Errorf("reading the store process's CPU time: %w", err)
		}
	}

	offset, err := fileSize(*logPath)
	if err != nil {
		return err
	}
	cmd := exec.Command(f.Arg(0), f.Args()[1:]...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	started := time.Now()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", f.Arg(0), err)
	}
	ctx, stopSampling := context.WithCancel(context.Background())
	s := &sampler{pid: cmd.Process.Pid, treeEvery: 5}
	sampled := make(chan struct{})
	go func() { defer close(sampled); s.run(ctx, 100*time.Millisecond) }()

	err = cmd.Wait()
	wall := time.Since(started)
	stopSampling()
	<-sampled
	if err != nil {
		return fmt.Errorf("%s: %w", strings.Join(f.Args(), " "), err)
	}

	tally, err := readTaskLog(*logPath, offset)
	if err != nil {
		return err
	}
	if tally.failed > 0 || tally.finished != *jobs {
		return fmt.Errorf("%d tasks succeeded and %d failed, want %d successes; see %s", tally.finished, tally.failed, *jobs, *logPath)
	}

	result := drainResult{
		Label: *label, Jobs: *jobs, Wall: wall.Seconds(),
		Span:   tally.lastFinished.Sub(tally.firstClaimed).Seconds(),
		memory: s.memory(),
	}
	usage := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	result.TotalCPU = seconds(usage.Utime) + seconds(usage.Stime)
	if *storePID != 0 {
		storeAfter, err := readStat(*storePID)
		if err != nil {
			return fmt.Errorf("the store process ended during the drain: %w", err)
		}
		result.StoreCPU = float64(storeAfter.cpuTicks-storeBefore.cpuTicks) / clockTicks
	}
	return writeResult(*out, result)
}

func seconds(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }

func fileSize(path string) (int64, error) {
	info, err := os.Stat(path)
	if os.IsNotExist(err) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return info.Size(), nil
}

// taskTally counts task outcomes in a stretch of Bolt's log.
type taskTally struct {
	finished, failed int
	firstClaimed     time.Time
	lastFinished     time.Time
}

// readTaskLog reads Bolt's log from offset. Its lines start with an RFC 3339 time and a
// level, then the message: "2026-12-04T20:58:33.25Z INF task finished component=executor ...".
func readTaskLog(path string, offset int64) (taskTally, error) {
	var t taskTally
	file, err := os.Open(path)
	if err != nil {
		return t, err
	}
	defer file.Close()
	if _, err := file.Seek(offset, io.SeekStart); err != nil {
		return t, err
	}

	scanner := bufio.NewScanner(file)
	scanner.Buffer(make([]byte, 64*1024), 1024*1024)
	for scanner.Scan() {
		stamp, rest, _ := strings.Cut(scanner.Text(), " ")
		_, message, _ := strings.Cut(rest, " ")
		switch {
		case strings.HasPrefix(message, "task claimed "):
			if at, err := time.Parse(time.RFC3339Nano, stamp); err == nil && t.firstClaimed.IsZero() {
				t.firstClaimed = at
			}
		case strings.HasPrefix(message, "task finished ") && strings.Contains(message, " success=true"):
			t.finished++
			if at, err := time.Parse(time.RFC3339Nano, stamp); err == nil {
				t.lastFinished = at
			}
		case strings.HasPrefix(message, "task failed "), strings.HasPrefix(message, "task rejected "),
			strings.HasPrefix(message, "task timed out "):
			t.failed++
		}
	}
	return t, scanner.Err()
}
