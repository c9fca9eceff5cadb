package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// workerResult is one run of a queue worker over a queue filled beforehand.
type workerResult struct {
	Label string `json:"label"`
	Jobs  int    `json:"jobs"`
	// Boot is the time from starting the worker to the first finished job.
	Boot float64 `json:"boot_s"`
	// Total is the time from starting the worker to the last finished job.
	Total float64 `json:"total_s"`
	// Rate is jobs per second between the first and the last finished job, which leaves
	// out the worker's start-up.
	Rate float64 `json:"rate"`
	memory
}

// worker starts a queue worker and counts the lines in its output, or in a log file, that
// mark a finished job. Once the expected number of jobs is done, it stops the worker with
// SIGTERM. Meanwhile it samples the memory of the worker's process tree.
func worker(args []string) error {
	f := flag.NewFlagSet("worker", flag.ContinueOnError)
	jobs := f.Int("jobs", 0, "number of finished jobs to wait for")
	done := f.String("done", "", "text in a line of output that marks a finished job")
	logPath := f.String("log", "", "log file to watch instead of the worker's output")
	output := f.String("output", "", "file that gets the worker's stdout and stderr (default: discarded)")
	out := f.String("out", "", "file the JSON result line is appended to (default: stdout)")
	label := f.String("label", "", "name of this measurement in the result")
	timeout := f.Duration("timeout", 10*time.Minute, "time to wait for the jobs before failing")
	if err := f.Parse(args); err != nil {
		return err
	}
	if *jobs < 2 || *done == "" || f.NArg() == 0 {
		return fmt.Errorf("give --jobs (at least 2, for a rate), --done and the command after --")
	}

	cmd := exec.Command(f.Arg(0), f.Args()[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	lines, err := workerLines(cmd, *logPath, *output)
	if err != nil {
		return err
	}
	started := time.Now()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", f.Arg(0), err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	s := &sampler{pid: cmd.Process.Pid, treeEvery: 1}
	go s.run(ctx, 250*time.Millisecond)

	first, last, err := countJobs(ctx, lines, *done, *jobs, exited)
	stopWorker(cmd, exited)
	if err != nil {
		return fmt.Errorf("%s: %w", *label, err)
	}
	return writeResult(*out, workerResult{
		Label: *label, Jobs: *jobs,
		Boot:   first.Sub(started).Seconds(),
		Total:  last.Sub(started).Seconds(),
		Rate:   float64(*jobs-1) / last.Sub(first).Seconds(),
		memory: s.memory(),
	})
}

// workerLines returns the stream that countJobs reads: the end of logPath as it grows, or
// else the command's output, copied to the output file when one is given.
func workerLines(cmd *exec.Cmd, logPath, output string) (io.Reader, error) {
	sink := io.Discard
	if output != "" {
		file, err := os.Create(output)
		if err != nil {
			return nil, err
		}
		sink = file
	}
	if logPath != "" {
		cmd.Stdout, cmd.Stderr = sink, sink
		offset, err := fileSize(logPath)
		if err != nil {
			return nil, err
		}
		return &tailReader{path: logPath, offset: offset}, nil
	}

	reader, writer := io.Pipe()
	cmd.Stdout, cmd.Stderr = io.MultiWriter(writer, sink), io.MultiWriter(writer, sink)
	return reader, nil
}

// countJobs reads lines until it has seen want lines containing done, and returns when
// the first and the last of them arrived. Its reader goes on reading afterwards, so that a
// worker writing to a pipe does not block on a full pipe while it stops.
func countJobs(ctx context.Context, lines io.Reader, done string, want int, exited <-chan error) (first, last time.Time, err error) {
	var mu sync.Mutex
	count := 0
	complete := make(chan struct{})
	go func() {
		scanner := bufio.NewScanner(lines)
		scanner.Buffer(make([]byte, 64*1024), 1024*1024)
		for scanner.Scan() {
			if !strings.Contains(scanner.Text(), done) {
				continue
			}
			now := time.Now()
			mu.Lock()
			count++
			if count == 1 {
				first = now
			}
			if count == want {
				last = now
				close(complete)
			}
			mu.Unlock()
		}
	}()
	select {
	case <-complete:
		return first, last, nil
	case err := <-exited:
		mu.Lock()
		defer mu.Unlock()
		return first, last, fmt.Errorf("worker exited after %d of %d jobs: %v", count, want, err)
	case <-ctx.Done():
		mu.Lock()
		defer mu.Unlock()
		return first, last, fmt.Errorf("timed out after %d of %d jobs", count, want)
	}
}

// stopWorker sends SIGTERM to the worker and, if it has not exited 30 seconds later,
// SIGKILL to its process group.
func stopWorker(cmd *exec.Cmd, exited <-chan error) {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	}
}

// tailReader reads a file from offset and waits for more at its end, as tail -f does.
type tailReader struct {
	path   string
	offset int64
	file   *os.File
}

func (t *tailReader) Read(p []byte) (int, error) {
	for {
		if t.file == nil {
			file, err := os.Open(t.path)
			if errors.Is(err, os.ErrNotExist) {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			if err != nil {
				return 0, err
			}
			if _, err := file.Seek(t.offset, io.SeekStart); err != nil {
				return 0, err
			}
			t.file = file
		}
		n, err := t.file.Read(p)
		if n > 0 || (err != nil && !errors.Is(err, io.EOF)) {
			return n, err
		}
		time.Sleep(10 * time.Millisecond)
	}
}
