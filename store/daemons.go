package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/bolt-runner/bolt/taskdoc"
)

// ErrRecordGone means this daemon's liveness record was removed: another daemon judged it dead.
var ErrRecordGone = errors.New("record is gone; another daemon judged this one dead and released its tasks")

// Daemon is the liveness record of one running Bolt daemon.
type Daemon struct {
	ID        string    `bson:"_id"`
	Host      string    `bson:"host"`
	PID       int       `bson:"pid"`
	AppDir    string    `bson:"app_dir"`
	StartedAt time.Time `bson:"started_at"`
	// Beat grows on every liveness update. Other daemons judge liveness by whether Beat
	// changes as seen on their own clock, so clocks that differ between hosts do not matter.
	Beat   int64     `bson:"beat"`
	BeatAt time.Time `bson:"beat_at"`
}

// NewOwnerID returns a daemon identity: host, pid, start time and a random part.
func NewOwnerID(host string, pid int, started time.Time) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s:%d:%s:%s", host, pid, started.UTC().Format("20060102T150405Z"), hex.EncodeToString(b[:]))
}

// Register writes this daemon's liveness record.
func (s *Store) Register(ctx context.Context, d Daemon) error {
	d.ID = s.Owner
	_, err := s.Daemons.ReplaceOne(ctx, bson.D{{Key: "_id", Value: d.ID}}, d, options.Replace().SetUpsert(true))
	if err != nil {
		return fmt.Errorf("registering daemon: %w", err)
	}
	return nil
}

// Beat refreshes this daemon's liveness record.
func (s *Store) Beat(ctx context.Context, now time.Time) error {
	update := bson.D{
		{Key: "$inc", Value: bson.D{{Key: "beat", Value: int64(1)}}},
		{Key: "$set", Value: bson.D{{Key: "beat_at", Value: now}}},
	}
	res, err := s.Daemons.UpdateOne(ctx, bson.D{{Key: "_id", Value: s.Owner}}, update)
	if err != nil {
		return fmt.Errorf("updating liveness record: %w", err)
	}
	if res.MatchedCount == 0 {
		return fmt.Errorf("updating liveness record %s: %w", s.Owner, ErrRecordGone)
	}
	return nil
}

// Unregister removes this daemon's liveness record at a clean stop.
func (s *Store) Unregister(ctx context.Context) error {
	_, err := s.Daemons.DeleteOne(ctx, bson.D{{Key: "_id", Value: s.Owner}})
	if err != nil {
		return fmt.Errorf("removing liveness record: %w", err)
	}
	return nil
}

// ListDaemons returns every liveness record.
func (s *Store) ListDaemons(ctx context.Context) ([]Daemon, error) {
	cur, err := s.Daemons.Find(ctx, bson.D{})
	if err != nil {
		return nil, fmt.Errorf("listing daemons: %w", err)
	}
	var out []Daemon
	if err := cur.All(ctx, &out); err != nil {
		return nil, fmt.Errorf("listing daemons: %w", err)
	}
	return out, nil
}

// RemoveDead deletes a dead daemon's record only if its beat is still the one observed. Of
// several daemons that judge the same daemon dead, exactly one gets true and recovers its tasks.
func (s *Store) RemoveDead(ctx context.Context, id string, beat int64) (bool, error) {
	res, err := s.Daemons.DeleteOne(ctx, bson.D{{Key: "_id", Value: id}, {Key: "beat", Value: beat}})
	if err != nil {
		return false, fmt.Errorf("removing record of dead daemon %s: %w", id, err)
	}
	return res.DeletedCount == 1, nil
}

// ReleaseOwned makes every task claimed by owner runnable again and returns how many were.
func (s *Store) ReleaseOwned(ctx context.Context, owner string) (int64, error) {
	filter := bson.D{{Key: taskdoc.FieldDispatchedBy, Value: owner}}
	update := bson.D{
		{Key: "$set", Value: bson.D{{Key: taskdoc.FieldDispatched, Value: false}}},
		{Key: "$unset", Value: bson.D{{Key: taskdoc.FieldDispatchedBy, Value: ""}, {Key: taskdoc.FieldDispatchedAt, Value: ""}}},
	}
	res, err := s.Tasks.UpdateMany(ctx, filter, update)
	if err != nil {
		return 0, fmt.Errorf("releasing tasks of daemon %s: %w", owner, err)
	}
	return res.ModifiedCount, nil
}

// ClaimOwners returns the distinct owners of claimed tasks.
func (s *Store) ClaimOwners(ctx context.Context) ([]string, error) {
	filter := bson.D{{Key: taskdoc.FieldDispatched, Value: true}}
	res := s.Tasks.Distinct(ctx, taskdoc.FieldDispatchedBy, filter)
	var values []any
	if err := res.Decode(&values); err != nil {
		return nil, fmt.Errorf("listing owners of claimed tasks: %w", err)
	}
	var owners []string
	for _, v := range values {
		if owner, ok := v.(string); ok {
			owners = append(owners, owner)
		}
	}
	return owners, nil
}

func parseURL(uri string) (string, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return "", err
	}
	return u.Redacted(), nil
}
