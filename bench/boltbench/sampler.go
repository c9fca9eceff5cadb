package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"time"
)

// sampler reads a process's memory and CPU time from /proc while it runs, and the memory
// of its whole process tree every treeEvery samples, keeping the maximum of each.
type sampler struct {
	pid       int
	treeEvery int

	mu         sync.Mutex
	rssMaxKB   int64
	hwmKB      int64
	cpuTicks   int64
	treeRSSMax int64
	treePSSMax int64
	treeProcs  int
	samples    int
}

// run samples every interval until ctx is done.
func (s *sampler) run(ctx context.Context, interval time.Duration) {
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for n := 0; ; n++ {
		s.sample(s.treeEvery > 0 && n%s.treeEvery == 0)
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

// sample takes one reading. A process that has just ended leaves the last reading in place.
func (s *sampler) sample(tree bool) {
	status, err := statusKB(s.pid)
	if err != nil {
		return
	}
	st, err := readStat(s.pid)
	if err != nil {
		return
	}
	var treeRSS, treePSS int64
	var procs int
	if tree {
		treeRSS, treePSS, procs = treeMemory(s.pid)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	s.samples++
	s.rssMaxKB = max(s.rssMaxKB, status["VmRSS"])
	s.hwmKB = max(s.hwmKB, status["VmHWM"])
	s.cpuTicks = st.cpuTicks
	if treeRSS > s.treeRSSMax {
		s.treeRSSMax, s.treeProcs = treeRSS, procs
	}
	s.treePSSMax = max(s.treePSSMax, treePSS)
}

// memory is the part of a result that a sampler fills in.
type memory struct {
	RSSMaxKB     int64   `json:"rss_max_kb"`
	HWMKB        int64   `json:"hwm_kb"`
	CPUSeconds   float64 `json:"cpu_s"`
	TreeRSSMaxKB int64   `json:"tree_rss_max_kb,omitempty"`
	TreePSSMaxKB int64   `json:"tree_pss_max_kb,omitempty"`
	TreeProcs    int     `json:"tree_processes,omitempty"`
}

func (s *sampler) memory() memory {
	s.mu.Lock()
	defer s.mu.Unlock()
	return memory{
		RSSMaxKB: s.rssMaxKB, HWMKB: s.hwmKB, CPUSeconds: float64(s.cpuTicks) / clockTicks,
		TreeRSSMaxKB: s.treeRSSMax, TreePSSMaxKB: s.treePSSMax, TreeProcs: s.treeProcs,
	}
}

// writeResult appends v as one JSON line to path, or prints it when path is empty.
func writeResult(path string, v any) error {
	line, err := json.Marshal(v)
	if err != nil {
		return err
	}
	line = append(line, '\n')
	if path == "" {
		_, err = os.Stdout.Write(line)
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("opening result file: %w", err)
	}
	defer f.Close()
	_, err = f.Write(line)
	return err
}
