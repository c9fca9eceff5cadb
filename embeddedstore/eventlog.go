package embeddedstore

import (
	"fmt"
	"sort"
	"strconv"
	"sync"
	"time"

	"go.mongodb.org/mongo-driver/v2/x/bsonx/bsoncore"
)

// DefaultRetainedEvents is the number of change events the embedded store
// keeps in memory for change streams to resume from when
// Options.RetainedEvents is 0.
const DefaultRetainedEvents = 10_000

type namespace struct {
	db         string
	collection string
}

func (ns namespace) String() string { return ns.db + "." + ns.collection }

// clusterTime orders events like MongoDB's clusterTime: seconds, then an
// increment. The increment is the event's sequence number, so comparing two
// cluster times compares their sequence numbers.
type clusterTime struct {
	seconds   uint32
	increment uint32
}

func (t clusterTime) before(other clusterTime) bool {
	if t.seconds != other.seconds {
		return t.seconds < other.seconds
	}
	return t.increment < other.increment
}

// changeEvent is one write as change streams report it.
type changeEvent struct {
	seq         uint64
	clusterTime clusterTime
	wallTime    time.Time
	operation   string // insert, update, replace or delete
	ns          namespace
	documentKey bsoncore.Value // the _id of the written document

	// fullDocument is the inserted document or the replacement, and nil
	// for updates and deletes.
	fullDocument bsoncore.Document
}

// eventLog keeps the most recent change events of the watched collections,
// in the order the gate forwarded the writes.
//
// A collection is recorded from the first change stream opened on it until
// the server stops. Streams opened later see everything written after they
// started, and a resume token stays usable while the events after it are
// retained. Nothing survives a restart, and the epoch in each token marks
// tokens from an earlier run.
type eventLog struct {
	epoch uint64
	limit int

	mu       sync.Mutex
	events   []changeEvent // events[i].seq == events[0].seq + i
	lastSeq  uint64
	lastTime clusterTime
	watched  map[namespace]clusterTime // when recording began
	changed  chan struct{}             // closed and replaced by every append
}

func newEventLog(epoch uint64, limit int) *eventLog {
	return &eventLog{
		epoch:   epoch,
		limit:   limit,
		watched: make(map[namespace]clusterTime),
		changed: make(chan struct{}),
	}
}

func (l *eventLog) isWatched(ns namespace) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, ok := l.watched[ns]
	return ok
}

// watch starts recording writes to ns. The caller holds the write lock, so
// no write to ns is half done when recording begins.
func (l *eventLog) watch(ns namespace) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.watched[ns]; ok {
		return
	}

	started := clusterTime{seconds: uint32(time.Now().Unix()), increment: uint32(l.lastSeq)}
	if started.before(l.lastTime) {
		started = l.lastTime
	}
	l.watched[ns] = started
	l.lastTime = started
}

// append numbers the events, stores them and wakes waiting change streams.
func (l *eventLog) append(events ...changeEvent) {
	if len(events) == 0 {
		return
	}

	l.mu.Lock()
	defer l.mu.Unlock()

	now := time.Now()
	seconds := uint32(now.Unix())
	if seconds < l.lastTime.seconds {
		// The wall clock went back; cluster times must not.
		seconds = l.lastTime.seconds
	}

	for _, event := range events {
		l.lastSeq++
		event.seq = l.lastSeq
		event.wallTime = now
		event.clusterTime = clusterTime{seconds: seconds, increment: uint32(l.lastSeq)}
		l.lastTime = event.clusterTime
		l.events = append(l.events, event)
	}

	if excess := len(l.events) - l.limit; excess > 0 {
		clear(l.events[:excess])
		l.events = l.events[excess:]
	}

	close(l.changed)
	l.changed = make(chan struct{})
}

// changedSignal returns a channel that is closed by the next append.
func (l *eventLog) changedSignal() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.changed
}

// firstRetainedSeq returns the sequence number of the oldest event still
// kept. Every event after it is kept too. The caller holds l.mu.
func (l *eventLog) firstRetainedSeq() uint64 {
	if len(l.events) == 0 {
		return l.lastSeq + 1
	}
	return l.events[0].seq
}

// currentPosition returns the sequence number of the newest event, which is
// where a stream without a resume option starts.
func (l *eventLog) currentPosition() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lastSeq
}

// read returns up to maxEvents events after position for ns that pass
// filter, and the position of the last event it looked at.
func (l *eventLog) read(ns namespace, position uint64, filter operationFilter, maxEvents int) ([]changeEvent, uint64, *commandError) {
	l.mu.Lock()
	defer l.mu.Unlock()

	first := l.firstRetainedSeq()
	if position+1 < first {
		return nil, position, newCommandError(codeChangeStreamHistoryLost,
			"change events after this stream's position were dropped: the embedded store keeps only the last %d events in memory; "+
				"reopen the change stream without a resume token and reload the collection", l.limit)
	}

	var found []changeEvent
	for i := int(position + 1 - first); i < len(l.events) && len(found) < maxEvents; i++ {
		event := l.events[i]
		position = event.seq
		if event.ns == ns && filter.matches(event.operation) {
			found = append(found, event)
		}
	}

	return found, position, nil
}

// tokenDocument builds the resume token for a position: MongoDB's token
// shape, a document with a hex string in _data.
func (l *eventLog) tokenDocument(seq uint64) bsoncore.Document {
	return bsoncore.NewDocumentBuilder().
		AppendString("_data", fmt.Sprintf("%016X%016X", l.epoch, seq)).
		Build()
}

// positionAfterToken returns the position a stream resumed with token
// continues from.
func (l *eventLog) positionAfterToken(token bsoncore.Value) (uint64, *commandError) {
	epoch, seq, err := parseResumeToken(token)
	if err != nil {
		return 0, err
	}

	l.mu.Lock()
	defer l.mu.Unlock()

	if epoch != l.epoch {
		return 0, newCommandError(codeChangeStreamHistoryLost,
			"resume token %s comes from an earlier run of the embedded store, whose change events were kept in memory and are lost; "+
				"reopen the change stream without a resume token and reload the collection", token)
	}
	if seq > l.lastSeq {
		return 0, newCommandError(codeInvalidResumeToken,
			"resume token %s refers to event %d, but the embedded store has recorded only %d events", token, seq, l.lastSeq)
	}
	if seq+1 < l.firstRetainedSeq() {
		return 0, newCommandError(codeChangeStreamHistoryLost,
			"resume token %s is too old: the embedded store keeps only the last %d change events in memory; "+
				"reopen the change stream without a resume token and reload the collection", token, l.limit)
	}

	return seq, nil
}

// positionAtTime returns the position just before the first event at or
// after t, for startAtOperationTime.
func (l *eventLog) positionAtTime(ns namespace, t clusterTime) (uint64, *commandError) {
	l.mu.Lock()
	defer l.mu.Unlock()

	if started, ok := l.watched[ns]; ok && t.before(started) {
		return 0, newCommandError(codeChangeStreamHistoryLost,
			"startAtOperationTime is before the embedded store began recording changes to %s", ns)
	}
	if len(l.events) > 0 && l.events[0].seq > 1 && t.before(l.events[0].clusterTime) {
		return 0, newCommandError(codeChangeStreamHistoryLost,
			"startAtOperationTime is older than the %d change events the embedded store keeps in memory", l.limit)
	}

	i := sort.Search(len(l.events), func(i int) bool { return !l.events[i].clusterTime.before(t) })
	if i == len(l.events) {
		return l.lastSeq, nil
	}
	return l.events[i].seq - 1, nil
}

func parseResumeToken(token bsoncore.Value) (epoch, seq uint64, err *commandError) {
	invalid := newCommandError(codeInvalidResumeToken,
		"invalid resume token %s: use the _id of a change event or a postBatchResumeToken from this server", token)

	doc, ok := token.DocumentOK()
	if !ok {
		return 0, 0, invalid
	}
	data, ok := doc.Lookup("_data").StringValueOK()
	if !ok || len(data) != 32 {
		return 0, 0, invalid
	}

	epoch, epochErr := strconv.ParseUint(data[:16], 16, 64)
	seq, seqErr := strconv.ParseUint(data[16:], 16, 64)
	if epochErr != nil || seqErr != nil {
		return 0, 0, invalid
	}
	return epoch, seq, nil
}
