package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
)

// hyperfineExport is the part of `hyperfine --export-json` that the tables use.
type hyperfineExport struct {
	Results []struct {
		Command string    `json:"command"`
		Median  float64   `json:"median"`
		Min     float64   `json:"min"`
		Max     float64   `json:"max"`
		Times   []float64 `json:"times"`
	} `json:"results"`
}

// table prints the Markdown tables of a results folder written by bench/run.sh.
func table(args []string) error {
	f := flag.NewFlagSet("table", flag.ContinueOnError)
	dir := f.String("results", "bench/results", "results folder")
	tasks := f.Int("tasks", 0, "executable tasks per run in step 1")
	rubyTasks := f.Int("ruby-tasks", 0, "Ruby tasks per run in step 2")
	if err := f.Parse(args); err != nil {
		return err
	}
	t := &tables{dir: *dir, w: os.Stdout}
	t.throughput("exec.json", "1. Executable no-op tasks", *tasks, "xargs -P 5")
	t.throughput("ruby.json", "2. Ruby no-op tasks", *rubyTasks, "bare Ruby fork loop")
	t.pickup()
	t.footprint()
	t.backlog()
	t.profile()
	t.comparison()
	return nil
}

type tables struct {
	dir string
	w   io.Writer
}

func (t *tables) printf(format string, args ...any) { fmt.Fprintf(t.w, format, args...) }

// throughput prints a hyperfine comparison with each command's rate and its ratio to the
// baseline command, whose name is baseline.
func (t *tables) throughput(file, title string, tasks int, baseline string) {
	var export hyperfineExport
	if !t.readJSON(file, &export) || tasks == 0 {
		return
	}
	var base float64
	for _, r := range export.Results {
		if r.Command == baseline {
			base = r.Median
		}
	}
	t.printf("### %s (%d per run, 5 at a time)\n\n", title, tasks)
	t.printf("| runner | runs | median s | min to max s | tasks/s | rate / %s |\n|---|---|---|---|---|---|\n", baseline)
	for _, r := range export.Results {
		ratio := "n/a"
		if base > 0 {
			ratio = fmt.Sprintf("%.3f", base/r.Median)
		}
		t.printf("| %s | %d | %.2f | %.2f to %.2f | %.1f | %s |\n", r.Command, len(r.Times), r.Median, r.Min, r.Max, float64(tasks)/r.Median, ratio)
	}
	t.printf("\n")
}

func (t *tables) pickup() {
	var rows []pickupResult
	if !readLines(t, "pickup.jsonl", &rows) {
		return
	}
	t.printf("### 3. Pickup latency: insert to process start\n\n")
	t.printf("| load | samples | p50 ms | p90 ms | p99 ms | max ms | insert p50 ms | background tasks |\n|---|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		t.printf("| %s | %d | %.1f | %.1f | %.1f | %.1f | %.1f | %d |\n", r.Label, r.Samples, r.P50, r.P90, r.P99, r.Max, r.InsertP50, r.StreamTasks)
	}
	t.printf("\n")
}

func (t *tables) footprint() {
	var idle []footprintResult
	if readLines(t, "footprint.jsonl", &idle) {
		t.printf("### 4a. Idle daemon\n\n")
		t.printf("| setup | seconds | CPU %% of a core | VmRSS MB (anonymous + file) | VmHWM MB | process tree RSS / PSS MB (processes) | store process CPU %% / RSS MB | commands/s sent to the store |\n|---|---|---|---|---|---|---|---|\n")
		for _, r := range idle {
			store, commands := "in the daemon", "not counted"
			if r.StoreRSSKB > 0 {
				store = fmt.Sprintf("%.2f / %.1f", r.StoreCPUPercent, mb(r.StoreRSSKB))
			}
			if r.Commands != nil {
				var parts []string
				for _, name := range sortedKeys(r.Commands) {
					parts = append(parts, fmt.Sprintf("%s %.2f", name, r.Commands[name]))
				}
				commands = fmt.Sprintf("%.2f (%s)", r.CommandsPerSecond, strings.Join(parts, ", "))
			}
			t.printf("| %s | %.0f | %.2f | %.1f (%.1f + %.1f) | %.1f | %.1f / %.1f (%d) | %s | %s |\n", r.Label, r.Seconds, r.CPUPercent,
				mb(r.RSSKB), mb(r.AnonKB), mb(r.FileKB), mb(r.HWMKB), mb(r.TreeRSSKB), mb(r.TreePSSKB), r.TreeProcs, store, commands)
		}
		t.printf("\n")
	}

	var drains []drainResult
	if !readLines(t, "drain.jsonl", &drains) {
		return
	}
	t.printf("### 4b. Daemon under load (`bolt run --drain`, medians over runs)\n\n")
	t.printf("| workload | runs | tasks | daemon CPU %% of a core | daemon CPU ms per task | CPU ms per task with tasks | max VmRSS MB | VmHWM MB | max tree PSS MB |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, label := range labelsOf(drains, func(d drainResult) string { return d.Label }) {
		runs := filter(drains, func(d drainResult) bool { return d.Label == label })
		n := float64(runs[0].Jobs)
		t.printf("| %s | %d | %d | %.0f | %.1f | %.1f | %.1f | %.1f | %.1f |\n", label, len(runs), runs[0].Jobs,
			median(runs, func(d drainResult) float64 { return 100 * d.CPUSeconds / d.Wall }),
			median(runs, func(d drainResult) float64 { return 1000 * d.CPUSeconds / n }),
			median(runs, func(d drainResult) float64 { return 1000 * d.TotalCPU / n }),
			mb(int64(median(runs, func(d drainResult) float64 { return float64(d.RSSMaxKB) }))),
			mb(int64(median(runs, func(d drainResult) float64 { return float64(d.HWMKB) }))),
			mb(int64(median(runs, func(d drainResult) float64 { return float64(d.TreePSSMaxKB) }))))
	}
	t.printf("\n")
}

func (t *tables) backlog() {
	var drains []drainResult
	if !readLines(t, "backlog.jsonl", &drains) {
		return
	}
	t.printf("### 5. Cost per task as the backlog grows\n\n")
	t.printf("| waiting tasks | due tasks | runs | drain s (median) | ms per due task (median) | per task / smallest backlog |\n|---|---|---|---|---|---|\n")
	var base float64
	for _, label := range labelsOf(drains, func(d drainResult) string { return d.Label }) {
		runs := filter(drains, func(d drainResult) bool { return d.Label == label })
		perTask := median(runs, func(d drainResult) float64 { return 1000 * d.Span / float64(d.Jobs) })
		if base == 0 {
			base = perTask
		}
		t.printf("| %s | %d | %d | %.1f | %.0f | %.1f |\n", strings.TrimPrefix(label, "backlog "), runs[0].Jobs, len(runs),
			median(runs, func(d drainResult) float64 { return d.Wall }), perTask, perTask/base)
	}
	t.printf("\n")
}

// profile prints the CPU time per task of the daemon and of the store, each in its own
// process, from the drains that bench/storeprofile served.
func (t *tables) profile() {
	var drains []drainResult
	if !readLines(t, "profile.jsonl", &drains) {
		return
	}
	t.printf("### Where the CPU time goes: daemon and store in separate processes (one run each)\n\n")
	t.printf("| drain | tasks | wall s | daemon CPU ms per task | store CPU ms per task |\n|---|---|---|---|---|\n")
	for _, d := range drains {
		n := float64(d.Jobs)
		t.printf("| %s | %d | %.1f | %.1f | %.1f |\n", d.Label, d.Jobs, d.Wall, 1000*d.CPUSeconds/n, 1000*d.StoreCPU/n)
	}
	t.printf("\n")
}

func (t *tables) comparison() {
	var workers []workerResult
	if !readLines(t, "compare.jsonl", &workers) {
		return
	}
	t.printf("### 6. Bolt, Sidekiq and Celery, 5 jobs at a time (medians over runs)\n\n")
	t.printf("| system and job | runs | jobs | jobs/s after start-up | rate / Sidekiq | start to first job s | worker RSS sum MB | worker PSS sum MB | processes |\n|---|---|---|---|---|---|---|---|---|\n")
	rates := map[string]float64{}
	labels := labelsOf(workers, func(w workerResult) string { return w.Label })
	for _, label := range labels {
		runs := filter(workers, func(w workerResult) bool { return w.Label == label })
		rates[label] = median(runs, func(w workerResult) float64 { return w.Rate })
	}
	for _, label := range labels {
		runs := filter(workers, func(w workerResult) bool { return w.Label == label })
		ratio := "n/a"
		_, job, _ := strings.Cut(label, " ")
		if base := rates["Sidekiq "+job]; base > 0 {
			ratio = fmt.Sprintf("%.2f", rates[label]/base)
		}
		t.printf("| %s | %d | %d | %.1f | %s | %.2f | %.1f | %.1f | %d |\n", label, len(runs), runs[0].Jobs, rates[label], ratio,
			median(runs, func(w workerResult) float64 { return w.Boot }),
			mb(int64(median(runs, func(w workerResult) float64 { return float64(w.TreeRSSMaxKB) }))),
			mb(int64(median(runs, func(w workerResult) float64 { return float64(w.TreePSSMaxKB) }))),
			runs[0].TreeProcs)
	}
	t.printf("\n")
}

func (t *tables) readJSON(name string, v any) bool {
	data, err := os.ReadFile(filepath.Join(t.dir, name))
	if err != nil {
		return false
	}
	if err := json.Unmarshal(data, v); err != nil {
		fmt.Fprintf(os.Stderr, "boltbench table: %s: %v\n", name, err)
		return false
	}
	return true
}

// readLines decodes a file of JSON lines into the slice rows points to.
func readLines[T any](t *tables, name string, rows *[]T) bool {
	file, err := os.Open(filepath.Join(t.dir, name))
	if err != nil {
		return false
	}
	defer file.Close()
	scanner := bufio.NewScanner(file)
	for scanner.Scan() {
		var row T
		if err := json.Unmarshal(scanner.Bytes(), &row); err != nil {
			fmt.Fprintf(os.Stderr, "boltbench table: %s: %v\n", name, err)
			return false
		}
		*rows = append(*rows, row)
	}
	return len(*rows) > 0
}

// labelsOf returns the distinct labels of rows in their first order.
func labelsOf[T any](rows []T, label func(T) string) []string {
	var labels []string
	for _, r := range rows {
		if !slices.Contains(labels, label(r)) {
			labels = append(labels, label(r))
		}
	}
	return labels
}

func filter[T any](rows []T, keep func(T) bool) []T {
	var kept []T
	for _, r := range rows {
		if keep(r) {
			kept = append(kept, r)
		}
	}
	return kept
}

// median returns the median of value over rows. For an even count, it is the mean of the two
// middle values.
func median[T any](rows []T, value func(T) float64) float64 {
	values := make([]float64, len(rows))
	for i, r := range rows {
		values[i] = value(r)
	}
	slices.Sort(values)
	n := len(values)
	if n == 0 {
		return 0
	}
	if n%2 == 1 {
		return values[n/2]
	}
	return (values[n/2-1] + values[n/2]) / 2
}

func mb(kb int64) float64 { return float64(kb) / 1024 }

// sortedKeys returns the keys of m in order.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
