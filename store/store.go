// Package store holds Bolt's queries against the task queue and the daemons' liveness records.
// Every write about a claimed task is conditioned on the claiming daemon still owning it, so a
// daemon that lost a claim can never overwrite another daemon's work.
package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/bolt-runner/bolt/taskdoc"
)

// Collection names.
const (
	TasksCollection   = "task_queue"
	DaemonsCollection = "bolt_daemons"
)

// ErrNotClaimed means the task was gone, already claimed or no longer owned by this daemon.
var ErrNotClaimed = errors.New("task not claimed")

// Store is a connection to the queue database on behalf of one daemon (its Owner).
type Store struct {
	Client  *mongo.Client
	DB      *mongo.Database
	Tasks   *mongo.Collection
	Daemons *mongo.Collection
	Owner   string
}

// Connect opens a client for uri and pings the server.
func Connect(ctx context.Context, uri, database, owner string) (*Store, error) {
	opts := options.Client().ApplyURI(uri).
		SetAppName("bolt").
		SetServerSelectionTimeout(10 * time.Second).
		SetConnectTimeout(10 * time.Second)
	client, err := mongo.Connect(opts)
	if err != nil {
		return nil, fmt.Errorf("connecting to MongoDB: %w", err)
	}
	if err := client.Ping(ctx, nil); err != nil {
		_ = client.Disconnect(context.Background())
		return nil, fmt.Errorf("connecting to MongoDB at %s: %w", redact(uri), err)
	}
	db := client.Database(database)
	return &Store{
		Client:  client,
		DB:      db,
		Tasks:   db.Collection(TasksCollection),
		Daemons: db.Collection(DaemonsCollection),
		Owner:   owner,
	}, nil
}

// Close disconnects the client.
func (s *Store) Close(ctx context.Context) error { return s.Client.Disconnect(ctx) }

// EnsureIndexes creates the indexes the queue's queries need. It is idempotent.
func (s *Store) EnsureIndexes(ctx context.Context) error {
	_, err := s.Tasks.Indexes().CreateMany(ctx, []mongo.IndexModel{
		{Keys: bson.D{{Key: taskdoc.FieldDispatched, Value: 1}, {Key: taskdoc.FieldRunAt, Value: 1}, {Key: "_id", Value: 1}},
			Options: options.Index().SetName("bolt_waiting")},
		{Keys: bson.D{{Key: taskdoc.FieldDispatchedBy, Value: 1}},
			Options: options.Index().SetName("bolt_owner")},
	})
	if err != nil {
		return fmt.Errorf("creating task_queue indexes: %w", err)
	}
	return nil
}

// Waiting is a task that no daemon has claimed, as returned by Waiting.
type Waiting struct {
	ID    bson.RawValue
	RunAt bson.RawValue
}

// Waiting returns up to limit unclaimed tasks in run_at, then insertion, order. full reports
// that the limit was reached, so more tasks may be waiting.
func (s *Store) Waiting(ctx context.Context, limit int) (tasks []Waiting, full bool, err error) {
	filter := bson.D{{Key: taskdoc.FieldDispatched, Value: bson.D{{Key: "$ne", Value: true}}}}
	opts := options.Find().
		SetProjection(bson.D{{Key: "_id", Value: 1}, {Key: taskdoc.FieldRunAt, Value: 1}}).
		SetSort(bson.D{{Key: taskdoc.FieldRunAt, Value: 1}, {Key: "_id", Value: 1}}).
		SetLimit(int64(limit)).
		SetBatchSize(int32(min(limit, 10000)))
	cur, err := s.Tasks.Find(ctx, filter, opts)
	if err != nil {
		return nil, false, fmt.Errorf("reading waiting tasks: %w", err)
	}
	defer cur.Close(ctx)
	for cur.Next(ctx) {
		tasks = append(tasks, Waiting{ID: cur.Current.Lookup("_id"), RunAt: cur.Current.Lookup(taskdoc.FieldRunAt)})
	}
	if err := cur.Err(); err != nil {
		return nil, false, fmt.Errorf("reading waiting tasks: %w", err)
	}
	return tasks, len(tasks) >= limit, nil
}

// Lookup reads the scheduling fields of one task; ok is false when it is gone or claimed.
func (s *Store) Lookup(ctx context.Context, id bson.RawValue) (w Waiting, ok bool, err error) {
	filter := bson.D{{Key: "_id", Value: id}}
	opts := options.FindOne().SetProjection(bson.D{{Key: taskdoc.FieldRunAt, Value: 1}, {Key: taskdoc.FieldDispatched, Value: 1}})
	raw, err := s.Tasks.FindOne(ctx, filter, opts).Raw()
	if errors.Is(err, mongo.ErrNoDocuments) {
		return Waiting{}, false, nil
	}
	if err != nil {
		return Waiting{}, false, fmt.Errorf("reading task %s: %w", id, err)
	}
	if d, ok := raw.Lookup(taskdoc.FieldDispatched).BooleanOK(); ok && d {
		return Waiting{}, false, nil
	}
	return Waiting{ID: id, RunAt: raw.Lookup(taskdoc.FieldRunAt)}, true, nil
}

// Claim marks the task dispatched by this daemon in one atomic update and returns the claimed
// document. It returns ErrNotClaimed when the task is gone or another daemon has it. The
// caller must not claim a task it is running.
//
// The filter matches on _id equality so that the embedded store, which pushes down only _id
// equality, reads one document instead of scanning the queue.
func (s *Store) Claim(ctx context.Context, id bson.RawValue, now time.Time) (bson.Raw, error) {
	// A task this daemon owns but does not run is one whose claim reply was lost: the
	// connection dropped after the server applied the claim. The caller never claims a task
	// it runs, so matching such a task again recovers it instead of stranding it.
	filter := bson.D{
		{Key: "_id", Value: id},
		{Key: "$or", Value: bson.A{
			bson.D{{Key: taskdoc.FieldDispatched, Value: bson.D{{Key: "$ne", Value: true}}}},
			bson.D{{Key: taskdoc.FieldDispatchedBy, Value: s.Owner}},
		}},
	}
	update := bson.D{
		{Key: "$set", Value: bson.D{
			{Key: taskdoc.FieldDispatched, Value: true},
			{Key: taskdoc.FieldDispatchedBy, Value: s.Owner},
			{Key: taskdoc.FieldDispatchedAt, Value: now},
		}},
		{Key: "$inc", Value: bson.D{{Key: taskdoc.FieldAttempts, Value: 1}}},
	}
	opts := options.FindOneAndUpdate().SetReturnDocument(options.After)
	raw, err := s.Tasks.FindOneAndUpdate(ctx, filter, update, opts).Raw()
	if errors.Is(err, mongo.ErrNoDocuments) {
		return nil, ErrNotClaimed
	}
	if err != nil {
		return nil, fmt.Errorf("claiming task %s: %w", id, err)
	}
	return raw, nil
}

// Release gives a claimed task back to the queue, to run again. The claim's attempt is
// taken back, because a release is a deliberate stop, not a daemon dying mid-run.
func (s *Store) Release(ctx context.Context, id bson.RawValue) error {
	filter := bson.D{{Key: "_id", Value: id}, {Key: taskdoc.FieldDispatchedBy, Value: s.Owner}}
	update := bson.D{
		{Key: "$set", Value: bson.D{{Key: taskdoc.FieldDispatched, Value: false}}},
		{Key: "$inc", Value: bson.D{{Key: taskdoc.FieldAttempts, Value: -1}}},
		{Key: "$unset", Value: bson.D{{Key: taskdoc.FieldDispatchedBy, Value: ""}, {Key: taskdoc.FieldDispatchedAt, Value: ""}}},
	}
	res, err := s.Tasks.UpdateOne(ctx, filter, update)
	if err != nil {
		return fmt.Errorf("releasing task %s: %w", id, err)
	}
	if res.MatchedCount == 0 {
		return ErrNotClaimed
	}
	return nil
}

// Remove deletes a finished task that this daemon owns.
func (s *Store) Remove(ctx context.Context, id bson.RawValue) error {
	filter := bson.D{{Key: "_id", Value: id}, {Key: taskdoc.FieldDispatchedBy, Value: s.Owner}}
	res, err := s.Tasks.DeleteOne(ctx, filter)
	if err != nil {
		return fmt.Errorf("removing task %s: %w", id, err)
	}
	if res.DeletedCount == 0 {
		return ErrNotClaimed
	}
	return nil
}

// Insert adds a task document and returns its _id.
func (s *Store) Insert(ctx context.Context, doc bson.D) (any, error) {
	res, err := s.Tasks.InsertOne(ctx, doc)
	if err != nil {
		return nil, fmt.Errorf("inserting task: %w", err)
	}
	return res.InsertedID, nil
}

func redact(uri string) string {
	if u, err := parseURL(uri); err == nil {
		return u
	}
	return "(the configured URI)"
}
