package reactor

import (
	"context"
	"errors"
	"time"

	"github.com/cenkalti/backoff/v4"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/bolt-runner/bolt/taskdoc"
)

type eventKind int

const (
	eventWaiting eventKind = iota // a task may be waiting: schedule it
	eventGone                     // a task was removed or claimed elsewhere
	eventCatchUp                  // read the waiting tasks from the store
)

type event struct {
	kind  eventKind
	id    bson.RawValue
	runAt bson.RawValue
}

// Server error codes that mean the server has no change streams: 40573 (not a replica set),
// 40324 (unknown pipeline stage), 115 (command not supported), 59 (command not found),
// 238 (not implemented, the code FerretDB returns).
var noChangeStreamCodes = []int{40573, 40324, 115, 59, 238}

// ChangeStreamHistoryLost is the server's code for a resume token older than its log.
const changeStreamHistoryLost = 286

// watch feeds the loop with events from a change stream, or from polling when the server
// has no change streams. It requests a catch-up after every (re)connection, so tasks
// inserted while the stream was down are never overlooked.
func (r *Reactor) watch(ctx context.Context) {
	var token bson.Raw
	retry := backoff.NewExponentialBackOff()
	retry.InitialInterval = 200 * time.Millisecond
	retry.MaxInterval = 10 * time.Second
	retry.MaxElapsedTime = 0
	announced := false
	if r.cfg.Poll {
		r.log.Info().Str("path", "polling").Str("reason", "setting watch = poll").
			Msg("reactor: polling for new tasks with backoff")
		r.poll(ctx)
		return
	}

	for ctx.Err() == nil {
		stream, err := r.openStream(ctx, token)
		if err != nil {
			var serverErr mongo.ServerError
			switch {
			case ctx.Err() != nil:
				return
			case errors.As(err, &serverErr) && serverErr.HasErrorCode(changeStreamHistoryLost):
				r.log.Warn().Err(err).Msg("reactor: resume token too old, opening a fresh change stream")
				token = nil
				continue
			case errors.As(err, &serverErr) && hasAnyCode(serverErr, noChangeStreamCodes):
				r.log.Info().Str("path", "polling").Str("reason", err.Error()).
					Msg("reactor: server has no change streams, polling for new tasks with backoff")
				r.poll(ctx)
				return
			}
			wait := retry.NextBackOff()
			r.log.Warn().Err(err).Dur("retry_in", wait).Msg("reactor: opening change stream failed")
			if !sleep(ctx, wait) {
				return
			}
			continue
		}

		if !announced {
			r.log.Info().Str("path", "change_stream").Msg("reactor: watching task_queue through a change stream")
			announced = true
		}
		retry.Reset()
		r.send(ctx, event{kind: eventCatchUp})
		for stream.Next(ctx) {
			token = stream.ResumeToken()
			r.handleChange(ctx, stream.Current)
		}
		err = stream.Err()
		_ = stream.Close(context.Background())
		if ctx.Err() != nil {
			return
		}
		r.log.Warn().Err(err).Msg("reactor: change stream interrupted, resuming and catching up")
	}
}

func (r *Reactor) openStream(ctx context.Context, token bson.Raw) (*mongo.ChangeStream, error) {
	pipeline := mongo.Pipeline{{{Key: "$match", Value: bson.D{{Key: "operationType", Value: bson.D{
		{Key: "$in", Value: bson.A{"insert", "update", "replace", "delete"}},
	}}}}}}
	opts := options.ChangeStream().SetMaxAwaitTime(r.cfg.IdleTick)
	if token != nil {
		opts.SetResumeAfter(token)
	}
	return r.store.Tasks.Watch(ctx, pipeline, opts)
}

// handleChange turns one change event into a scheduling event. Updates that only claim a
// task or touch fields other than run_at and dispatched are ignored, so the claims of other
// daemons cost this daemon nothing.
func (r *Reactor) handleChange(ctx context.Context, change bson.Raw) {
	op, _ := change.Lookup("operationType").StringValueOK()
	id := change.Lookup("documentKey", "_id")
	if id.Type == 0 {
		return
	}

	switch op {
	case "insert":
		doc, ok := change.Lookup("fullDocument").DocumentOK()
		if !ok {
			r.lookupAndSend(ctx, id)
			return
		}
		if d, ok := doc.Lookup(taskdoc.FieldDispatched).BooleanOK(); ok && d {
			return
		}
		r.send(ctx, event{kind: eventWaiting, id: id, runAt: doc.Lookup(taskdoc.FieldRunAt)})
	case "delete":
		r.send(ctx, event{kind: eventGone, id: id})
	case "update":
		if _, own := r.claimed.Load(keyOf(id)); own {
			return // this daemon's own claim, or a change to a task it runs
		}
		if desc, ok := change.Lookup("updateDescription").DocumentOK(); ok && !touchesSchedule(desc) {
			return
		}
		r.lookupAndSend(ctx, id)
	default:
		r.lookupAndSend(ctx, id)
	}
}

// touchesSchedule reports whether an update may have made a task runnable or moved it.
func touchesSchedule(desc bson.Raw) bool {
	if updated, ok := desc.Lookup("updatedFields").DocumentOK(); ok {
		if d, ok := updated.Lookup(taskdoc.FieldDispatched).BooleanOK(); ok && d {
			return false // a claim
		}
		for _, field := range []string{taskdoc.FieldDispatched, taskdoc.FieldRunAt} {
			if _, err := updated.LookupErr(field); err == nil {
				return true
			}
		}
	}
	if removed, ok := desc.Lookup("removedFields").ArrayOK(); ok {
		values, _ := removed.Values()
		for _, v := range values {
			if s, _ := v.StringValueOK(); s == taskdoc.FieldDispatched || s == taskdoc.FieldRunAt {
				return true
			}
		}
	}
	return false
}

func (r *Reactor) lookupAndSend(ctx context.Context, id bson.RawValue) {
	w, ok, err := r.store.Lookup(ctx, id)
	switch {
	case err != nil:
		// Schedule it anyway: a claim attempt is cheap and settles what the lookup could not.
		r.log.Warn().Err(err).Str("task_id", idString(id)).Msg("reactor: reading changed task failed")
		r.send(ctx, event{kind: eventWaiting, id: id})
	case ok:
		r.send(ctx, event{kind: eventWaiting, id: w.ID, runAt: w.RunAt})
	default:
		r.send(ctx, event{kind: eventGone, id: id})
	}
}

// poll requests a catch-up from the loop on a backoff schedule: quickly after new tasks were
// found, then more and more rarely up to PollMax while the queue is quiet. The jitter keeps
// many daemons on one database from polling in step.
func (r *Reactor) poll(ctx context.Context) {
	schedule := backoff.NewExponentialBackOff()
	schedule.InitialInterval = r.pollMin()
	schedule.MaxInterval = r.pollMax()
	schedule.Multiplier = 1.5
	schedule.RandomizationFactor = 0.3
	schedule.MaxElapsedTime = 0

	for {
		r.send(ctx, event{kind: eventCatchUp})
		if r.foundNew.Swap(false) {
			schedule.Reset()
		}
		if !sleep(ctx, schedule.NextBackOff()) {
			return
		}
	}
}

func (r *Reactor) pollMin() time.Duration {
	if r.cfg.PollMin > 0 {
		return r.cfg.PollMin
	}
	return 100 * time.Millisecond
}

func (r *Reactor) pollMax() time.Duration {
	if r.cfg.PollMax > 0 {
		return r.cfg.PollMax
	}
	return 2 * time.Second
}

func (r *Reactor) send(ctx context.Context, ev event) {
	select {
	case r.events <- ev:
	case <-ctx.Done():
	}
}

func hasAnyCode(err mongo.ServerError, codes []int) bool {
	for _, c := range codes {
		if err.HasErrorCode(c) {
			return true
		}
	}
	return false
}

// sleep waits for d or until ctx is done; it returns false in the second case.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
