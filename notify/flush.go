package notify

import "context"

// Flush attempts every mail that is due now, batch after batch, and returns. `bolt run
// --drain`, which runs no delivery loop, calls it before exiting, so the mails about the
// tasks it ran go out (or are written to MailDir). Mails that fail stay stored and are
// retried by the next daemon's delivery loop. It returns ErrAlreadyRunning while Run is
// running on the same Notifier, because both would send the same mails.
func (n *Notifier) Flush(ctx context.Context) error {
	if n.mode == modeDrop {
		return nil
	}
	if !n.running.CompareAndSwap(false, true) {
		return ErrAlreadyRunning
	}
	defer n.running.Store(false)

	for ctx.Err() == nil {
		// deliverDue returns no delay only after a full batch, when more may be due.
		delay, err := n.deliverDue(ctx)
		if err != nil || delay > 0 {
			return err
		}
	}
	return ctx.Err()
}
