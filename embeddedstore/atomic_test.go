package embeddedstore

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
)

func TestClaimsAreAtomic(t *testing.T) {
	t.Parallel()

	const (
		claimers  = 8
		taskCount = 500
	)

	server := startStore(t)
	ctx := testContext(t, 5*time.Minute)

	tasks := make([]any, taskCount)
	for i := range tasks {
		tasks[i] = bson.D{{Key: "_id", Value: i}, {Key: "name", Value: fmt.Sprintf("task-%d", i)}}
	}
	_, err := connect(t, server.URI()).Database("bolt_test").Collection("task_queue").InsertMany(ctx, tasks)
	require.NoError(t, err)

	// Each claimer has its own client, so the claims arrive on separate
	// connections as they would from separate processes.
	claims := make([][]int, claimers)
	errs := make([]error, claimers)
	var wg sync.WaitGroup
	for c := range claimers {
		collection := connect(t, server.URI()).Database("bolt_test").Collection("task_queue")
		wg.Go(func() {
			filter := bson.D{{Key: "dispatched", Value: bson.D{{Key: "$ne", Value: true}}}}
			update := bson.D{{Key: "$set", Value: bson.D{{Key: "dispatched", Value: true}, {Key: "by", Value: c}}}}
			for {
				var task struct {
					ID int `bson:"_id"`
				}
				err := collection.FindOneAndUpdate(ctx, filter, update).Decode(&task)
				if errors.Is(err, mongo.ErrNoDocuments) {
					return
				}
				if err != nil {
					errs[c] = err
					return
				}
				claims[c] = append(claims[c], task.ID)
			}
		})
	}
	wg.Wait()

	claimedBy := make(map[int]int)
	duplicates := 0
	for c, ids := range claims {
		require.NoError(t, errs[c], "claimer %d", c)
		for _, id := range ids {
			if _, ok := claimedBy[id]; ok {
				duplicates++
			}
			claimedBy[id] = c
		}
	}
	assert.Zero(t, duplicates, "tasks claimed more than once")
	assert.Len(t, claimedBy, taskCount, "every task must be claimed")

	// The stored "by" must name the claimer that got the task back.
	cursor, err := connect(t, server.URI()).Database("bolt_test").Collection("task_queue").Find(ctx, bson.D{})
	require.NoError(t, err)
	var stored []struct {
		ID         int  `bson:"_id"`
		By         int  `bson:"by"`
		Dispatched bool `bson:"dispatched"`
	}
	require.NoError(t, cursor.All(ctx, &stored))
	require.Len(t, stored, taskCount)
	for _, task := range stored {
		assert.True(t, task.Dispatched, "task %d", task.ID)
		assert.Equal(t, claimedBy[task.ID], task.By, "task %d", task.ID)
	}
}

func TestConcurrentSetsKeepAllFields(t *testing.T) {
	t.Parallel()

	const (
		writers   = 8
		documents = 20
	)

	server := startStore(t)
	ctx := testContext(t, 2*time.Minute)
	uri := server.URI()

	docs := make([]any, documents)
	for d := range docs {
		docs[d] = bson.D{{Key: "_id", Value: d}}
	}
	_, err := connect(t, uri).Database("bolt_test").Collection("tasks").InsertMany(ctx, docs)
	require.NoError(t, err)

	// All writers go through the same documents in the same order, so
	// their updates of each document overlap.
	start := make(chan struct{})
	errs := make([]error, writers)
	var wg sync.WaitGroup
	for w := range writers {
		collection := connect(t, uri).Database("bolt_test").Collection("tasks")
		require.NoError(t, collection.Database().Client().Ping(ctx, nil))
		wg.Go(func() {
			<-start
			field := fmt.Sprintf("field_%d", w)
			for d := range documents {
				_, err := collection.UpdateOne(ctx,
					bson.D{{Key: "_id", Value: d}},
					bson.D{{Key: "$set", Value: bson.D{{Key: field, Value: w}}}})
				if err != nil {
					errs[w] = err
					return
				}
			}
		})
	}
	close(start)
	wg.Wait()

	for w, err := range errs {
		require.NoError(t, err, "writer %d", w)
	}

	cursor, err := connect(t, uri).Database("bolt_test").Collection("tasks").Find(ctx, bson.D{})
	require.NoError(t, err)
	var stored []bson.M
	require.NoError(t, cursor.All(ctx, &stored))
	require.Len(t, stored, documents)
	for _, doc := range stored {
		for w := range writers {
			assert.Contains(t, doc, fmt.Sprintf("field_%d", w), "document %v", doc["_id"])
		}
	}
}
