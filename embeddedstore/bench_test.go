package embeddedstore

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
)

// benchmarkTargets runs a benchmark against the gate and against FerretDB
// directly, both on a loopback TCP port as a standalone FerretDB would
// listen and on the Unix socket the gate uses.
func benchmarkTargets(b *testing.B, run func(b *testing.B, collection *mongo.Collection)) {
	for _, target := range []struct {
		name        string
		upstreamTCP bool
		uri         func(*Server) string
	}{
		{"direct_tcp", true, directURI},
		{"direct_unix", false, directURI},
		{"gate", false, (*Server).URI},
	} {
		b.Run(target.name, func(b *testing.B) {
			server := startStore(b, func(opts *Options) { opts.upstreamTCP = target.upstreamTCP })
			collection := connect(b, target.uri(server)).Database("bolt_bench").Collection("task_queue")
			run(b, collection)
		})
	}
}

func BenchmarkInsert(b *testing.B) {
	benchmarkTargets(b, func(b *testing.B, collection *mongo.Collection) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()

		task := bson.D{
			{Key: "name", Value: "send_report"},
			{Key: "args", Value: bson.D{{Key: "customer", Value: 42}, {Key: "format", Value: "pdf"}}},
			{Key: "created_at", Value: time.Now()},
		}
		for b.Loop() {
			_, err := collection.InsertOne(ctx, task)
			require.NoError(b, err)
		}
	})
}

func BenchmarkClaimByID(b *testing.B) {
	const taskCount = 1000

	benchmarkTargets(b, func(b *testing.B, collection *mongo.Collection) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()

		tasks := make([]any, taskCount)
		for i := range tasks {
			tasks[i] = bson.D{{Key: "_id", Value: i}, {Key: "name", Value: "send_report"}}
		}
		_, err := collection.InsertMany(ctx, tasks)
		require.NoError(b, err)

		i := 0
		for b.Loop() {
			filter := bson.D{{Key: "_id", Value: i % taskCount}}
			update := bson.D{{Key: "$set", Value: bson.D{{Key: "claimed_by", Value: i}}}}
			require.NoError(b, collection.FindOneAndUpdate(ctx, filter, update).Err())
			i++
		}
	})
}
