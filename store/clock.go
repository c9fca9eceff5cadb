package store

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
)

// Clock is the database server's clock as seen from this host. Daemons on hosts whose
// clocks differ by minutes agree on when a task's run_at has come, because each measures its
// offset from the one server clock.
type Clock struct {
	store *Store
	// skew shifts this host's clock; tests use it to play a host with a wrong clock.
	skew   time.Duration
	offset atomic.Int64
}

// NewClock returns a clock that reads the server's time through st. skew is added to the
// local clock, for tests; pass 0 otherwise.
func NewClock(st *Store, skew time.Duration) *Clock {
	return &Clock{store: st, skew: skew}
}

// Now returns the current time on the server's clock, as of the last Sync.
func (c *Clock) Now() time.Time {
	return c.local().Add(time.Duration(c.offset.Load()))
}

func (c *Clock) local() time.Time { return time.Now().Add(c.skew) }

// Sync measures the offset between this host's clock and the server's from the localTime
// of a hello reply. It takes the end of the round trip as the moment the server read its
// clock, which errs towards an earlier server time. So a task starts late by up to one
// round trip (and a millisecond of BSON date precision), never early.
func (c *Clock) Sync(ctx context.Context) (time.Duration, error) {
	var reply struct {
		LocalTime time.Time `bson:"localTime"`
	}
	err := c.store.DB.RunCommand(ctx, bson.D{{Key: "hello", Value: 1}}).Decode(&reply)
	received := c.local()
	if err != nil {
		return 0, fmt.Errorf("reading the server's clock: %w", err)
	}
	if reply.LocalTime.IsZero() {
		return 0, fmt.Errorf("reading the server's clock: hello reply has no localTime")
	}
	offset := reply.LocalTime.Sub(received)
	c.offset.Store(int64(offset))
	return offset, nil
}

// Run syncs the clock every interval until ctx is done.
func (c *Clock) Run(ctx context.Context, interval time.Duration, onErr func(error)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := c.Sync(ctx); err != nil && ctx.Err() == nil {
				onErr(err)
			}
		}
	}
}
