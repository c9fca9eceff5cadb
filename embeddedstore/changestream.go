package embeddedstore

import (
	"sync"
	"time"

	"go.mongodb.org/mongo-driver/v2/x/bsonx/bsoncore"
)

const (
	// firstChangeStreamCursorID starts the gate's cursor ids far above the
	// ids FerretDB v1.24.2 hands out (a counter that starts at a random
	// uint32), so a getMore can be routed by its cursor id alone.
	firstChangeStreamCursorID = int64(1) << 62

	// defaultAwaitTime is how long a getMore on a change stream waits for an
	// event when the request has no maxTimeMS, as on MongoDB.
	defaultAwaitTime = time.Second

	// defaultBatchEvents caps a batch when the client sets no batch size.
	defaultBatchEvents = 1000

	// cursorIdleTimeout matches MongoDB's default cursorTimeoutMillis.
	cursorIdleTimeout = 10 * time.Minute
)

// changeStreamCursor is an open change stream on one collection.
type changeStreamCursor struct {
	id            int64
	ns            namespace
	filter        operationFilter
	lookupUpdates bool

	// mu serialises getMores on the cursor and guards position, the
	// sequence number of the last event the stream has looked at.
	mu       sync.Mutex
	position uint64

	lastUsed time.Time // guarded by cursorRegistry.mu
}

// cursorRegistry holds the open change stream cursors of a server.
type cursorRegistry struct {
	mu      sync.Mutex
	nextID  int64
	cursors map[int64]*changeStreamCursor
}

func newCursorRegistry() *cursorRegistry {
	return &cursorRegistry{nextID: firstChangeStreamCursorID, cursors: make(map[int64]*changeStreamCursor)}
}

// owns reports whether a cursor id is in the gate's range, whether or not
// the cursor still exists.
func (r *cursorRegistry) owns(cursorID bsoncore.Value) bool {
	id, ok := cursorID.AsInt64OK()
	return ok && id >= firstChangeStreamCursorID
}

func (r *cursorRegistry) add(cursor *changeStreamCursor) {
	r.mu.Lock()
	defer r.mu.Unlock()

	r.removeIdle()
	cursor.id = r.nextID
	r.nextID++
	cursor.lastUsed = time.Now()
	r.cursors[cursor.id] = cursor
}

func (r *cursorRegistry) get(id int64) *changeStreamCursor {
	r.mu.Lock()
	defer r.mu.Unlock()

	r.removeIdle()
	cursor := r.cursors[id]
	if cursor != nil {
		cursor.lastUsed = time.Now()
	}
	return cursor
}

func (r *cursorRegistry) remove(id int64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()

	_, ok := r.cursors[id]
	delete(r.cursors, id)
	return ok
}

// removeIdle drops cursors that clients abandoned without killCursors, for
// example by disconnecting. The caller holds r.mu.
func (r *cursorRegistry) removeIdle() {
	cutoff := time.Now().Add(-cursorIdleTimeout)
	for id, cursor := range r.cursors {
		if cursor.lastUsed.Before(cutoff) {
			delete(r.cursors, id)
		}
	}
}

// isChangeStreamPipeline reports whether an aggregate starts with
// $changeStream.
func isChangeStreamPipeline(body bsoncore.Document) bool {
	stages, ok := body.Lookup("pipeline").ArrayOK()
	if !ok {
		return false
	}
	first, ok := stages.Index(0).DocumentOK()
	if !ok {
		return false
	}
	element, err := first.IndexErr(0)
	return err == nil && element.Key() == "$changeStream"
}

// openChangeStream serves an aggregate with a leading $changeStream from
// the event log, without involving FerretDB, which has no change streams.
func (c *gateConn) openChangeStream(request message, msg *opMsg) ([]byte, error) {
	collection, ok := msg.body.Lookup("aggregate").StringValueOK()
	if !ok {
		return c.replyError(request, newCommandError(codeCommandNotSupported,
			"the embedded store supports change streams on a collection only, not on a whole database or deployment")), nil
	}
	ns := namespace{db: msg.database(), collection: collection}

	stages, _ := msg.body.Lookup("pipeline").Array().Values()
	options, ok := stages[0].Document().Lookup("$changeStream").DocumentOK()
	if !ok {
		return c.replyError(request, newCommandError(codeFailedToParse, "the $changeStream stage must be a document")), nil
	}
	spec, cmdErr := parseChangeStreamOptions(options)
	if cmdErr != nil {
		return c.replyError(request, cmdErr), nil
	}
	filter, cmdErr := parseMatchStages(stages[1:])
	if cmdErr != nil {
		return c.replyError(request, cmdErr), nil
	}
	batchSize, cmdErr := readBatchSize(msg.body.Lookup("cursor", "batchSize"))
	if cmdErr != nil {
		return c.replyError(request, cmdErr), nil
	}

	if !c.server.events.isWatched(ns) {
		// Taking the write lock means no write to ns is half recorded.
		c.server.writeMu.Lock()
		c.server.events.watch(ns)
		c.server.writeMu.Unlock()
	}

	position, cmdErr := spec.startPosition(c.server.events, ns)
	if cmdErr != nil {
		return c.replyError(request, cmdErr), nil
	}

	cursor := &changeStreamCursor{ns: ns, filter: filter, lookupUpdates: spec.lookupUpdates}
	events, position, cmdErr := c.server.events.read(ns, position, filter, batchSize)
	if cmdErr != nil {
		return c.replyError(request, cmdErr), nil
	}
	cursor.position = position
	c.server.cursors.add(cursor)

	return c.replyWithEvents(request, cursor, "firstBatch", events)
}

// getMoreChangeStream returns the next events of a change stream. With no
// event to return it waits up to maxTimeMS (1 second by default) for one,
// which is what lets drivers' Next and TryNext block and poll.
func (c *gateConn) getMoreChangeStream(request message, msg *opMsg) ([]byte, error) {
	id, _ := msg.body.Lookup("getMore").AsInt64OK()
	cursor := c.server.cursors.get(id)
	if cursor == nil {
		return c.replyError(request, newCommandError(codeCursorNotFound,
			"change stream cursor %d not found: the embedded store drops a cursor after killCursors, "+
				"after %s without a getMore, and on restart", id, cursorIdleTimeout)), nil
	}

	batchSize, cmdErr := readBatchSize(msg.body.Lookup("batchSize"))
	if cmdErr != nil {
		return c.replyError(request, cmdErr), nil
	}
	awaitTime := defaultAwaitTime
	if maxTimeMS, ok := msg.body.Lookup("maxTimeMS").AsInt64OK(); ok && maxTimeMS > 0 {
		awaitTime = time.Duration(maxTimeMS) * time.Millisecond
	}

	cursor.mu.Lock()
	defer cursor.mu.Unlock()

	timer := time.NewTimer(awaitTime)
	defer timer.Stop()

	for {
		// Take the signal before reading, so that an event appended in
		// between wakes the wait below.
		changed := c.server.events.changedSignal()
		events, position, cmdErr := c.server.events.read(cursor.ns, cursor.position, cursor.filter, batchSize)
		if cmdErr != nil {
			c.server.cursors.remove(cursor.id)
			return c.replyError(request, cmdErr), nil
		}
		cursor.position = position
		if len(events) > 0 {
			return c.replyWithEvents(request, cursor, "nextBatch", events)
		}

		select {
		case <-changed:
		case <-timer.C:
			return c.replyWithEvents(request, cursor, "nextBatch", nil)
		case <-c.server.closing:
			return c.replyWithEvents(request, cursor, "nextBatch", nil)
		}
	}
}

func readBatchSize(value bsoncore.Value) (int, *commandError) {
	if value.Type == 0 {
		return defaultBatchEvents, nil
	}
	size, ok := value.AsInt64OK()
	if !ok || size < 0 {
		return 0, newCommandError(codeBadValue, "batchSize must be a non-negative number, not %s", value)
	}
	if size == 0 {
		return defaultBatchEvents, nil
	}
	return int(min(size, defaultBatchEvents)), nil
}

// replyWithEvents builds a cursor reply. The postBatchResumeToken is the
// stream's position, so a client that resumes from it skips the events the
// stream has already looked at, matching or not.
func (c *gateConn) replyWithEvents(request message, cursor *changeStreamCursor, batchKey string, events []changeEvent) ([]byte, error) {
	batch := bsoncore.NewArrayBuilder()
	for _, event := range events {
		doc, err := c.eventDocument(cursor, event)
		if err != nil {
			return nil, err
		}
		batch.AppendDocument(doc)
	}

	cursorDoc := bsoncore.NewDocumentBuilder().
		AppendArray(batchKey, batch.Build()).
		AppendDocument("postBatchResumeToken", c.server.events.tokenDocument(cursor.position)).
		AppendInt64("id", cursor.id).
		AppendString("ns", cursor.ns.String()).
		Build()

	body := bsoncore.NewDocumentBuilder().
		AppendDocument("cursor", cursorDoc).
		AppendDouble("ok", 1).
		Build()
	return c.reply(request, body), nil
}

// eventDocument builds the change event document MongoDB would return.
// With fullDocument: "updateLookup" an update event carries the document as
// it is now, or null if it is gone, as on MongoDB.
func (c *gateConn) eventDocument(cursor *changeStreamCursor, event changeEvent) (bsoncore.Document, error) {
	doc := bsoncore.NewDocumentBuilder().
		AppendDocument("_id", c.server.events.tokenDocument(event.seq)).
		AppendString("operationType", event.operation).
		AppendTimestamp("clusterTime", event.clusterTime.seconds, event.clusterTime.increment).
		AppendDateTime("wallTime", event.wallTime.UnixMilli()).
		AppendDocument("ns", bsoncore.NewDocumentBuilder().
			AppendString("db", event.ns.db).
			AppendString("coll", event.ns.collection).
			Build()).
		AppendDocument("documentKey", bsoncore.NewDocumentBuilder().AppendValue("_id", event.documentKey).Build())

	switch {
	case event.operation == "insert" || event.operation == "replace":
		appendDocumentOrNull(doc, "fullDocument", event.fullDocument)
	case event.operation == "update" && cursor.lookupUpdates:
		current, err := c.findByID(event.ns, event.documentKey)
		if err != nil {
			return nil, err
		}
		appendDocumentOrNull(doc, "fullDocument", current)
	}

	return doc.Build(), nil
}

func appendDocumentOrNull(builder *bsoncore.DocumentBuilder, key string, doc bsoncore.Document) {
	if doc == nil {
		builder.AppendNull(key)
		return
	}
	builder.AppendDocument(key, doc)
}

// killCursors closes the gate's change stream cursors and passes any other
// cursor ids on to FerretDB.
func (c *gateConn) killCursors(request message, msg *opMsg) ([]byte, error) {
	ids, _ := msg.body.Lookup("cursors").ArrayOK()
	values, _ := ids.Values()

	var killed, notFound []int64
	var upstreamIDs []bsoncore.Value
	for _, value := range values {
		if !c.server.cursors.owns(value) {
			upstreamIDs = append(upstreamIDs, value)
			continue
		}
		id := value.AsInt64()
		if c.server.cursors.remove(id) {
			killed = append(killed, id)
		} else {
			notFound = append(notFound, id)
		}
	}

	if len(killed)+len(notFound) == 0 {
		return c.forward(request, msg)
	}
	if len(upstreamIDs) == 0 {
		return c.reply(request, killCursorsReply(killed, notFound, nil)), nil
	}

	remaining := bsoncore.BuildArrayElement(nil, "cursors", upstreamIDs...)
	reply, err := c.runCommand(copyBody(msg.body, []string{"cursors"}, remaining))
	if err != nil {
		return nil, err
	}
	if !replyOK(reply) {
		return c.reply(request, reply), nil
	}
	return c.reply(request, killCursorsReply(killed, notFound, reply)), nil
}

// killCursorsReply lists the gate's cursors and, if upstream is not nil,
// the ones FerretDB reported on.
func killCursorsReply(killed, notFound []int64, upstream bsoncore.Document) bsoncore.Document {
	list := func(key string, ids []int64) bsoncore.Array {
		array := bsoncore.NewArrayBuilder()
		for _, id := range ids {
			array.AppendInt64(id)
		}
		if upstreamIDs, ok := upstream.Lookup(key).ArrayOK(); ok {
			values, _ := upstreamIDs.Values()
			for _, value := range values {
				array.AppendValue(value)
			}
		}
		return array.Build()
	}

	return bsoncore.NewDocumentBuilder().
		AppendArray("cursorsKilled", list("cursorsKilled", killed)).
		AppendArray("cursorsNotFound", list("cursorsNotFound", notFound)).
		AppendArray("cursorsAlive", list("cursorsAlive", nil)).
		AppendArray("cursorsUnknown", list("cursorsUnknown", nil)).
		AppendDouble("ok", 1).
		Build()
}
