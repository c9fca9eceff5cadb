package embeddedstore

import (
	"slices"
	"strings"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/x/bsonx/bsoncore"
)

// statementFields names the array of statements in each write command.
var statementFields = map[string]string{
	"insert": "documents",
	"update": "updates",
	"delete": "deletes",
}

// statementCommand is an insert, update or delete command and its
// statements, which came in the body or in a kind-1 document sequence.
type statementCommand struct {
	name       string
	ns         namespace
	field      string
	statements []bsoncore.Document
	ordered    bool
}

func parseStatementCommand(msg *opMsg, name string) (*statementCommand, *commandError) {
	collection, ok := msg.body.Lookup(name).StringValueOK()
	if !ok {
		return nil, newCommandError(codeTypeMismatch, "%s: the collection name must be a string", name)
	}

	command := &statementCommand{
		name:    name,
		ns:      namespace{db: msg.database(), collection: collection},
		field:   statementFields[name],
		ordered: true,
	}
	if ordered, ok := msg.body.Lookup("ordered").BooleanOK(); ok {
		command.ordered = ordered
	}

	for _, sequence := range msg.sequences {
		if sequence.identifier == command.field {
			command.statements = append(command.statements, sequence.documents...)
		}
	}
	if array, ok := msg.body.Lookup(command.field).ArrayOK(); ok {
		values, _ := array.Values()
		for _, value := range values {
			doc, ok := value.DocumentOK()
			if !ok {
				return nil, newCommandError(codeTypeMismatch, "%s: every element of %s must be a document", name, command.field)
			}
			command.statements = append(command.statements, doc)
		}
	}

	return command, nil
}

// runStatementCommand runs insert, update and delete. Under the write lock
// it rejects statements with values FerretDB cannot keep as write errors,
// sends the rest, and records change events when the collection is watched.
func (c *gateConn) runStatementCommand(request message, msg *opMsg, name string) ([]byte, error) {
	command, cmdErr := parseStatementCommand(msg, name)
	if cmdErr != nil {
		return c.replyError(request, cmdErr), nil
	}
	if problem := walkValues(msg.body, "", rejectUndecodable, command.field); problem != nil {
		return c.replyError(request, newCommandError(codeBadValue, "%s", problem.Error())), nil
	}

	rejected := make(map[int]*unsupportedValueError)
	for i, statement := range command.statements {
		if problem := checkStatement(name, statement); problem != nil {
			rejected[i] = problem
		}
	}

	c.server.writeMu.Lock()
	defer c.server.writeMu.Unlock()
	if name == "insert" {
		// Deferred after the unlock, so it runs first, still under the lock.
		defer c.server.ids.ensure(command.ns)
	}

	watched := c.server.events.isWatched(command.ns)
	if len(rejected) == 0 && !watched {
		if msg.moreToCome() {
			_, err := c.roundTrip(withoutMoreToCome(request))
			return nil, err
		}
		return c.roundTrip(request.raw)
	}

	return c.runStatements(request, msg, command, rejected, watched)
}

// runStatements sends the acceptable statements in batches and merges the
// replies into the one MongoDB would return for the whole command.
func (c *gateConn) runStatements(request message, msg *opMsg, command *statementCommand, rejected map[int]*unsupportedValueError, watched bool) ([]byte, error) {
	var sendable []int
	firstRejected := -1
	for i := range command.statements {
		if rejected[i] == nil {
			sendable = append(sendable, i)
			continue
		}
		if command.ordered {
			firstRejected = i
			break
		}
	}

	// Each update or delete of a watched collection goes alone, so the _ids
	// looked up for it are exactly those it changes.
	batches := [][]int{sendable}
	if watched && command.name != "insert" {
		batches = make([][]int, 0, len(sendable))
		for _, i := range sendable {
			batches = append(batches, []int{i})
		}
	}

	result := &writeResult{command: command.name}
	for _, batch := range batches {
		if len(batch) == 0 {
			continue
		}

		failed, reply, err := c.runBatch(request, msg, command, batch, watched, result)
		if err != nil || reply != nil {
			return reply, err
		}
		if failed && command.ordered {
			break
		}
	}

	switch {
	case command.ordered && firstRejected >= 0 && len(result.writeErrors) == 0:
		result.writeErrors = append(result.writeErrors, writeErrorDocument(firstRejected, rejected[firstRejected]))
	case !command.ordered:
		for i := range command.statements {
			if rejected[i] != nil {
				result.writeErrors = append(result.writeErrors, writeErrorDocument(i, rejected[i]))
			}
		}
	}

	return c.reply(request, result.document()), nil
}

// runBatch sends the statements at the given indexes as one command. A
// non-nil reply means FerretDB rejected the whole command, and it goes to
// the client as it is.
func (c *gateConn) runBatch(request message, msg *opMsg, command *statementCommand, batch []int, watched bool, result *writeResult) (failed bool, reply []byte, err error) {
	statements := make([]bsoncore.Document, len(batch))
	for k, i := range batch {
		statements[k] = command.statements[i]
		if watched && command.name == "insert" {
			statements[k] = ensureID(statements[k])
		}
	}

	var ids []bsoncore.Value
	if watched && command.name != "insert" {
		ids, err = c.lookupAffectedIDs(command, statements[0])
		if err != nil {
			return false, nil, err
		}
	}

	body := copyBody(msg.body, []string{command.field})
	upstreamReply, err := c.runCommand(body, documentSequence{identifier: command.field, documents: statements})
	if err != nil {
		return false, nil, err
	}
	if !replyOK(upstreamReply) {
		return false, c.reply(request, upstreamReply), nil
	}

	outcome := result.merge(upstreamReply, batch, command.ordered)
	if watched {
		if err := c.recordStatementEvents(command, statements, ids, outcome); err != nil {
			return false, nil, err
		}
	}

	return len(outcome.failed) > 0, nil, nil
}

// ensureID returns doc with an ObjectId _id in front when it has no _id,
// as the server would add, so that the change event contains the key.
func ensureID(doc bsoncore.Document) bsoncore.Document {
	if _, err := doc.LookupErr("_id"); err == nil {
		return doc
	}

	id := bson.NewObjectID()
	index, withID := bsoncore.AppendDocumentStart(nil)
	withID = bsoncore.AppendObjectIDElement(withID, "_id", id)
	withID = append(withID, doc[4:len(doc)-1]...)
	withID, _ = bsoncore.AppendDocumentEnd(withID, index)
	return withID
}

// isReplacement reports whether an update is a whole replacement document
// rather than update operators or an aggregation pipeline.
func isReplacement(update bsoncore.Value) bool {
	doc, ok := update.DocumentOK()
	if !ok {
		return false
	}
	first, err := doc.IndexErr(0)
	return err != nil || !strings.HasPrefix(first.Key(), "$")
}

// lookupAffectedIDs returns the _ids an update or delete statement will
// change. The caller holds the write lock, so nothing changes between the
// lookup and the write.
func (c *gateConn) lookupAffectedIDs(command *statementCommand, statement bsoncore.Document) ([]bsoncore.Value, error) {
	filter, _ := statement.Lookup("q").DocumentOK()

	limit := int64(0)
	switch command.name {
	case "update":
		if multi, _ := statement.Lookup("multi").BooleanOK(); !multi {
			limit = 1
		}
	case "delete":
		limit, _ = statement.Lookup("limit").AsInt64OK()
	}

	return c.findIDs(command.ns, filter, limit)
}

// recordStatementEvents turns the successful statements of a batch into
// change events.
func (c *gateConn) recordStatementEvents(command *statementCommand, statements []bsoncore.Document, ids []bsoncore.Value, outcome batchOutcome) error {
	var events []changeEvent

	switch command.name {
	case "insert":
		for k, doc := range statements {
			if outcome.applied(k) {
				events = append(events, newChangeEvent("insert", command.ns, doc.Lookup("_id"), doc))
			}
		}

	case "update":
		if len(outcome.upsertedIDs) > 0 {
			for _, id := range outcome.upsertedIDs {
				doc, err := c.findByID(command.ns, id)
				if err != nil {
					return err
				}
				events = append(events, newChangeEvent("insert", command.ns, id, doc))
			}
			break
		}
		if outcome.modified == 0 {
			break
		}

		// NOTE: when a multi-document update modifies only some of the
		// matched documents, every matched document gets an event,
		// because the reply does not say which ones changed.
		replacement := isReplacement(statements[0].Lookup("u"))
		for _, id := range ids {
			if !replacement {
				events = append(events, newChangeEvent("update", command.ns, id, nil))
				continue
			}
			doc, err := c.findByID(command.ns, id)
			if err != nil {
				return err
			}
			events = append(events, newChangeEvent("replace", command.ns, id, doc))
		}

	case "delete":
		for _, id := range ids[:min(len(ids), int(outcome.count))] {
			events = append(events, newChangeEvent("delete", command.ns, id, nil))
		}
	}

	c.server.events.append(events...)
	return nil
}

// newChangeEvent copies the key and document, which point into a message
// buffer, so that the event log keeps only what it needs.
func newChangeEvent(operation string, ns namespace, id bsoncore.Value, doc bsoncore.Document) changeEvent {
	event := changeEvent{
		operation:   operation,
		ns:          ns,
		documentKey: bsoncore.Value{Type: id.Type, Data: slices.Clone(id.Data)},
	}
	if doc != nil {
		event.fullDocument = slices.Clone(doc)
	}
	return event
}

// runFindAndModify runs findAndModify under the write lock, which makes the
// find and the write one atomic step, and records its change event.
func (c *gateConn) runFindAndModify(request message, msg *opMsg) ([]byte, error) {
	collection, _ := msg.body.IndexErr(0)
	name, ok := collection.Value().StringValueOK()
	if !ok {
		return c.replyError(request, newCommandError(codeTypeMismatch, "findAndModify: the collection name must be a string")), nil
	}
	ns := namespace{db: msg.database(), collection: name}

	update := msg.body.Lookup("update")
	if update.Type == bsoncore.TypeEmbeddedDocument || update.Type == bsoncore.TypeArray {
		if problem := walkValues(update.Data, "", rejectUnstorable, ""); problem != nil {
			return c.replyError(request, newCommandError(codeBadValue, "%s", problem.Error())), nil
		}
	}
	if problem := walkValues(msg.body, "", rejectUndecodable, "update"); problem != nil {
		return c.replyError(request, newCommandError(codeBadValue, "%s", problem.Error())), nil
	}

	c.server.writeMu.Lock()
	defer c.server.writeMu.Unlock()

	raw := request.raw
	if msg.moreToCome() {
		raw = withoutMoreToCome(request)
	}
	reply, err := c.roundTrip(raw)
	if err != nil || !c.server.events.isWatched(ns) {
		return reply, err
	}

	body, err := replyBody(message{raw: reply})
	if err != nil {
		return nil, err
	}
	if err := c.recordFindAndModifyEvent(ns, msg.body, body); err != nil {
		return nil, err
	}
	return reply, nil
}

func (c *gateConn) recordFindAndModifyEvent(ns namespace, command, reply bsoncore.Document) error {
	if !replyOK(reply) {
		return nil
	}

	value, _ := reply.Lookup("value").DocumentOK()
	lastError, _ := reply.Lookup("lastErrorObject").DocumentOK()
	returnsNew, _ := command.Lookup("new").BooleanOK()

	if remove, _ := command.Lookup("remove").BooleanOK(); remove {
		if value != nil {
			c.server.events.append(newChangeEvent("delete", ns, value.Lookup("_id"), nil))
		}
		return nil
	}

	if upserted, err := lastError.LookupErr("upserted"); err == nil {
		doc := value
		if !returnsNew {
			if doc, err = c.findByID(ns, upserted); err != nil {
				return err
			}
		}
		c.server.events.append(newChangeEvent("insert", ns, upserted, doc))
		return nil
	}

	// NOTE: an update that matched a document but changed nothing still
	// gets an event, because findAndModify's reply does not report it.
	if updated, _ := lastError.Lookup("updatedExisting").BooleanOK(); !updated || value == nil {
		return nil
	}
	id := value.Lookup("_id")
	if !isReplacement(command.Lookup("update")) {
		c.server.events.append(newChangeEvent("update", ns, id, nil))
		return nil
	}

	doc := value
	if !returnsNew {
		var err error
		if doc, err = c.findByID(ns, id); err != nil {
			return err
		}
	}
	c.server.events.append(newChangeEvent("replace", ns, id, doc))
	return nil
}
