package reactor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/bolt-runner/bolt/store"
)

// Liveness keeps this daemon's liveness record fresh and recovers the tasks of dead daemons.
//
// A daemon is dead when its record's beat counter has not changed for a whole lease as
// measured on this daemon's own clock, so clocks that differ between hosts do not matter. A
// daemon on this host whose pid no longer exists is dead at once, which makes a restart
// after kill -9 recover its tasks without waiting for the lease.
type Liveness struct {
	Store  *store.Store
	Lease  time.Duration
	Host   string
	AppDir string
	Logger zerolog.Logger

	// OnLost is called when this daemon finds its own record removed: another daemon judged
	// it dead and released its tasks, so the tasks it runs must stop.
	OnLost func()

	seen map[string]observation
}

type observation struct {
	beat int64
	at   time.Time
}

// Register writes the liveness record. Call it before the first claim.
func (l *Liveness) Register(ctx context.Context) error {
	return l.Store.Register(ctx, store.Daemon{
		Host: l.Host, PID: os.Getpid(), AppDir: l.AppDir, StartedAt: time.Now(), BeatAt: time.Now(),
	})
}

// RecoverNow releases the tasks of daemons known to be dead, such as one on this host
// whose process is gone. The daemon calls it once before its first claim, so the tasks of
// a daemon killed with kill -9 run again as soon as it is restarted.
func (l *Liveness) RecoverNow(ctx context.Context) {
	if l.seen == nil {
		l.seen = map[string]observation{}
	}
	l.recover(ctx, l.Logger.With().Str("component", "liveness").Logger())
}

// Run beats and checks other daemons until ctx is done.
func (l *Liveness) Run(ctx context.Context) {
	log := l.Logger.With().Str("component", "liveness").Logger()
	if l.seen == nil {
		l.seen = map[string]observation{}
	}
	beatEvery := l.Lease / 6
	checkEvery := l.Lease / 3
	nextCheck := time.Now().Add(jitter(checkEvery))

	for {
		if !time.Now().Before(nextCheck) {
			l.recover(ctx, log)
			nextCheck = time.Now().Add(jitter(checkEvery))
		}
		if !sleep(ctx, jitter(beatEvery)) {
			return
		}
		if err := l.Store.Beat(ctx, time.Now()); err != nil && ctx.Err() == nil {
			log.Error().Err(err).Msg("liveness: beat failed")
			// While this daemon cannot reach the store, neither can the others: forget what
			// was observed, so no daemon is judged dead for beats it could not write.
			l.seen = map[string]observation{}
			if errors.Is(err, store.ErrRecordGone) {
				if l.OnLost != nil {
					l.OnLost()
				}
				if err := l.Register(ctx); err != nil {
					log.Error().Err(err).Msg("liveness: registering again failed")
				}
			}
		}
	}
}

// recover releases the tasks of dead daemons, and of owners that have no record at all.
func (l *Liveness) recover(ctx context.Context, log zerolog.Logger) {
	// Owners are read before daemons: a daemon registers before it claims, so any owner
	// that is alive now appears in the list read second.
	owners, err := l.Store.ClaimOwners(ctx)
	if err != nil {
		log.Error().Err(err).Msg("liveness: listing owners failed")
		l.seen = map[string]observation{}
		return
	}
	daemons, err := l.Store.ListDaemons(ctx)
	if err != nil {
		log.Error().Err(err).Msg("liveness: listing daemons failed")
		l.seen = map[string]observation{}
		return
	}

	now := time.Now()
	known := map[string]bool{}
	for _, d := range daemons {
		known[d.ID] = true
		if d.ID == l.Store.Owner {
			continue
		}
		if !l.isDead(d, now) {
			continue
		}
		won, err := l.Store.RemoveDead(ctx, d.ID, d.Beat)
		if err != nil {
			log.Error().Err(err).Str("daemon", d.ID).Msg("liveness: removing dead daemon failed")
			continue
		}
		delete(l.seen, d.ID)
		if won {
			l.release(ctx, log, d.ID, "daemon stopped beating")
		}
	}
	for _, owner := range owners {
		if !known[owner] {
			l.release(ctx, log, owner, "daemon has no liveness record")
		}
	}
}

func (l *Liveness) isDead(d store.Daemon, now time.Time) bool {
	if d.Host == l.Host && d.PID > 0 && (d.PID == os.Getpid() || !processExists(d.PID)) {
		return true
	}
	prev, ok := l.seen[d.ID]
	if !ok || prev.beat != d.Beat {
		l.seen[d.ID] = observation{beat: d.Beat, at: now}
		return false
	}
	return now.Sub(prev.at) > l.Lease
}

func (l *Liveness) release(ctx context.Context, log zerolog.Logger, owner, reason string) {
	n, err := l.Store.ReleaseOwned(ctx, owner)
	if err != nil {
		log.Error().Err(err).Str("daemon", owner).Msg("liveness: recycling tasks failed")
		return
	}
	if n > 0 {
		log.Info().Str("daemon", owner).Str("reason", reason).Int64("tasks", n).
			Msg("liveness: recycled tasks of a dead daemon")
	}
}

// processExists reports whether pid is a running process. A zombie (exited, not yet
// reaped, which happens where nothing reaps orphans) does not count.
func processExists(pid int) bool {
	err := syscall.Kill(pid, 0)
	if err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return !errors.Is(err, os.ErrNotExist)
	}
	// The state field follows the command name, which is in parentheses.
	if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) {
		return stat[i+2] != 'Z'
	}
	return true
}

// jitter spreads d by up to a fifth either way so daemons do not query in step.
func jitter(d time.Duration) time.Duration {
	spread := int64(d) / 5
	if spread <= 0 {
		return d
	}
	return d + time.Duration(rand.Int64N(2*spread)-spread)
}
