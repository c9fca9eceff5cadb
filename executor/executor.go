// Package executor runs one claimed task: it checks the document, finds the task's program,
// runs it in its own process, records the outcome, queues the notification and removes the
// document. Every way a task can be wrong ends in a recorded failure, never in a lost task.
package executor

import (
	"context"
	"errors"
	"os"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/rs/zerolog"
	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/bolt-runner/bolt/childproc"
	"github.com/bolt-runner/bolt/notify"
	"github.com/bolt-runner/bolt/store"
	"github.com/bolt-runner/bolt/taskdoc"
	"github.com/bolt-runner/bolt/taskpath"
)

// Config holds what the executor needs from Bolt's settings.
type Config struct {
	AppDir   string
	LoadPath []string
	BootFile string
	Ruby     string

	Env      string
	MongoURI string
	Database string

	DefaultTimeout time.Duration
	MaxTimeout     time.Duration
	KillGrace      time.Duration
	OutputLimit    int
	MaxAttempts    int
	Host           string

	// Guard kills the tasks' process groups if Bolt dies; nil leaves that to the
	// parent-death signal, which reaches only each task's leader.
	Guard *childproc.Guard

	// RubyRunner runs Ruby tasks when set, such as a rubypreload.Preloader that forks
	// them from a preloaded Ruby process. Nil starts a fresh Ruby per task.
	RubyRunner RubyRunner
}

// RubyRunner runs a resolved Ruby task with spec's environment, input and limits,
// ignoring spec.Path and spec.Args, and returns the outcome as childproc.Run does,
// including the runner's result file.
type RubyRunner interface {
	RunRuby(ctx context.Context, task taskpath.Task, spec childproc.Spec) childproc.Result
}

// Notifier queues the mail about a task's outcome. Enqueue must not wait on a mail server.
type Notifier interface {
	Enqueue(ctx context.Context, o notify.Outcome) error
}

// Executor runs claimed tasks. It is safe for concurrent use.
type Executor struct {
	cfg      Config
	store    *store.Store
	notifier Notifier
	log      zerolog.Logger
}

// New returns an executor. notifier may be nil, which sends no mail.
func New(cfg Config, st *store.Store, notifier Notifier, log zerolog.Logger) *Executor {
	if cfg.Host == "" {
		cfg.Host, _ = os.Hostname()
	}
	return &Executor{cfg: cfg, store: st, notifier: notifier, log: log.With().Str("component", "executor").Logger()}
}

// Execute runs the claimed task to its end. When ctx is cancelled while the task runs (Bolt
// is stopping), the task's process group is stopped and the document is released to run again.
func (e *Executor) Execute(ctx context.Context, doc bson.Raw) {
	id := doc.Lookup("_id")
	name, _ := doc.Lookup(taskdoc.FieldTask).StringValueOK()
	log := e.log.With().Str("task_id", idString(id)).Str("task", name).Logger()
	log.Info().Msg("task claimed")

	out := e.run(ctx, doc, log)

	// The outcome must be written even while Bolt is stopping, so these writes get their
	// own context.
	finishCtx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	if out.interrupted {
		if err := e.retry(finishCtx, func() error { return e.store.Release(finishCtx, id) }); err != nil {
			log.Error().Err(err).Msg("task interrupted; releasing it failed, recovery at the next start will run it again")
			return
		}
		log.Warn().Int("pid", out.PID).Msg("task interrupted by stop, released to run again")
		return
	}

	e.logOutcome(log, out)
	if e.notifier != nil {
		err := e.retry(finishCtx, func() error { return e.notifier.Enqueue(finishCtx, out.Outcome) })
		if err != nil {
			log.Error().Err(err).Msg("task finished; queueing its notification failed")
		}
	}
	err := e.retry(finishCtx, func() error { return e.store.Remove(finishCtx, id) })
	switch {
	case errors.Is(err, store.ErrNotClaimed):
		log.Warn().Msg("task finished but its document is no longer claimed by this daemon; another daemon recovered it")
	case err != nil:
		log.Error().Err(err).Msg("task finished; removing its document failed")
	}
}

// retry runs op with backoff for a bounded time, stopping at a permanent error.
func (e *Executor) retry(ctx context.Context, op func() error) error {
	policy := backoff.NewExponentialBackOff()
	policy.InitialInterval = 100 * time.Millisecond
	policy.MaxElapsedTime = time.Minute
	return backoff.Retry(func() error {
		err := op()
		if errors.Is(err, store.ErrNotClaimed) {
			return backoff.Permanent(err)
		}
		return err
	}, backoff.WithContext(policy, ctx))
}

func (e *Executor) logOutcome(log zerolog.Logger, out result) {
	ev := log.Info()
	msg := "task finished"
	switch {
	case out.rejected:
		ev = log.Warn()
		msg = "task rejected"
	case out.TimedOut:
		ev = log.Warn()
		msg = "task timed out"
	case !out.Success:
		ev = log.Warn()
		msg = "task failed"
	}
	if out.PID > 0 {
		ev = ev.Int("pid", out.PID)
	}
	ev = ev.Bool("success", out.Success).Str("duration", out.Duration.Round(time.Millisecond).String())
	if out.Ex != "" {
		ev = ev.Str("ex", firstLine(out.Ex))
	}
	ev.Msg(msg)
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
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

// result is the outcome of one run plus what the executor needs to finish it.
type result struct {
	notify.Outcome
	PID         int
	rejected    bool // the document or task was invalid; nothing ran
	interrupted bool // Bolt stopped the task; its document goes back to the queue
}

func (e *Executor) reject(out result, err error) result {
	out.rejected = true
	out.Success = false
	out.Ex = err.Error()
	return out
}
