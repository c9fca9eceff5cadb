package embeddedstore

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// startStore starts an embedded store in a fresh data folder and closes it
// when the test ends.
func startStore(t testing.TB, configure ...func(*Options)) *Server {
	t.Helper()

	opts := Options{
		Listen:  "127.0.0.1:0",
		DataDir: t.TempDir(),
		Logger:  zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel),
	}
	for _, f := range configure {
		f(&opts)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	server, err := Start(ctx, opts)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, server.Close()) })
	return server
}

// connect returns a Go driver client with default options for uri.
func connect(t testing.TB, uri string) *mongo.Client {
	t.Helper()

	client, err := mongo.Connect(options.Client().ApplyURI(uri))
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = client.Disconnect(ctx)
	})
	return client
}

// testContext returns a context that ends with the test or after limit.
func testContext(t testing.TB, limit time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	t.Cleanup(cancel)
	return ctx
}

// inCI reports whether the tests run in CI, where a missing dependency
// must fail a test rather than skip it.
func inCI() bool {
	return os.Getenv("CI") == "true"
}
