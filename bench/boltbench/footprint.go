package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// footprintResult is a daemon's use of memory, CPU and database while it waits for work.
type footprintResult struct {
	Label      string  `json:"label"`
	Seconds    float64 `json:"seconds"`
	CPUPercent float64 `json:"cpu_percent"`
	RSSKB      int64   `json:"rss_kb"`
	HWMKB      int64   `json:"hwm_kb"`
	// AnonKB and FileKB split RSSKB into private memory (heap, stacks) and pages of
	// mapped files, mostly the binary's code, which processes share and the kernel can
	// drop and read again.
	AnonKB    int64 `json:"rss_anon_kb"`
	FileKB    int64 `json:"rss_file_kb"`
	TreeRSSKB int64 `json:"tree_rss_kb"`
	TreePSSKB int64 `json:"tree_pss_kb"`
	TreeProcs int   `json:"tree_processes"`
	// Commands per second that the daemon sent to the store, by command name, when the
	// daemon talked to the store through the counting proxy.
	CommandsPerSecond float64            `json:"commands_per_s,omitempty"`
	Commands          map[string]float64 `json:"commands,omitempty"`
	// The separate store process, when --store-pid is given.
	StoreCPUPercent float64 `json:"store_cpu_percent,omitempty"`
	StoreRSSKB      int64   `json:"store_rss_kb,omitempty"`
}

// footprint starts a daemon, waits until it is up and has settled, and then measures its
// memory, CPU and database commands over an idle interval.
func footprint(args []string) error {
	f := flag.NewFlagSet("footprint", flag.ContinueOnError)
	seconds := f.Duration("seconds", 30*time.Second, "length of the measured interval")
	settle := f.Duration("settle", 5*time.Second, "time to wait after the daemon has started before measuring")
	logPath := f.String("log", "", "the daemon's log file, watched for \"bolt: started\"")
	upstream := f.String("count-commands", "", "host:port of the store; the daemon then reaches it through a counting proxy whose URI replaces {proxy} in the command")
	storePID := f.Int("store-pid", 0, "process id of a separate store process to measure as well")
	out := f.String("out", "", "file the JSON result line is appended to (default: stdout)")
	label := f.String("label", "", "name of this measurement in the result")
	if err := f.Parse(args); err != nil {
		return err
	}
	if *logPath == "" || f.NArg() == 0 {
		return fmt.Errorf("give --log and the daemon's command after --")
	}

	command := f.Args()
	var counter *commandCounter
	if *upstream != "" {
		var err error
		if counter, err = startCommandCounter(*upstream); err != nil {
			return err
		}
		defer counter.Close()
		for i := range command {
			command[i] = strings.ReplaceAll(command[i], "{proxy}", counter.URI())
		}
	}

	offset, err := fileSize(*logPath)
	if err != nil {
		return err
	}
	cmd := exec.Command(command[0], command[1:]...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", command[0], err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer stopWorker(cmd, exited)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, _, err = countJobs(ctx, &tailReader{path: *logPath, offset: offset}, "bolt: started", 1, exited)
	if err != nil {
		return fmt.Errorf("waiting for the daemon to start: %w", err)
	}
	time.Sleep(*settle)

	result, err := measureIdle(cmd.Process.Pid, *storePID, *seconds, counter)
	if err != nil {
		return err
	}
	result.Label = *label
	return writeResult(*out, result)
}

// measureIdle reads CPU times and command counts at the start and end of the interval.
func measureIdle(pid, storePID int, interval time.Duration, counter *commandCounter) (footprintResult, error) {
	var countsBefore map[string]int
	if counter != nil {
		countsBefore = counter.Counts()
	}
	before, err := readStat(pid)
	if err != nil {
		return footprintResult{}, fmt.Errorf("reading the daemon's CPU time: %w", err)
	}
	storeBefore, _ := readStat(storePID)
	started := time.Now()

	time.Sleep(interval)

	after, err := readStat(pid)
	if err != nil {
		return footprintResult{}, fmt.Errorf("the daemon ended during the measurement: %w", err)
	}
	storeAfter, _ := readStat(storePID)
	elapsed := time.Since(started).Seconds()
	status, err := statusKB(pid)
	if err != nil {
		return footprintResult{}, err
	}
	treeRSS, treePSS, procs := treeMemory(pid)

	result := footprintResult{
		Seconds:    elapsed,
		CPUPercent: 100 * float64(after.cpuTicks-before.cpuTicks) / clockTicks / elapsed,
		RSSKB:      status["VmRSS"], HWMKB: status["VmHWM"],
		AnonKB: status["RssAnon"], FileKB: status["RssFile"],
		TreeRSSKB: treeRSS, TreePSSKB: treePSS, TreeProcs: procs,
	}
	if storePID != 0 {
		result.StoreCPUPercent = 100 * float64(storeAfter.cpuTicks-storeBefore.cpuTicks) / clockTicks / elapsed
		if storeStatus, err := statusKB(storePID); err == nil {
			result.StoreRSSKB = storeStatus["VmRSS"]
		}
	}
	if counter != nil {
		result.Commands = map[string]float64{}
		for name, n := range counter.Counts() {
			if rate := float64(n-countsBefore[name]) / elapsed; rate > 0 {
				result.Commands[name] = rate
				result.CommandsPerSecond += rate
			}
		}
	}
	return result, nil
}
