package embeddedstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/mongo/writeconcern"
)

func TestStartRejectsRemoteAddress(t *testing.T) {
	t.Parallel()

	for _, address := range []string{"0.0.0.0:0", ":0", "192.0.2.1:27018", "[::]:0"} {
		_, err := Start(context.Background(), Options{Listen: address, DataDir: t.TempDir(), Logger: zerolog.Nop()})
		require.Error(t, err, address)
		assert.Contains(t, err.Error(), "not a loopback address", address)
		assert.Contains(t, err.Error(), "Options.AllowRemote", address)
	}
}

func TestCheckListenAddress(t *testing.T) {
	t.Parallel()

	for _, address := range []string{"127.0.0.1:0", "127.0.0.5:27018", "[::1]:27018", "localhost:0"} {
		assert.NoError(t, checkListenAddress(address, false), address)
	}
	assert.NoError(t, checkListenAddress("0.0.0.0:27018", true))
	assert.Error(t, checkListenAddress("0.0.0.0:27018", false))

	err := checkListenAddress("127.0.0.1", false)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "use host:port")
}

func TestStartRejectsMissingDataDir(t *testing.T) {
	t.Parallel()

	_, err := Start(context.Background(), Options{Logger: zerolog.Nop()})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "DataDir is empty")
}

func TestStartCreatesDataDir(t *testing.T) {
	t.Parallel()

	dataDir := filepath.Join(t.TempDir(), "nested", "store")
	server := startStore(t, func(opts *Options) { opts.DataDir = dataDir })

	assert.True(t, strings.HasPrefix(server.URI(), "mongodb://127.0.0.1:"), server.URI())
	assert.Equal(t, server.URI(), "mongodb://"+server.Addr()+"/")

	ctx := testContext(t, time.Minute)
	_, err := connect(t, server.URI()).Database("bolt_test").Collection("tasks").InsertOne(ctx, bson.D{{Key: "name", Value: "a"}})
	require.NoError(t, err)

	entries, err := os.ReadDir(dataDir)
	require.NoError(t, err)
	assert.NotEmpty(t, entries, "FerretDB should have written SQLite files to the data folder")
}

func TestCRUDThroughGate(t *testing.T) {
	t.Parallel()

	server := startStore(t)
	ctx := testContext(t, time.Minute)
	tasks := connect(t, server.URI()).Database("bolt_test").Collection("tasks")

	docs := make([]any, 250)
	for i := range docs {
		docs[i] = bson.D{{Key: "_id", Value: i}, {Key: "name", Value: "task"}, {Key: "when", Value: time.Now()}}
	}
	inserted, err := tasks.InsertMany(ctx, docs)
	require.NoError(t, err)
	assert.Len(t, inserted.InsertedIDs, 250)

	// A small batch size makes the driver use getMore and killCursors on
	// FerretDB's own cursors, which the gate must pass through.
	cursor, err := tasks.Find(ctx, bson.D{}, options.Find().SetBatchSize(10).SetSort(bson.D{{Key: "_id", Value: 1}}))
	require.NoError(t, err)
	var all []bson.M
	require.NoError(t, cursor.All(ctx, &all))
	assert.Len(t, all, 250)

	cursor, err = tasks.Find(ctx, bson.D{}, options.Find().SetBatchSize(5))
	require.NoError(t, err)
	require.True(t, cursor.Next(ctx))
	require.NoError(t, cursor.Close(ctx))

	updated, err := tasks.UpdateMany(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$lt", Value: 10}}}}, bson.D{{Key: "$set", Value: bson.D{{Key: "done", Value: true}}}})
	require.NoError(t, err)
	assert.Equal(t, int64(10), updated.ModifiedCount)

	deleted, err := tasks.DeleteMany(ctx, bson.D{{Key: "done", Value: true}})
	require.NoError(t, err)
	assert.Equal(t, int64(10), deleted.DeletedCount)

	count, err := tasks.CountDocuments(ctx, bson.D{})
	require.NoError(t, err)
	assert.Equal(t, int64(240), count)

	_, err = tasks.InsertOne(ctx, bson.D{{Key: "_id", Value: 20}})
	require.Error(t, err)
	assert.True(t, mongo.IsDuplicateKeyError(err), "want a duplicate key error, got %v", err)
}

func TestUpstreamOverTCP(t *testing.T) {
	t.Parallel()

	server := startStore(t, func(opts *Options) { opts.upstreamTCP = true })
	require.Equal(t, "tcp", server.upstreamNetwork)
	ctx := testContext(t, time.Minute)
	tasks := connect(t, server.URI()).Database("bolt_test").Collection("tasks")

	stream := watch(t, ctx, tasks, nil)
	_, err := tasks.InsertOne(ctx, bson.D{{Key: "_id", Value: "over tcp"}})
	require.NoError(t, err)
	assert.Equal(t, "over tcp", nextEvent(t, ctx, stream).DocumentKey["_id"])

	count, err := tasks.CountDocuments(ctx, bson.D{})
	require.NoError(t, err)
	assert.Equal(t, int64(1), count)
}

func TestUnacknowledgedWriteIsApplied(t *testing.T) {
	t.Parallel()

	server := startStore(t)
	ctx := testContext(t, time.Minute)
	client := connect(t, server.URI())
	unacknowledged := client.Database("bolt_test").Collection("tasks", options.Collection().SetWriteConcern(writeconcern.Unacknowledged()))
	tasks := client.Database("bolt_test").Collection("tasks")

	result, err := unacknowledged.InsertOne(ctx, bson.D{{Key: "_id", Value: "w0"}})
	require.NoError(t, err)
	require.False(t, result.Acknowledged)

	// The next command on the connection must get its own reply, not the
	// one the gate requested for the unacknowledged insert.
	require.Eventually(t, func() bool {
		count, err := tasks.CountDocuments(ctx, bson.D{{Key: "_id", Value: "w0"}})
		return err == nil && count == 1
	}, 10*time.Second, 10*time.Millisecond)
}

func TestCloseDisconnectsClients(t *testing.T) {
	t.Parallel()

	server, err := Start(context.Background(), Options{DataDir: t.TempDir(), Logger: zerolog.Nop()})
	require.NoError(t, err)

	ctx := testContext(t, time.Minute)
	client := connect(t, server.URI())
	tasks := client.Database("bolt_test").Collection("tasks")
	_, err = tasks.InsertOne(ctx, bson.D{{Key: "name", Value: "before close"}})
	require.NoError(t, err)

	require.NoError(t, server.Close())
	require.NoError(t, server.Close(), "a second Close must be harmless")

	shortCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err = tasks.InsertOne(shortCtx, bson.D{{Key: "name", Value: "after close"}})
	assert.Error(t, err)
}

func TestFerretDBWarningsAreQuiet(t *testing.T) {
	t.Parallel()

	// FerretDB logs each failed command's reply at WARN; the reply to an
	// unknown command names the command.
	runUnknownCommand := func(t *testing.T, level zerolog.Level) string {
		var output lockedBuffer
		server := startStore(t, func(opts *Options) {
			opts.Logger = zerolog.New(&output).Level(level)
		})
		ctx := testContext(t, time.Minute)

		err := connect(t, server.URI()).Database("bolt_test").RunCommand(ctx, bson.D{{Key: "boltUnknownCommand", Value: 1}}).Err()
		require.Error(t, err)
		return output.String()
	}

	t.Run("info", func(t *testing.T) {
		logged := runUnknownCommand(t, zerolog.InfoLevel)
		assert.Contains(t, logged, "embedded store: listening", "the logger must receive the store's own lines")
		assert.NotContains(t, logged, "boltUnknownCommand")
	})

	t.Run("debug", func(t *testing.T) {
		logged := runUnknownCommand(t, zerolog.DebugLevel)
		assert.Contains(t, logged, `"level":"debug"`)
		assert.Contains(t, logged, "boltUnknownCommand", "FerretDB's warnings must reach the debug level")
	})
}

// lockedBuffer is a bytes.Buffer that the store's goroutines can share.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestMalformedMessageClosesOneConnection(t *testing.T) {
	t.Parallel()

	server := startStore(t)
	ctx := testContext(t, time.Minute)

	for name, payload := range map[string][]byte{
		"length too small": {5, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0xdd, 7, 0, 0},
		"unknown section":  encodeTestMessage(0, 9),
		"truncated body":   encodeTestMessage(0, sectionBody, 0xff, 0, 0, 0),
	} {
		conn, err := net.Dial("tcp", server.Addr())
		require.NoError(t, err, name)
		_, err = conn.Write(payload)
		require.NoError(t, err, name)

		require.NoError(t, conn.SetReadDeadline(time.Now().Add(10*time.Second)))
		_, err = conn.Read(make([]byte, 1))
		assert.ErrorIs(t, err, io.EOF, "%s: the gate must close the connection", name)
		conn.Close()
	}

	_, err := connect(t, server.URI()).Database("bolt_test").Collection("tasks").InsertOne(ctx, bson.D{{Key: "after", Value: "garbage"}})
	require.NoError(t, err, "other clients must be unaffected")
}

// encodeTestMessage builds an OP_MSG with the given flags and raw sections.
func encodeTestMessage(flags uint32, sections ...byte) []byte {
	raw := binary.LittleEndian.AppendUint32(nil, uint32(headerLength+4+len(sections)))
	raw = binary.LittleEndian.AppendUint32(raw, 1)
	raw = binary.LittleEndian.AppendUint32(raw, 0)
	raw = binary.LittleEndian.AppendUint32(raw, opCodeMsg)
	raw = binary.LittleEndian.AppendUint32(raw, flags)
	return append(raw, sections...)
}
