package embeddedstore

import (
	"slices"

	"go.mongodb.org/mongo-driver/v2/x/bsonx/bsoncore"
)

// writeResult adds up the replies of the batches that one client write
// command was split into, with statement indexes as the client numbered
// them.
type writeResult struct {
	command     string
	n           int64
	nModified   int64
	upserted    []bsoncore.Document
	writeErrors []bsoncore.Document
}

// batchOutcome is the effect of one batch as its reply reports it. Its
// statements are numbered by their position in the batch.
type batchOutcome struct {
	count       int64
	modified    int64
	upsertedIDs []bsoncore.Value
	failed      map[int]bool
	firstFailed int
	ordered     bool
}

// applied reports whether the statement at batch position k took effect:
// it did not fail, and no earlier statement of an ordered batch failed.
func (o batchOutcome) applied(k int) bool {
	if o.failed[k] {
		return false
	}
	return !o.ordered || o.firstFailed < 0 || k < o.firstFailed
}

// merge adds a batch's reply to the result. batch maps batch positions to
// the client's statement indexes.
func (r *writeResult) merge(reply bsoncore.Document, batch []int, ordered bool) batchOutcome {
	outcome := batchOutcome{failed: make(map[int]bool), firstFailed: -1, ordered: ordered}

	outcome.count, _ = reply.Lookup("n").AsInt64OK()
	outcome.modified, _ = reply.Lookup("nModified").AsInt64OK()
	r.n += outcome.count
	r.nModified += outcome.modified

	for _, entry := range arrayDocuments(reply.Lookup("upserted")) {
		position, index := remapIndex(entry, batch)
		outcome.upsertedIDs = append(outcome.upsertedIDs, entry.Lookup("_id"))
		r.upserted = append(r.upserted, withIndex(entry, position, index))
	}

	for _, entry := range arrayDocuments(reply.Lookup("writeErrors")) {
		position, index := remapIndex(entry, batch)
		outcome.failed[position] = true
		if outcome.firstFailed < 0 || position < outcome.firstFailed {
			outcome.firstFailed = position
		}
		r.writeErrors = append(r.writeErrors, withIndex(entry, position, index))
	}

	return outcome
}

// remapIndex returns the batch position an entry's index names and the
// client's statement index for it.
func remapIndex(entry bsoncore.Document, batch []int) (position, index int) {
	value, _ := entry.Lookup("index").AsInt64OK()
	position = int(value)
	if position < 0 || position >= len(batch) {
		return position, position
	}
	return position, batch[position]
}

func withIndex(entry bsoncore.Document, position, index int) bsoncore.Document {
	if position == index {
		return entry
	}
	return copyBody(entry, []string{"index"}, bsoncore.AppendInt32Element(nil, "index", int32(index)))
}

// document builds the reply MongoDB gives for the whole command.
func (r *writeResult) document() bsoncore.Document {
	doc := bsoncore.NewDocumentBuilder().AppendInt32("n", int32(r.n))
	if r.command == "update" {
		doc.AppendInt32("nModified", int32(r.nModified))
	}
	if len(r.upserted) > 0 {
		doc.AppendArray("upserted", documentArray(r.upserted))
	}
	if len(r.writeErrors) > 0 {
		slices.SortStableFunc(r.writeErrors, func(a, b bsoncore.Document) int {
			i, _ := a.Lookup("index").AsInt64OK()
			j, _ := b.Lookup("index").AsInt64OK()
			return int(i - j)
		})
		doc.AppendArray("writeErrors", documentArray(r.writeErrors))
	}
	return doc.AppendDouble("ok", 1).Build()
}

func arrayDocuments(value bsoncore.Value) []bsoncore.Document {
	array, ok := value.ArrayOK()
	if !ok {
		return nil
	}
	values, _ := array.Values()

	docs := make([]bsoncore.Document, 0, len(values))
	for _, v := range values {
		if doc, ok := v.DocumentOK(); ok {
			docs = append(docs, doc)
		}
	}
	return docs
}

func documentArray(docs []bsoncore.Document) bsoncore.Array {
	builder := bsoncore.NewArrayBuilder()
	for _, doc := range docs {
		builder.AppendDocument(doc)
	}
	return builder.Build()
}
