package notify

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"github.com/cenkalti/backoff/v4"
)

// maxLastErrorBytes limits the last_error field of a notification.
const maxLastErrorBytes = 2 << 10

// minRoundDelay keeps Run from spinning when a computed wake-up time is already past.
const minRoundDelay = 10 * time.Millisecond

// ErrAlreadyRunning is returned by Run when the Notifier's delivery loop is running.
var ErrAlreadyRunning = errors.New("notify: Run is already running on this Notifier")

// Run delivers stored mails until ctx is done, then returns nil. It wakes when Enqueue
// stores a mail and otherwise looks for due mails (retries, and mails stored by other
// daemons on the same database) about once a minute. Store and SMTP errors are logged
// and retried. They never end the loop.
//
// On shutdown, Run starts no new message but finishes the one in progress and records
// it, which takes at most Config.ConnectTimeout + Config.SendTimeout. Without SMTPURL in
// production, Run only waits for ctx: it leaves stored mails to a daemon that has an
// SMTP server.
func (n *Notifier) Run(ctx context.Context) error {
	if !n.running.CompareAndSwap(false, true) {
		return ErrAlreadyRunning
	}
	defer n.running.Store(false)

	if n.mode == modeDrop {
		<-ctx.Done()
		return nil
	}

	if err := n.store.ensureIndexes(ctx); err != nil && ctx.Err() == nil {
		n.log.Warn().Err(err).Msg("notify: creating indexes failed, so finding due mails may be slower")
	}
	n.log.Debug().Str("owner", n.owner).Msg("notify: delivery loop started")

	storeBackoff := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(time.Second),
		backoff.WithMaxInterval(n.timing.pollInterval),
		backoff.WithMaxElapsedTime(0))
	storeFailures := 0

	for {
		delay, err := n.deliverDue(ctx)
		if ctx.Err() != nil {
			break
		}
		if err != nil {
			storeFailures++
			delay = storeBackoff.NextBackOff()
			// While the store stays down, the 1st, 2nd, 4th, 8th, ... failure is logged.
			if storeFailures&(storeFailures-1) == 0 {
				n.log.Error().Err(err).Int("failures", storeFailures).Dur("retry_in", delay).
					Msg("notify: reading or writing notifications failed")
			}
		} else if storeFailures > 0 {
			n.log.Info().Int("failures", storeFailures).Msg("notify: store reachable again")
			storeFailures = 0
			storeBackoff.Reset()
		}

		timer := time.NewTimer(max(delay, minRoundDelay))
		select {
		case <-ctx.Done():
		case <-n.wake:
		case <-timer.C:
		}
		timer.Stop()
		if ctx.Err() != nil {
			break
		}
	}

	n.log.Debug().Msg("notify: delivery loop stopped")
	return nil
}

// deliverDue runs one round: it attempts every due mail of the first batch and returns
// the delay until the next round.
func (n *Notifier) deliverDue(ctx context.Context) (time.Duration, error) {
	now := time.Now()
	candidates, err := n.store.earliest(ctx, n.timing.batchSize)
	if err != nil {
		return 0, err
	}

	next := now.Add(n.jitteredPoll())
	wakeAt := func(t time.Time) {
		if t.Before(next) {
			next = t
		}
	}

	var due []notification
	for _, c := range candidates {
		if c.NextAttemptAt.After(now) {
			wakeAt(c.NextAttemptAt)
		} else {
			due = append(due, c)
		}
	}
	if len(due) == 0 {
		return time.Until(next), nil
	}

	leases, err := n.store.latestLeases(ctx)
	if err != nil {
		return 0, err
	}
	if len(candidates) < n.timing.batchSize {
		n.removeOrphanLeases(ctx, candidates, leases, now)
	}

	sess := n.transport.newSession()
	defer sess.close()

	attempted := 0
	for _, c := range due {
		if ctx.Err() != nil {
			return 0, nil
		}
		var previous *lease
		if l, ok := leases[c.ID]; ok {
			previous = &l
		}
		retryAt, didAttempt, err := n.deliverOne(ctx, sess, c.ID, previous)
		if err != nil {
			return 0, err
		}
		if didAttempt {
			attempted++
		}
		if !retryAt.IsZero() {
			wakeAt(retryAt)
		}
	}

	// A full batch of due mails may hide more due mails behind it. Mails held by other
	// daemons do not count, so that their leases cannot make this loop spin.
	if len(due) == n.timing.batchSize && attempted > 0 {
		return 0, nil
	}
	return time.Until(next), nil
}

// deliverOne claims one notification, sends it and records the result. It returns when
// the notification should be looked at again (zero when it is gone) and whether it made
// an attempt.
func (n *Notifier) deliverOne(ctx context.Context, sess session, id string, previous *lease) (time.Time, bool, error) {
	// NOTE: expiry compares this machine's clock with the holder's, so the clocks of
	// daemons that share a database must agree to well within the lease duration.
	now := time.Now()
	if previous != nil && previous.ExpiresAt.After(now) {
		return previous.ExpiresAt, false, nil
	}

	claimed, err := n.store.claim(ctx, id, previous, n.owner, now.Add(n.timing.leaseFor))
	if errors.Is(err, errLeaseTaken) {
		return now.Add(n.timing.leaseFor), false, nil
	}
	if err != nil {
		return time.Time{}, false, err
	}

	// Once the lease is held, the attempt and its record finish even when shutdown has
	// begun. Otherwise a sent mail would be sent again after a restart.
	recordCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), n.timing.recordTimeout)
	defer cancel()

	// Reload after the lease is held: the previous holder may have sent the mail or
	// rescheduled it between the scan and the claim.
	doc, found, err := n.store.load(recordCtx, id)
	if err != nil || !found || doc.NextAttemptAt.After(now) {
		n.releaseLease(recordCtx, claimed)
		if found && err == nil {
			return doc.NextAttemptAt, false, nil
		}
		return time.Time{}, false, err
	}
	if previous != nil {
		n.log.Warn().Str("notification_id", id).Str("previous_owner", previous.Owner).
			Time("expired_at", previous.ExpiresAt).
			Msg("notify: taking over a mail whose sender did not finish in time, so it may arrive twice")
	}

	result := n.attempt(ctx, sess, &doc)
	if ctx.Err() != nil && len(result.delivered) == 0 && len(result.rejected) == 0 {
		// Shutdown interrupted the attempt before anything was sent, so it does not
		// count as a failure.
		n.releaseLease(recordCtx, claimed)
		return time.Time{}, false, nil
	}

	retryAt, err := n.record(recordCtx, &doc, result)
	if err != nil {
		return time.Time{}, true, err
	}
	if !retryAt.IsZero() {
		n.releaseLease(recordCtx, claimed)
	}
	return retryAt, true, nil
}

// removeOrphanLeases deletes the expired leases of notifications that no longer exist,
// which a sender leaves behind when it dies between removing a notification and its
// leases. candidates must be all notifications, so that a missing one is really gone.
func (n *Notifier) removeOrphanLeases(ctx context.Context, candidates []notification, leases map[string]lease, now time.Time) {
	exists := make(map[string]bool, len(candidates))
	for _, c := range candidates {
		exists[c.ID] = true
	}
	for id, l := range leases {
		if exists[id] || l.ExpiresAt.After(now) {
			continue
		}
		if err := n.store.removeExpiredLeases(ctx, id, now); err != nil {
			n.log.Warn().Err(err).Str("notification_id", id).Msg("notify: removing orphan leases failed")
		}
	}
}

func (n *Notifier) releaseLease(ctx context.Context, l lease) {
	if err := n.store.release(ctx, l); err != nil {
		// The lease expires by itself, so the mail is only delayed.
		n.log.Warn().Err(err).Str("lease", l.ID).Msg("notify: releasing lease failed")
	}
}

// attemptResult is the recipients of one attempt, sorted by what the server replied.
type attemptResult struct {
	delivered []recipient
	rejected  []rejection
	pending   []recipient
	err       error // the temporary error that left recipients pending
}

type rejection struct {
	recipient recipient
	err       error
}

// attempt sends one copy of the mail to each pending recipient. An SMTP error reply
// affects only its recipient. A connection failure leaves the remaining recipients
// pending.
func (n *Notifier) attempt(ctx context.Context, sess session, doc *notification) attemptResult {
	var result attemptResult
	for i, r := range doc.To {
		if ctx.Err() != nil {
			result.pending = append(result.pending, doc.To[i:]...)
			result.err = context.Cause(ctx)
			break
		}

		err := sess.send(ctx, doc, r, n.buildMessage(doc, r))
		switch {
		case err == nil:
			result.delivered = append(result.delivered, r)
		case isPermanent(err):
			result.rejected = append(result.rejected, rejection{recipient: r, err: err})
		case isSMTPReply(err):
			result.pending = append(result.pending, r)
			result.err = err
		default:
			result.pending = append(result.pending, doc.To[i:]...)
			result.err = err
			return result
		}
	}
	return result
}

// record stores the result of an attempt and logs it. It returns the time of the next
// attempt, or zero when the notification was removed because nothing is left to send.
func (n *Notifier) record(ctx context.Context, doc *notification, result attemptResult) (time.Time, error) {
	now := time.Now()
	attempt := doc.Attempts + 1
	log := n.log.With().Str("notification_id", doc.ID).Str("task", doc.Task).
		Str("task_id", formatTaskID(doc.TaskID)).Int("attempt", attempt).Logger()

	for _, r := range result.delivered {
		log.Info().Str("to", r.String()).Str("subject", doc.Subject).Msg("notify: mail sent")
	}
	for _, r := range result.rejected {
		log.Error().Err(r.err).Str("to", r.recipient.String()).Str("subject", doc.Subject).
			Msg("notify: mail rejected by the SMTP server, giving up on this recipient")
	}

	if len(result.pending) == 0 {
		return time.Time{}, n.store.remove(ctx, doc.ID)
	}

	first := now
	if doc.FirstAttemptAt != nil {
		first = *doc.FirstAttemptAt
	}
	deadline := first.Add(n.cfg.RetryFor)
	if !now.Before(deadline) {
		log.Error().Err(result.err).Strs("to", recipientStrings(result.pending)).Str("subject", doc.Subject).
			Time("first_attempt_at", first).Dur("retry_for", n.cfg.RetryFor).
			Msg("notify: mail not delivered within the retry period, giving up")
		return time.Time{}, n.store.remove(ctx, doc.ID)
	}

	// The last attempt happens at the deadline, not after it.
	nextAttempt := now.Add(n.retryDelay(attempt))
	if nextAttempt.After(deadline) {
		nextAttempt = deadline
	}

	lastError := "unknown error"
	if result.err != nil {
		lastError, _ = truncateHead(result.err.Error(), maxLastErrorBytes)
	}
	previousError := doc.LastError
	doc.To = result.pending
	doc.Attempts = attempt
	doc.FirstAttemptAt = &first
	doc.NextAttemptAt = nextAttempt
	doc.LastError = lastError
	if err := n.store.reschedule(ctx, *doc); err != nil {
		return time.Time{}, err
	}

	// A failure that repeats the previous one is logged at debug level, so that a server
	// that is down for hours does not flood the log.
	event := log.Warn()
	if lastError == previousError {
		event = log.Debug()
	}
	event.Err(result.err).Strs("to", recipientStrings(result.pending)).
		Time("next_attempt_at", nextAttempt).
		Msg("notify: mail delivery failed, will retry")
	return nextAttempt, nil
}

// retryDelay returns the delay after the given failed attempt (1 for the first): it
// doubles from retryInitial up to retryMax, with 20% jitter. With the defaults of 1 min
// and 1 h, a mail gets about 30 attempts in 24 hours.
func (n *Notifier) retryDelay(attempt int) time.Duration {
	b := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(n.timing.retryInitial),
		backoff.WithMultiplier(2),
		backoff.WithMaxInterval(n.timing.retryMax),
		backoff.WithRandomizationFactor(0.2),
		backoff.WithMaxElapsedTime(0))
	delay := b.NextBackOff()
	for i := 1; i < attempt && i < 64; i++ {
		delay = b.NextBackOff()
	}
	return delay
}

// jitteredPoll returns the poll interval ±20%, so that daemons sharing a database do not
// scan it in step.
func (n *Notifier) jitteredPoll() time.Duration {
	factor := 0.8 + 0.4*rand.Float64()
	return time.Duration(float64(n.timing.pollInterval) * factor)
}
