package embeddedstore

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// eventRecord is a change event as the tests decode it.
type eventRecord struct {
	ID            bson.Raw       `bson:"_id"`
	OperationType string         `bson:"operationType"`
	ClusterTime   bson.Timestamp `bson:"clusterTime"`
	NS            struct {
		DB   string `bson:"db"`
		Coll string `bson:"coll"`
	} `bson:"ns"`
	DocumentKey  bson.M `bson:"documentKey"`
	FullDocument bson.M `bson:"fullDocument"`
}

func nextEvent(t *testing.T, ctx context.Context, stream *mongo.ChangeStream) eventRecord {
	t.Helper()
	require.True(t, stream.Next(ctx), "waiting for a change event: %v", stream.Err())

	var event eventRecord
	require.NoError(t, stream.Decode(&event))
	return event
}

// requireNoEvent checks that a stream has no pending event.
func requireNoEvent(t *testing.T, ctx context.Context, stream *mongo.ChangeStream) {
	t.Helper()
	assert.False(t, stream.TryNext(ctx), "unexpected event: %v", stream.Current)
	require.NoError(t, stream.Err())
}

func watch(t *testing.T, ctx context.Context, collection *mongo.Collection, pipeline any, opts ...options.Lister[options.ChangeStreamOptions]) *mongo.ChangeStream {
	t.Helper()
	if pipeline == nil {
		pipeline = mongo.Pipeline{}
	}
	stream, err := collection.Watch(ctx, pipeline, opts...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = stream.Close(context.Background()) })
	return stream
}

func TestWatchSeesInsertsInOrder(t *testing.T) {
	t.Parallel()

	server := startStore(t)
	ctx := testContext(t, time.Minute)
	watched := connect(t, server.URI()).Database("bolt_test").Collection("task_queue")
	writer := connect(t, server.URI()).Database("bolt_test").Collection("task_queue")
	other := connect(t, server.URI()).Database("bolt_test").Collection("other")

	stream := watch(t, ctx, watched, nil)

	const count = 60
	for i := range count / 2 {
		_, err := writer.InsertOne(ctx, bson.D{{Key: "n", Value: i}})
		require.NoError(t, err)
		_, err = other.InsertOne(ctx, bson.D{{Key: "n", Value: i}})
		require.NoError(t, err)
	}
	batch := make([]any, 0, count/2)
	for i := count / 2; i < count; i++ {
		batch = append(batch, bson.D{{Key: "n", Value: i}})
	}
	_, err := writer.InsertMany(ctx, batch)
	require.NoError(t, err)

	var previous bson.Timestamp
	for i := range count {
		event := nextEvent(t, ctx, stream)
		assert.Equal(t, "insert", event.OperationType)
		assert.Equal(t, "bolt_test", event.NS.DB)
		assert.Equal(t, "task_queue", event.NS.Coll)
		assert.EqualValues(t, i, event.FullDocument["n"], "events must arrive in insert order")
		assert.Equal(t, event.FullDocument["_id"], event.DocumentKey["_id"])
		assert.IsType(t, bson.ObjectID{}, event.DocumentKey["_id"], "the gate adds the ObjectId the driver generated")
		assert.True(t, previous.Before(event.ClusterTime), "clusterTime must increase")
		previous = event.ClusterTime
	}
	requireNoEvent(t, ctx, stream)
}

func TestWatchAddsMissingIDs(t *testing.T) {
	t.Parallel()

	server := startStore(t)
	ctx := testContext(t, time.Minute)
	db := connect(t, server.URI()).Database("bolt_test")
	stream := watch(t, ctx, db.Collection("tasks"), nil)

	// A raw insert command has no _id; the driver's InsertOne would add one.
	err := db.RunCommand(ctx, bson.D{
		{Key: "insert", Value: "tasks"},
		{Key: "documents", Value: bson.A{bson.D{{Key: "name", Value: "raw"}}}},
	}).Err()
	require.NoError(t, err)

	event := nextEvent(t, ctx, stream)
	require.IsType(t, bson.ObjectID{}, event.DocumentKey["_id"])

	var stored bson.M
	require.NoError(t, db.Collection("tasks").FindOne(ctx, bson.D{{Key: "name", Value: "raw"}}).Decode(&stored))
	assert.Equal(t, event.DocumentKey["_id"], stored["_id"], "the stored document must have the _id the event reported")
}

func TestWatchResumesAfterDisconnect(t *testing.T) {
	t.Parallel()

	server := startStore(t)
	ctx := testContext(t, time.Minute)
	writer := connect(t, server.URI()).Database("bolt_test").Collection("tasks")

	// The first watcher reads 5 of 10 events, keeps the token and
	// disconnects.
	firstClient := connect(t, server.URI())
	first := watch(t, ctx, firstClient.Database("bolt_test").Collection("tasks"), nil)
	for i := range 10 {
		_, err := writer.InsertOne(ctx, bson.D{{Key: "_id", Value: i}})
		require.NoError(t, err)
	}
	for i := range 5 {
		event := nextEvent(t, ctx, first)
		require.EqualValues(t, i, event.DocumentKey["_id"])
	}
	token := first.ResumeToken()
	require.NotNil(t, token)
	require.NoError(t, first.Close(ctx))
	require.NoError(t, firstClient.Disconnect(ctx))

	for i := 10; i < 15; i++ {
		_, err := writer.InsertOne(ctx, bson.D{{Key: "_id", Value: i}})
		require.NoError(t, err)
	}

	for _, option := range []struct {
		name string
		opts *options.ChangeStreamOptionsBuilder
	}{
		{"resumeAfter", options.ChangeStream().SetResumeAfter(token)},
		{"startAfter", options.ChangeStream().SetStartAfter(token)},
	} {
		t.Run(option.name, func(t *testing.T) {
			resumed := watch(t, ctx, connect(t, server.URI()).Database("bolt_test").Collection("tasks"), nil, option.opts)
			for i := 5; i < 15; i++ {
				event := nextEvent(t, ctx, resumed)
				assert.EqualValues(t, i, event.DocumentKey["_id"], "no event may be lost or repeated")
			}
			requireNoEvent(t, ctx, resumed)
		})
	}
}

func TestWatchResumesFromPostBatchToken(t *testing.T) {
	t.Parallel()

	server := startStore(t)
	ctx := testContext(t, time.Minute)
	writer := connect(t, server.URI()).Database("bolt_test").Collection("tasks")

	// A stream that saw no event still has a token: the position it
	// reached. Events after it must be delivered on resume.
	stream := watch(t, ctx, connect(t, server.URI()).Database("bolt_test").Collection("tasks"), nil)
	_, err := writer.InsertOne(ctx, bson.D{{Key: "_id", Value: "before"}})
	require.NoError(t, err)
	require.Equal(t, "before", nextEvent(t, ctx, stream).DocumentKey["_id"])
	requireNoEvent(t, ctx, stream)
	token := stream.ResumeToken()
	require.NoError(t, stream.Close(ctx))

	_, err = writer.InsertOne(ctx, bson.D{{Key: "_id", Value: "after"}})
	require.NoError(t, err)

	resumed := watch(t, ctx, writer, nil, options.ChangeStream().SetResumeAfter(token))
	assert.Equal(t, "after", nextEvent(t, ctx, resumed).DocumentKey["_id"])
}

func TestWatchReportsUpdatesAndDeletes(t *testing.T) {
	t.Parallel()

	server := startStore(t)
	ctx := testContext(t, time.Minute)
	tasks := connect(t, server.URI()).Database("bolt_test").Collection("tasks")
	_, err := tasks.InsertMany(ctx, []any{
		bson.D{{Key: "_id", Value: 1}, {Key: "state", Value: "new"}},
		bson.D{{Key: "_id", Value: 2}, {Key: "state", Value: "new"}},
		bson.D{{Key: "_id", Value: 3}, {Key: "state", Value: "new"}},
		bson.D{{Key: "_id", Value: 4}, {Key: "state", Value: "old"}},
	})
	require.NoError(t, err)

	stream := watch(t, ctx, connect(t, server.URI()).Database("bolt_test").Collection("tasks"), nil)
	set := func(state string) bson.D {
		return bson.D{{Key: "$set", Value: bson.D{{Key: "state", Value: state}}}}
	}

	_, err = tasks.UpdateOne(ctx, bson.D{{Key: "_id", Value: 1}}, set("running"))
	require.NoError(t, err)
	_, err = tasks.UpdateOne(ctx, bson.D{{Key: "_id", Value: 1}}, set("running")) // changes nothing
	require.NoError(t, err)
	_, err = tasks.UpdateOne(ctx, bson.D{{Key: "_id", Value: 99}}, set("running")) // matches nothing
	require.NoError(t, err)
	_, err = tasks.UpdateMany(ctx, bson.D{{Key: "state", Value: "new"}}, set("queued"))
	require.NoError(t, err)
	_, err = tasks.ReplaceOne(ctx, bson.D{{Key: "state", Value: "old"}}, bson.D{{Key: "state", Value: "replaced"}})
	require.NoError(t, err)
	_, err = tasks.UpdateOne(ctx, bson.D{{Key: "_id", Value: 5}}, set("upserted"), options.UpdateOne().SetUpsert(true))
	require.NoError(t, err)
	err = tasks.FindOneAndUpdate(ctx, bson.D{{Key: "state", Value: "queued"}}, set("claimed")).Err()
	require.NoError(t, err)
	err = tasks.FindOneAndReplace(ctx, bson.D{{Key: "_id", Value: 5}}, bson.D{{Key: "state", Value: "swapped"}}).Err()
	require.NoError(t, err)
	err = tasks.FindOneAndDelete(ctx, bson.D{{Key: "_id", Value: 4}}).Err()
	require.NoError(t, err)
	_, err = tasks.DeleteOne(ctx, bson.D{{Key: "_id", Value: 1}})
	require.NoError(t, err)
	_, err = tasks.DeleteMany(ctx, bson.D{{Key: "state", Value: bson.D{{Key: "$in", Value: bson.A{"queued", "claimed"}}}}})
	require.NoError(t, err)

	want := []struct {
		operation string
		id        any
		state     any // state in fullDocument, nil when there is none
	}{
		{"update", int32(1), nil},
		{"update", int32(2), nil},
		{"update", int32(3), nil},
		{"replace", int32(4), "replaced"},
		{"insert", int32(5), "upserted"},
		{"update", int32(2), nil},
		{"replace", int32(5), "swapped"},
		{"delete", int32(4), nil},
		{"delete", int32(1), nil},
		{"delete", int32(2), nil},
		{"delete", int32(3), nil},
	}
	for i, expected := range want {
		event := nextEvent(t, ctx, stream)
		assert.Equal(t, expected.operation, event.OperationType, "event %d", i)
		assert.Equal(t, expected.id, event.DocumentKey["_id"], "event %d", i)
		if expected.state == nil {
			assert.Nil(t, event.FullDocument, "event %d", i)
		} else {
			assert.Equal(t, expected.state, event.FullDocument["state"], "event %d", i)
		}
	}
	requireNoEvent(t, ctx, stream)
}

func TestWatchUpdateLookup(t *testing.T) {
	t.Parallel()

	server := startStore(t)
	ctx := testContext(t, time.Minute)
	tasks := connect(t, server.URI()).Database("bolt_test").Collection("tasks")
	_, err := tasks.InsertOne(ctx, bson.D{{Key: "_id", Value: "t"}, {Key: "attempts", Value: 0}})
	require.NoError(t, err)

	stream := watch(t, ctx, tasks, nil, options.ChangeStream().SetFullDocument(options.UpdateLookup))
	_, err = tasks.UpdateOne(ctx, bson.D{{Key: "_id", Value: "t"}}, bson.D{{Key: "$inc", Value: bson.D{{Key: "attempts", Value: 1}}}})
	require.NoError(t, err)

	event := nextEvent(t, ctx, stream)
	assert.Equal(t, "update", event.OperationType)
	assert.EqualValues(t, 1, event.FullDocument["attempts"])
}

func TestWatchMatchOperationType(t *testing.T) {
	t.Parallel()

	server := startStore(t)
	ctx := testContext(t, time.Minute)
	tasks := connect(t, server.URI()).Database("bolt_test").Collection("tasks")

	inserts := watch(t, ctx, tasks, mongo.Pipeline{{{Key: "$match", Value: bson.D{{Key: "operationType", Value: "insert"}}}}})
	deletes := watch(t, ctx, tasks, mongo.Pipeline{{{Key: "$match", Value: bson.D{
		{Key: "operationType", Value: bson.D{{Key: "$in", Value: bson.A{"delete", "drop"}}}},
	}}}})
	notUpdates := watch(t, ctx, tasks, mongo.Pipeline{{{Key: "$match", Value: bson.D{
		{Key: "operationType", Value: bson.D{{Key: "$nin", Value: bson.A{"update", "replace"}}}},
	}}}})

	_, err := tasks.InsertOne(ctx, bson.D{{Key: "_id", Value: 1}})
	require.NoError(t, err)
	_, err = tasks.UpdateOne(ctx, bson.D{{Key: "_id", Value: 1}}, bson.D{{Key: "$set", Value: bson.D{{Key: "x", Value: 1}}}})
	require.NoError(t, err)
	_, err = tasks.DeleteOne(ctx, bson.D{{Key: "_id", Value: 1}})
	require.NoError(t, err)

	assert.Equal(t, "insert", nextEvent(t, ctx, inserts).OperationType)
	requireNoEvent(t, ctx, inserts)
	assert.Equal(t, "delete", nextEvent(t, ctx, deletes).OperationType)
	requireNoEvent(t, ctx, deletes)
	assert.Equal(t, "insert", nextEvent(t, ctx, notUpdates).OperationType)
	assert.Equal(t, "delete", nextEvent(t, ctx, notUpdates).OperationType)
	requireNoEvent(t, ctx, notUpdates)
}

func TestWatchRejectsUnsupportedRequests(t *testing.T) {
	t.Parallel()

	server := startStore(t)
	ctx := testContext(t, time.Minute)
	db := connect(t, server.URI()).Database("bolt_test")

	cases := []struct {
		name     string
		open     func() error
		contains string
	}{
		{"project stage", func() error {
			_, err := db.Collection("tasks").Watch(ctx, mongo.Pipeline{{{Key: "$project", Value: bson.D{{Key: "ns", Value: 0}}}}})
			return err
		}, "only $match on operationType"},
		{"match on another field", func() error {
			_, err := db.Collection("tasks").Watch(ctx, mongo.Pipeline{{{Key: "$match", Value: bson.D{{Key: "fullDocument.state", Value: "new"}}}}})
			return err
		}, `not on "fullDocument.state"`},
		{"regex on operationType", func() error {
			_, err := db.Collection("tasks").Watch(ctx, mongo.Pipeline{{{Key: "$match", Value: bson.D{
				{Key: "operationType", Value: bson.D{{Key: "$regex", Value: "^ins"}}},
			}}}})
			return err
		}, "not $regex"},
		{"whole database", func() error {
			_, err := db.Watch(ctx, mongo.Pipeline{})
			return err
		}, "on a collection only"},
		{"pre-images", func() error {
			_, err := db.Collection("tasks").Watch(ctx, mongo.Pipeline{}, options.ChangeStream().SetFullDocumentBeforeChange(options.Required))
			return err
		}, "keeps no pre-images"},
		{"malformed token", func() error {
			_, err := db.Collection("tasks").Watch(ctx, mongo.Pipeline{}, options.ChangeStream().SetResumeAfter(bson.D{{Key: "_data", Value: "xyz"}}))
			return err
		}, "invalid resume token"},
	}
	for _, tc := range cases {
		err := tc.open()
		require.Error(t, err, tc.name)
		assert.Contains(t, err.Error(), tc.contains, tc.name)
	}

	// The connection stays usable after the rejections.
	_, err := db.Collection("tasks").InsertOne(ctx, bson.D{{Key: "ok", Value: true}})
	require.NoError(t, err)
}

func TestWatchHistoryLost(t *testing.T) {
	t.Parallel()

	server := startStore(t, func(opts *Options) { opts.RetainedEvents = 5 })
	ctx := testContext(t, time.Minute)
	tasks := connect(t, server.URI()).Database("bolt_test").Collection("tasks")

	stream := watch(t, ctx, tasks, nil)
	_, err := tasks.InsertOne(ctx, bson.D{{Key: "_id", Value: 0}})
	require.NoError(t, err)
	nextEvent(t, ctx, stream)
	token := stream.ResumeToken()

	for i := 1; i <= 10; i++ {
		_, err := tasks.InsertOne(ctx, bson.D{{Key: "_id", Value: i}})
		require.NoError(t, err)
	}

	_, err = tasks.Watch(ctx, mongo.Pipeline{}, options.ChangeStream().SetResumeAfter(token))
	requireServerError(t, err, codeChangeStreamHistoryLost)

	// The open stream fell behind as well.
	assert.False(t, stream.Next(ctx))
	requireServerError(t, stream.Err(), codeChangeStreamHistoryLost)
}

func TestWatchTokenFromEarlierRun(t *testing.T) {
	t.Parallel()

	dataDir := t.TempDir()
	ctx := testContext(t, time.Minute)

	first := startStore(t, func(opts *Options) { opts.DataDir = dataDir })
	tasks := connect(t, first.URI()).Database("bolt_test").Collection("tasks")
	stream := watch(t, ctx, tasks, nil)
	_, err := tasks.InsertOne(ctx, bson.D{{Key: "_id", Value: 1}})
	require.NoError(t, err)
	nextEvent(t, ctx, stream)
	token := stream.ResumeToken()
	require.NoError(t, first.Close())

	second := startStore(t, func(opts *Options) { opts.DataDir = dataDir })
	tasks = connect(t, second.URI()).Database("bolt_test").Collection("tasks")
	count, err := tasks.CountDocuments(ctx, bson.D{})
	require.NoError(t, err)
	assert.Equal(t, int64(1), count, "the data must survive the restart")

	_, err = tasks.Watch(ctx, mongo.Pipeline{}, options.ChangeStream().SetResumeAfter(token))
	requireServerError(t, err, codeChangeStreamHistoryLost)
	assert.Contains(t, err.Error(), "earlier run")
}

func TestWatchWaitsForEvents(t *testing.T) {
	t.Parallel()

	server := startStore(t)
	ctx := testContext(t, time.Minute)
	tasks := connect(t, server.URI()).Database("bolt_test").Collection("tasks")

	// TryNext returns after the await time when nothing happens.
	stream := watch(t, ctx, tasks, nil, options.ChangeStream().SetMaxAwaitTime(200*time.Millisecond))
	started := time.Now()
	assert.False(t, stream.TryNext(ctx))
	require.NoError(t, stream.Err())
	assert.Less(t, time.Since(started), 5*time.Second)

	// Next, with a long await time, returns as soon as an event arrives.
	slow := watch(t, ctx, tasks, nil, options.ChangeStream().SetMaxAwaitTime(30*time.Second))
	received := make(chan eventRecord, 1)
	go func() {
		var event eventRecord
		if slow.Next(ctx) && slow.Decode(&event) == nil {
			received <- event
		}
		close(received)
	}()

	_, err := tasks.InsertOne(ctx, bson.D{{Key: "_id", Value: "wake"}})
	require.NoError(t, err)

	select {
	case event, ok := <-received:
		require.True(t, ok, "Next failed: %v", slow.Err())
		assert.Equal(t, "wake", event.DocumentKey["_id"])
	case <-time.After(10 * time.Second):
		t.Fatal("Next did not return within 10 s of the insert, although the await time is 30 s")
	}
}

func requireServerError(t *testing.T, err error, code int32) {
	t.Helper()
	require.Error(t, err)

	var serverErr mongo.ServerError
	require.True(t, errors.As(err, &serverErr), "want a server error, got %T: %v", err, err)
	assert.True(t, serverErr.HasErrorCode(int(code)), "want code %d, got %v", code, err)
}

func TestWatchBulkWriteStatements(t *testing.T) {
	t.Parallel()

	server := startStore(t)
	ctx := testContext(t, time.Minute)
	tasks := connect(t, server.URI()).Database("bolt_test").Collection("tasks")
	_, err := tasks.InsertMany(ctx, []any{
		bson.D{{Key: "_id", Value: "a"}, {Key: "state", Value: "new"}},
		bson.D{{Key: "_id", Value: "b"}, {Key: "state", Value: "new"}},
	})
	require.NoError(t, err)

	stream := watch(t, ctx, tasks, nil)

	// Both statements of each command have the same filter, so each one
	// changes a different document only if they run one after the other.
	claim := mongo.NewUpdateOneModel().
		SetFilter(bson.D{{Key: "state", Value: "new"}}).
		SetUpdate(bson.D{{Key: "$set", Value: bson.D{{Key: "state", Value: "done"}}}})
	result, err := tasks.BulkWrite(ctx, []mongo.WriteModel{claim, claim})
	require.NoError(t, err)
	require.Equal(t, int64(2), result.ModifiedCount)

	remove := mongo.NewDeleteOneModel().SetFilter(bson.D{{Key: "state", Value: "done"}})
	result, err = tasks.BulkWrite(ctx, []mongo.WriteModel{remove, remove})
	require.NoError(t, err)
	require.Equal(t, int64(2), result.DeletedCount)

	for _, want := range []struct{ operation, id string }{
		{"update", "a"}, {"update", "b"}, {"delete", "a"}, {"delete", "b"},
	} {
		event := nextEvent(t, ctx, stream)
		assert.Equal(t, want.operation, event.OperationType)
		assert.Equal(t, want.id, event.DocumentKey["_id"])
	}
	requireNoEvent(t, ctx, stream)
}

func TestWatchStartAtOperationTime(t *testing.T) {
	t.Parallel()

	server := startStore(t)
	ctx := testContext(t, time.Minute)
	tasks := connect(t, server.URI()).Database("bolt_test").Collection("tasks")

	stream := watch(t, ctx, tasks, nil)
	for _, id := range []string{"a", "b", "c"} {
		_, err := tasks.InsertOne(ctx, bson.D{{Key: "_id", Value: id}})
		require.NoError(t, err)
	}
	nextEvent(t, ctx, stream)
	second := nextEvent(t, ctx, stream)

	fromSecond := watch(t, ctx, tasks, nil, options.ChangeStream().SetStartAtOperationTime(&second.ClusterTime))
	assert.Equal(t, "b", nextEvent(t, ctx, fromSecond).DocumentKey["_id"])
	assert.Equal(t, "c", nextEvent(t, ctx, fromSecond).DocumentKey["_id"])
	requireNoEvent(t, ctx, fromSecond)

	// A time before the collection was first watched may have missed writes.
	_, err := tasks.Watch(ctx, mongo.Pipeline{}, options.ChangeStream().SetStartAtOperationTime(&bson.Timestamp{T: 1, I: 1}))
	requireServerError(t, err, codeChangeStreamHistoryLost)
}
