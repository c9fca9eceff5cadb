package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
)

// pickupResult is the latency from inserting a task to the start of its process.
type pickupResult struct {
	Label   string  `json:"label"`
	Samples int     `json:"samples"`
	P50     float64 `json:"p50_ms"`
	P90     float64 `json:"p90_ms"`
	P99     float64 `json:"p99_ms"`
	Max     float64 `json:"max_ms"`
	// InsertP50 is the median time the insert itself took, which is part of each latency.
	InsertP50 float64 `json:"insert_p50_ms"`
	// StreamTasks is the number of background tasks inserted while measuring.
	StreamTasks int `json:"stream_tasks,omitempty"`
}

// pickup inserts tasks one at a time into the queue of a running daemon and reads, from the
// record file that each task appends to when it starts, how long each took to start.
func pickup(args []string) error {
	f := flag.NewFlagSet("pickup", flag.ContinueOnError)
	app := f.String("app", "", "application folder of the running daemon")
	bolt := f.String("bolt", "bin/bolt", "bolt binary (used only when no daemon serves the store)")
	database := f.String("database", "bolt_development", "database of the queue")
	samples := f.Int("samples", 100, "tasks to measure")
	task := f.String("task", "pickup", "task that appends `<task id> <epoch seconds>` to the record file when it starts")
	record := f.String("record", "", "file the measured tasks append to")
	gapMin := f.Duration("gap-min", 100*time.Millisecond, "shortest pause between two measured inserts")
	gapMax := f.Duration("gap-max", 300*time.Millisecond, "longest pause between two measured inserts")
	holdTask := f.String("hold-task", "hold", "task that runs until it is stopped")
	hold := f.Int("hold", 0, "hold tasks to start first, each keeping one slot busy")
	streamTask := f.String("stream-task", "noop", "task of the background stream")
	streamRate := f.Float64("stream-rate", 0, "background tasks inserted per second while measuring")
	out := f.String("out", "", "file the JSON result line is appended to (default: stdout)")
	label := f.String("label", "", "name of this measurement in the result")
	if err := f.Parse(args); err != nil {
		return err
	}
	if *app == "" || *record == "" || *samples < 1 || *gapMax < *gapMin {
		return fmt.Errorf("give --app, --record, --samples of at least 1, and --gap-max not below --gap-min")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	s, err := openAppStore(ctx, *app, *bolt, *database)
	if err != nil {
		return err
	}
	defer s.Close()

	if err := startHoldTasks(ctx, s, *holdTask, *hold); err != nil {
		return err
	}
	streamCtx, stopStream := context.WithCancel(ctx)
	streamed := make(chan int, 1)
	go func() { streamed <- stream(streamCtx, s, *streamTask, *streamRate) }()

	inserted := map[string]time.Time{}
	var insertTimes []float64
	for i := range *samples {
		gap := *gapMin + time.Duration(rand.Int64N(int64(*gapMax-*gapMin)+1))
		time.Sleep(gap)
		id := bson.NewObjectID()
		before := time.Now()
		if _, err := s.tasks.InsertOne(ctx, bson.D{{Key: "_id", Value: id}, {Key: "task", Value: *task}}); err != nil {
			stopStream()
			return fmt.Errorf("inserting task %d: %w", i+1, err)
		}
		insertTimes = append(insertTimes, milliseconds(time.Since(before)))
		inserted[id.Hex()] = before
	}

	started, err := waitForRecords(ctx, *record, inserted, time.Minute)
	stopStream()
	streamedTasks := <-streamed
	if err != nil {
		return err
	}

	var latencies []float64
	for id, at := range inserted {
		latencies = append(latencies, milliseconds(started[id].Sub(at)))
	}
	return writeResult(*out, pickupResult{
		Label: *label, Samples: len(latencies),
		P50: percentile(latencies, 50), P90: percentile(latencies, 90), P99: percentile(latencies, 99),
		Max: percentile(latencies, 100), InsertP50: percentile(insertTimes, 50), StreamTasks: streamedTasks,
	})
}

// startHoldTasks inserts n tasks that run for up to an hour and waits until the daemon has
// claimed all of them.
func startHoldTasks(ctx context.Context, s *appStore, task string, n int) error {
	if n == 0 {
		return nil
	}
	var ids bson.A
	for range n {
		id := bson.NewObjectID()
		ids = append(ids, id)
		if _, err := s.tasks.InsertOne(ctx, bson.D{{Key: "_id", Value: id}, {Key: "task", Value: task}, {Key: "timeout", Value: 3600}}); err != nil {
			return fmt.Errorf("inserting hold task: %w", err)
		}
	}
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		claimed, err := s.tasks.CountDocuments(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}}, {Key: "dispatched", Value: true}})
		if err != nil {
			return fmt.Errorf("checking hold tasks: %w", err)
		}
		if int(claimed) == n {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("the daemon did not claim %d hold tasks within a minute", n)
}

// stream inserts tasks at rate per second until ctx ends, and returns how many it inserted.
func stream(ctx context.Context, s *appStore, task string, rate float64) int {
	if rate <= 0 {
		return 0
	}
	ticker := time.NewTicker(time.Duration(float64(time.Second) / rate))
	defer ticker.Stop()
	count := 0
	for {
		select {
		case <-ctx.Done():
			return count
		case <-ticker.C:
		}
		if _, err := s.tasks.InsertOne(ctx, bson.D{{Key: "task", Value: task}}); err == nil {
			count++
		} else if ctx.Err() == nil {
			fmt.Fprintln(os.Stderr, "boltbench pickup: inserting a stream task failed:", err)
		}
	}
}

// waitForRecords polls the record file until every inserted task has a line in it.
func waitForRecords(ctx context.Context, path string, inserted map[string]time.Time, wait time.Duration) (map[string]time.Time, error) {
	deadline := time.Now().Add(wait)
	for {
		started, err := readRecords(path)
		if err != nil {
			return nil, err
		}
		missing := 0
		for id := range inserted {
			if _, ok := started[id]; !ok {
				missing++
			}
		}
		if missing == 0 {
			return started, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%d of %d tasks did not start within %s of the last insert", missing, len(inserted), wait)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// readRecords reads lines "<task id> <epoch seconds>", as bash's $EPOCHREALTIME writes them.
func readRecords(path string) (map[string]time.Time, error) {
	file, err := os.Open(path)
	if os.IsNotExist(err) {
		return map[string]time.Time{}, nil
	}
	if err != nil {
		return nil, err
	}
	defer file.Close()

	started := map[string]time.Time{}
	scanner := bufio.NewScanner(file)
	for scanner.Scan() {
		id, stamp, ok := strings.Cut(strings.TrimSpace(scanner.Text()), " ")
		if !ok {
			continue // a line still being written
		}
		// Some locales write the decimal separator as a comma.
		secs, err := strconv.ParseFloat(strings.Replace(stamp, ",", ".", 1), 64)
		if err != nil {
			continue
		}
		whole, frac := math.Modf(secs)
		started[id] = time.Unix(int64(whole), int64(frac*1e9))
	}
	return started, scanner.Err()
}

func milliseconds(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// percentile returns the nearest-rank p-th percentile of values, or 0 for none.
func percentile(values []float64, p float64) float64 {
	if len(values) == 0 {
		return 0
	}
	sorted := slices.Clone(values)
	slices.Sort(sorted)
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	return sorted[min(max(rank, 1), len(sorted))-1]
}
