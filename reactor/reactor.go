// Package reactor finds due tasks and claims them. It learns about new tasks from a change
// stream on task_queue (or, on servers without change streams, from polling that backs off
// when idle), keeps tasks whose run_at is in the future in a timer heap, and claims each due
// task with one atomic update before handing it to the executor.
package reactor

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/bolt-runner/bolt/scheduler"
	"github.com/bolt-runner/bolt/store"
	"github.com/bolt-runner/bolt/taskdoc"
)

// Executor runs one claimed task to its end: it records the outcome and removes or releases
// the document. The reactor calls it on its own goroutine.
type Executor interface {
	Execute(ctx context.Context, claimed bson.Raw)
}

// Config tunes a Reactor.
type Config struct {
	Throttle     int  // tasks running at once
	CatchUpLimit int  // tasks read by one catch-up query
	Drain        bool // return once no task is due and none is running
	Logger       zerolog.Logger

	// OnLoop is called on every turn of the loop, at least every IdleTick. The daemon touches
	// its heartbeat file there, so the file goes stale when the loop is stuck.
	OnLoop   func()
	IdleTick time.Duration

	// Now returns the current time; tests shift it to simulate clock skew.
	Now func() time.Time

	// Poll skips change streams and always polls for new tasks.
	Poll bool

	// PollMin and PollMax bound the polling interval on servers without change streams
	// (defaults 100ms and 2s).
	PollMin, PollMax time.Duration
}

// Reactor is the claim loop of one daemon.
type Reactor struct {
	store *store.Store
	exec  Executor
	cfg   Config
	log   zerolog.Logger

	sched   *scheduler.Scheduler
	running map[string]bool
	events  chan event
	done    chan string

	// moreWaiting is set when the last catch-up hit its limit, so another is due once the
	// heap runs low.
	moreWaiting bool

	// claimed holds the keys of the tasks this daemon is claiming or running, for the
	// watcher goroutine: the change events of its own claims need no lookup.
	claimed sync.Map

	// foundNew is set when a catch-up found tasks it had not seen, so the poller polls
	// again soon.
	foundNew atomic.Bool
}

// New returns a reactor that claims tasks from st and runs them with exec.
func New(st *store.Store, exec Executor, cfg Config) *Reactor {
	if cfg.Throttle <= 0 {
		cfg.Throttle = 5
	}
	if cfg.CatchUpLimit <= 0 {
		cfg.CatchUpLimit = 20000
	}
	if cfg.IdleTick <= 0 {
		cfg.IdleTick = 2 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.OnLoop == nil {
		cfg.OnLoop = func() {}
	}
	return &Reactor{
		store:   st,
		exec:    exec,
		cfg:     cfg,
		log:     cfg.Logger.With().Str("component", "reactor").Logger(),
		sched:   scheduler.New(),
		running: map[string]bool{},
		events:  make(chan event, 4096),
		done:    make(chan string, cfg.Throttle),
	}
}

// Run claims and runs tasks until fetchCtx is done (or, with Drain, until the queue has
// nothing due), then waits for running tasks to end. Tasks run under taskCtx: cancelling it
// stops them and leaves their documents to run again.
func (r *Reactor) Run(fetchCtx, taskCtx context.Context) error {
	watchCtx, stopWatch := context.WithCancel(fetchCtx)
	defer stopWatch()
	go r.watch(watchCtx)

	err := r.loop(fetchCtx, taskCtx)
	stopWatch()

	// Claims have stopped; wait for the tasks already running.
	for len(r.running) > 0 {
		delete(r.running, <-r.done)
	}
	return err
}

func (r *Reactor) loop(fetchCtx, taskCtx context.Context) error {
	idle := time.NewTicker(r.cfg.IdleTick)
	defer idle.Stop()
	due := time.NewTimer(time.Hour)
	defer due.Stop()
	caughtUp := false

	for {
		r.cfg.OnLoop()
		if fetchCtx.Err() != nil {
			return nil
		}

		if caughtUp {
			if err := r.claimDue(fetchCtx, taskCtx); err != nil {
				return err
			}
			if r.moreWaiting && r.sched.Len() < r.cfg.CatchUpLimit/2 {
				r.catchUp(fetchCtx)
				continue
			}
			if r.cfg.Drain && len(r.running) == 0 && !r.hasDue() {
				// Confirm with the store, because a change event may still be in flight.
				if r.catchUp(fetchCtx); !r.hasDue() && len(r.running) == 0 {
					r.log.Info().Msg("reactor: queue drained, stopping")
					return nil
				}
				continue
			}
		}
		r.resetTimer(due)

		select {
		case <-fetchCtx.Done():
			return nil
		case ev := <-r.events:
			if ev.kind == eventCatchUp {
				r.catchUp(fetchCtx)
				caughtUp = true
			} else {
				r.apply(ev)
			}
		case key := <-r.done:
			delete(r.running, key)
			r.claimed.Delete(key)
		case <-due.C:
		case <-idle.C:
		}
	}
}

// claimDue claims due tasks while the throttle allows and starts each on its own goroutine.
func (r *Reactor) claimDue(fetchCtx, taskCtx context.Context) error {
	for len(r.running) < r.cfg.Throttle {
		now := r.cfg.Now()
		e, ok := r.sched.PopDue(now)
		if !ok {
			return nil
		}
		id := e.ID.(bson.RawValue)
		if r.running[e.Key] {
			continue
		}

		r.claimed.Store(e.Key, true)
		doc, err := r.store.Claim(fetchCtx, id, now)
		if err != nil {
			r.claimed.Delete(e.Key)
		}
		if errors.Is(err, store.ErrNotClaimed) {
			r.log.Debug().Str("task_id", idString(id)).Msg("reactor: task already claimed or gone")
			continue
		}
		if err != nil {
			if fetchCtx.Err() != nil {
				return nil
			}
			// Keep the task and try again after the next event or tick.
			r.log.Error().Err(err).Str("task_id", idString(id)).Msg("reactor: claim failed")
			r.sched.Add(e.Key, id, now.Add(time.Second))
			return nil
		}

		// run_at may have moved since the task was scheduled: check the claimed document.
		if at, err := taskdoc.RunAt(doc.Lookup(taskdoc.FieldRunAt)); err == nil && at.After(now) {
			if err := r.store.Release(fetchCtx, id); err != nil {
				r.log.Error().Err(err).Str("task_id", idString(id)).Msg("reactor: releasing early claim failed")
			}
			r.claimed.Delete(e.Key)
			r.sched.Add(e.Key, id, at)
			continue
		}

		r.running[e.Key] = true
		go func(key string) {
			defer func() { r.done <- key }()
			r.exec.Execute(taskCtx, doc)
		}(e.Key)
	}
	return nil
}

func (r *Reactor) hasDue() bool {
	at, ok := r.sched.Next()
	return ok && !at.After(r.cfg.Now())
}

func (r *Reactor) resetTimer(t *time.Timer) {
	wait := time.Hour
	if at, ok := r.sched.Next(); ok && len(r.running) < r.cfg.Throttle {
		wait = max(at.Sub(r.cfg.Now()), 0)
	}
	t.Reset(wait)
}

// catchUp reads waiting tasks from the store into the heap. Errors are logged; the next
// change stream interruption or poll tries again.
func (r *Reactor) catchUp(ctx context.Context) {
	started := time.Now()
	waiting, full, err := r.store.Waiting(ctx, r.cfg.CatchUpLimit)
	if err != nil {
		if ctx.Err() == nil {
			r.log.Error().Err(err).Msg("reactor: catch-up query failed")
		}
		return
	}
	r.moreWaiting = full
	added := 0
	for _, w := range waiting {
		if !r.sched.Contains(keyOf(w.ID)) && !r.running[keyOf(w.ID)] {
			added++
		}
		r.schedule(w.ID, w.RunAt)
	}
	if added > 0 {
		r.foundNew.Store(true)
	}
	r.log.Debug().Int("tasks", len(waiting)).Bool("limit_reached", full).
		Dur("duration", time.Since(started)).Msg("reactor: caught up")
}

func (r *Reactor) schedule(id, runAt bson.RawValue) {
	key := keyOf(id)
	if r.running[key] {
		return
	}
	at, err := taskdoc.RunAt(runAt)
	if err != nil {
		// Claim it now so the executor fails it with the reason: a bad run_at must not wait forever.
		at = time.Time{}
	}
	r.sched.Add(key, id, at)
}

func (r *Reactor) apply(ev event) {
	switch ev.kind {
	case eventWaiting:
		r.schedule(ev.id, ev.runAt)
	case eventGone:
		r.sched.Remove(keyOf(ev.id))
	}
}

// keyOf returns a map key that is equal for equal _id values of any BSON type.
func keyOf(id bson.RawValue) string {
	return string(rune(id.Type)) + string(id.Value)
}

func idString(id bson.RawValue) string {
	if oid, ok := id.ObjectIDOK(); ok {
		return oid.Hex()
	}
	if s, ok := id.StringValueOK(); ok {
		return s
	}
	return id.String()
}
