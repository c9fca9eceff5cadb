package embeddedstore

import (
	"strings"

	"go.mongodb.org/mongo-driver/v2/x/bsonx/bsoncore"
)

// lookupBatchSize is the batch size of the gate's own _id lookups. Each _id
// takes a few dozen bytes, so a batch stays far below the 16 MiB reply limit.
const lookupBatchSize = 10_000

// findIDs returns the _ids of the documents that match filter, at most
// limit of them when limit is positive. A filter FerretDB rejects yields no
// _ids: the write that follows fails on the same filter.
func (c *gateConn) findIDs(ns namespace, filter bsoncore.Document, limit int64) ([]bsoncore.Value, error) {
	if id, ok := idEquality(filter); ok {
		return []bsoncore.Value{id}, nil
	}
	if filter == nil {
		filter = bsoncore.NewDocumentBuilder().Build()
	}

	find := bsoncore.NewDocumentBuilder().
		AppendString("find", ns.collection).
		AppendDocument("filter", filter).
		AppendDocument("projection", bsoncore.NewDocumentBuilder().AppendInt32("_id", 1).Build()).
		AppendInt32("batchSize", lookupBatchSize)
	if limit > 0 {
		find.AppendInt64("limit", limit)
	}
	reply, err := c.runCommand(find.AppendString("$db", ns.db).Build())
	if err != nil {
		return nil, err
	}

	var ids []bsoncore.Value
	batchKey := "firstBatch"
	for {
		if !replyOK(reply) {
			c.log.Debug().Err(&upstreamError{reply: reply}).Str("collection", ns.String()).
				Msg("embedded store: looking up affected documents failed")
			return ids, nil
		}

		cursor, _ := reply.Lookup("cursor").DocumentOK()
		for _, doc := range arrayDocuments(cursor.Lookup(batchKey)) {
			ids = append(ids, doc.Lookup("_id"))
		}

		cursorID, _ := cursor.Lookup("id").AsInt64OK()
		if cursorID == 0 {
			return ids, nil
		}

		getMore := bsoncore.NewDocumentBuilder().
			AppendInt64("getMore", cursorID).
			AppendString("collection", ns.collection).
			AppendInt32("batchSize", lookupBatchSize).
			AppendString("$db", ns.db).
			Build()
		if reply, err = c.runCommand(getMore); err != nil {
			return nil, err
		}
		batchKey = "nextBatch"
	}
}

// findByID returns the document with the given _id, or nil if there is
// none. FerretDB pushes an _id equality filter down to SQLite.
func (c *gateConn) findByID(ns namespace, id bsoncore.Value) (bsoncore.Document, error) {
	find := bsoncore.NewDocumentBuilder().
		AppendString("find", ns.collection).
		AppendDocument("filter", bsoncore.NewDocumentBuilder().AppendValue("_id", id).Build()).
		AppendInt64("limit", 1).
		AppendBoolean("singleBatch", true).
		AppendString("$db", ns.db).
		Build()

	reply, err := c.runCommand(find)
	if err != nil {
		return nil, err
	}
	if !replyOK(reply) {
		c.log.Debug().Err(&upstreamError{reply: reply}).Str("collection", ns.String()).
			Msg("embedded store: looking up a document by _id failed")
		return nil, nil
	}

	cursor, _ := reply.Lookup("cursor").DocumentOK()
	docs := arrayDocuments(cursor.Lookup("firstBatch"))
	if len(docs) == 0 {
		return nil, nil
	}
	return docs[0], nil
}

// idEquality returns the _id of a filter of the form {_id: value}, where
// value is a plain value rather than a query operator or a regex.
func idEquality(filter bsoncore.Document) (bsoncore.Value, bool) {
	elements, err := filter.Elements()
	if err != nil || len(elements) != 1 || elements[0].Key() != "_id" {
		return bsoncore.Value{}, false
	}

	value := elements[0].Value()
	switch value.Type {
	case bsoncore.TypeArray, bsoncore.TypeRegex:
		return bsoncore.Value{}, false
	case bsoncore.TypeEmbeddedDocument:
		first, err := value.Document().IndexErr(0)
		if err == nil && strings.HasPrefix(first.Key(), "$") {
			return bsoncore.Value{}, false
		}
	}
	return value, true
}
