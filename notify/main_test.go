package notify

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/FerretDB/FerretDB/ferretdb"
	"github.com/rs/zerolog"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.uber.org/goleak"

	"github.com/bolt-runner/bolt/embeddedstore"
)

// Clients of the two stores that the tests share. Each test uses its own database.
var (
	// embeddedClient is connected to the embedded store that Bolt runs by default.
	embeddedClient *mongo.Client

	// ferretClient is connected to FerretDB without the embedded store's gate, whose
	// write commands are not serialised. It shows that leases do not depend on the gate.
	ferretClient *mongo.Client
)

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	ignoreBefore := goleak.IgnoreCurrent()
	code, err := runWithStores(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if code != 0 {
		return code
	}

	// The stores and clients are closed by now, so every goroutine that the tests
	// started must be gone.
	if err := goleak.Find(ignoreBefore); err != nil {
		fmt.Fprintln(os.Stderr, "leaked goroutines:", err)
		return 1
	}
	return 0
}

// runWithStores starts both stores, runs the tests and stops the stores.
func runWithStores(m *testing.M) (int, error) {
	dir, err := os.MkdirTemp("", "notify-test-")
	if err != nil {
		return 0, fmt.Errorf("creating store directory: %w", err)
	}
	defer os.RemoveAll(dir)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	embedded, err := embeddedstore.Start(ctx, embeddedstore.Options{
		Listen:  "127.0.0.1:0",
		DataDir: filepath.Join(dir, "embedded"),
		Logger:  zerolog.Nop(),
	})
	if err != nil {
		return 0, fmt.Errorf("starting embedded store: %w", err)
	}
	defer embedded.Close()

	stopFerret, ferretURI, err := startFerretDB(filepath.Join(dir, "ferretdb"))
	if err != nil {
		return 0, fmt.Errorf("starting FerretDB: %w", err)
	}
	defer stopFerret()

	embeddedClient, err = mongo.Connect(options.Client().ApplyURI(embedded.URI()))
	if err != nil {
		return 0, fmt.Errorf("connecting to embedded store: %w", err)
	}
	defer embeddedClient.Disconnect(context.Background())

	ferretClient, err = mongo.Connect(options.Client().ApplyURI(ferretURI))
	if err != nil {
		return 0, fmt.Errorf("connecting to FerretDB: %w", err)
	}
	defer ferretClient.Disconnect(context.Background())

	return m.Run(), nil
}

// startFerretDB runs FerretDB on SQLite in dir, listening on a free loopback port.
func startFerretDB(dir string) (stop func(), uri string, err error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, "", err
	}
	f, err := ferretdb.New(&ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: "127.0.0.1:0"},
		Handler:   "sqlite",
		SQLiteURL: "file:" + dir + "/",
		// FerretDB logs every failed command, duplicate key errors of leases included.
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		return nil, "", err
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = f.Run(ctx)
	}()
	stop = func() {
		cancel()
		<-done
	}
	return stop, f.MongoDBURI(), nil
}
