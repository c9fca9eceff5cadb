package main

import (
	"context"
	"flag"
	"fmt"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
)

// futureRunAt is the run_at of backlog tasks (2100-01-01 in epoch seconds): far enough
// ahead that no benchmark reaches it, and below the 10^11 that Bolt reads as milliseconds.
const futureRunAt int64 = 4102444800

// insertBatch is the number of documents per insertMany.
const insertBatch = 1000

// fill inserts due tasks, and tops up a backlog of tasks that wait for futureRunAt, into
// an application's queue. It fails when due tasks are left from an earlier run, so a
// drain that lost or skipped tasks cannot go unnoticed.
func fill(args []string) error {
	f := flag.NewFlagSet("fill", flag.ContinueOnError)
	app := f.String("app", "", "application folder whose embedded store gets the tasks")
	bolt := f.String("bolt", "bin/bolt", "bolt binary that serves the store when no daemon does")
	database := f.String("database", "bolt_development", "database of the queue")
	task := f.String("task", "", "task name")
	due := f.Int("due", 0, "tasks to insert that are due at once")
	future := f.Int("future", 0, "tasks that wait for the year 2100 to keep in the queue as a backlog")
	if err := f.Parse(args); err != nil {
		return err
	}
	if *app == "" || *task == "" {
		return fmt.Errorf("--app and --task are required")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	s, err := openAppStore(ctx, *app, *bolt, *database)
	if err != nil {
		return err
	}
	defer s.Close()

	left, err := s.tasks.CountDocuments(ctx, bson.D{{Key: "run_at", Value: bson.D{{Key: "$ne", Value: futureRunAt}}}})
	if err != nil {
		return fmt.Errorf("counting tasks left from the previous run: %w", err)
	}
	if left > 0 {
		return fmt.Errorf("%d due tasks are still in the queue of %s: the previous run did not finish them", left, *app)
	}
	waiting, err := s.tasks.CountDocuments(ctx, bson.D{{Key: "run_at", Value: futureRunAt}})
	if err != nil {
		return fmt.Errorf("counting backlog tasks: %w", err)
	}

	if err := insertTasks(ctx, s, *task, *future-int(waiting), futureRunAt); err != nil {
		return err
	}
	return insertTasks(ctx, s, *task, *due, 0)
}

// insertTasks inserts n documents of task, with run_at when runAt is not 0.
func insertTasks(ctx context.Context, s *appStore, task string, n int, runAt int64) error {
	for n > 0 {
		batch := make([]bson.D, min(n, insertBatch))
		for i := range batch {
			batch[i] = bson.D{{Key: "task", Value: task}}
			if runAt != 0 {
				batch[i] = append(batch[i], bson.E{Key: "run_at", Value: runAt})
			}
		}
		if _, err := s.tasks.InsertMany(ctx, batch); err != nil {
			return fmt.Errorf("inserting tasks: %w", err)
		}
		n -= len(batch)
	}
	return nil
}
