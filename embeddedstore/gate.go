package embeddedstore

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"

	"github.com/rs/zerolog"
	"go.mongodb.org/mongo-driver/v2/x/bsonx/bsoncore"
)

// Commands that change data or metadata besides insert, update, delete and
// findAndModify, which have their own handling. The gate runs them under the
// write lock so that no write interleaves with another.
var lockedCommands = map[string]bool{
	"create":                   true,
	"drop":                     true,
	"dropDatabase":             true,
	"createIndexes":            true,
	"dropIndexes":              true,
	"renameCollection":         true,
	"collMod":                  true,
	"compact":                  true,
	"createUser":               true,
	"updateUser":               true,
	"dropUser":                 true,
	"dropAllUsersFromDatabase": true,
}

// gateConn serves one client connection. Each client connection has its own
// upstream connection to FerretDB, and drivers send one request at a time on
// a connection, so the gate relays request by request.
type gateConn struct {
	server *Server
	log    zerolog.Logger

	client   net.Conn
	clientIn *bufio.Reader

	upstream   net.Conn
	upstreamIn *bufio.Reader
}

func newGateConn(server *Server, client, upstream net.Conn) *gateConn {
	return &gateConn{
		server:     server,
		log:        server.log.With().Str("remote_addr", client.RemoteAddr().String()).Logger(),
		client:     client,
		clientIn:   bufio.NewReaderSize(client, 64<<10),
		upstream:   upstream,
		upstreamIn: bufio.NewReaderSize(upstream, 64<<10),
	}
}

// serve relays requests until the client or FerretDB closes its side.
func (c *gateConn) serve() {
	for {
		request, err := readMessage(c.clientIn)
		if err != nil {
			c.logClosed("reading client request", err)
			return
		}

		reply, err := c.handle(request)
		if err != nil {
			c.logClosed("handling client request", err)
			return
		}
		if reply == nil {
			continue
		}

		if _, err := c.client.Write(reply); err != nil {
			c.logClosed("writing reply to client", err)
			return
		}
	}
}

func (c *gateConn) logClosed(step string, err error) {
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		c.log.Debug().Msg("embedded store: client connection closed")
		return
	}
	c.log.Debug().Err(err).Str("step", step).Msg("embedded store: closing client connection")
}

// handle returns the reply to send to the client, or nil when the request
// asked for none. An error closes the client connection.
func (c *gateConn) handle(request message) ([]byte, error) {
	if request.opCode() != opCodeMsg {
		// OP_QUERY carries the legacy handshake (hello, isMaster) and
		// FerretDB runs nothing else through it, so it cannot write. FerretDB
		// closes the connection on the other legacy op codes.
		return c.roundTrip(request.raw)
	}

	msg, err := parseOpMsg(request)
	if err != nil {
		return nil, fmt.Errorf("parsing client request: %w", err)
	}

	reply, err := c.dispatch(request, msg)
	if err != nil {
		return nil, err
	}
	if msg.moreToCome() {
		return nil, nil
	}
	return reply, nil
}

func (c *gateConn) dispatch(request message, msg *opMsg) ([]byte, error) {
	command := msg.commandName()

	switch command {
	case "insert", "update", "delete":
		return c.runStatementCommand(request, msg, command)
	case "findAndModify", "findandmodify":
		return c.runFindAndModify(request, msg)
	}

	if problem := findUnsupportedMessageValue(msg); problem != nil {
		return c.replyError(request, newCommandError(codeBadValue, "%s", problem.Error())), nil
	}

	switch {
	case command == "aggregate" && isChangeStreamPipeline(msg.body):
		return c.openChangeStream(request, msg)
	case command == "getMore" && c.server.cursors.owns(msg.body.Lookup("getMore")):
		return c.getMoreChangeStream(request, msg)
	case command == "killCursors":
		return c.killCursors(request, msg)
	case lockedCommands[command] || (command == "aggregate" && writesOutput(msg.body)):
		return c.forwardLocked(request, msg)
	default:
		return c.forward(request, msg)
	}
}

// findUnsupportedMessageValue checks a whole message for values FerretDB
// cannot decode.
func findUnsupportedMessageValue(msg *opMsg) *unsupportedValueError {
	if problem := findUnsupportedValue(msg.body, rejectUndecodable); problem != nil {
		return problem
	}
	for _, sequence := range msg.sequences {
		for _, doc := range sequence.documents {
			if problem := findUnsupportedValue(doc, rejectUndecodable); problem != nil {
				return problem
			}
		}
	}
	return nil
}

// writesOutput reports whether an aggregate pipeline ends in $out or $merge.
func writesOutput(body bsoncore.Document) bool {
	stages, ok := body.Lookup("pipeline").ArrayOK()
	if !ok {
		return false
	}
	values, err := stages.Values()
	if err != nil || len(values) == 0 {
		return false
	}
	last, ok := values[len(values)-1].DocumentOK()
	if !ok {
		return false
	}
	element, err := last.IndexErr(0)
	return err == nil && (element.Key() == "$out" || element.Key() == "$merge")
}

// forward relays a request that needs no lock.
func (c *gateConn) forward(request message, msg *opMsg) ([]byte, error) {
	if msg.moreToCome() {
		return nil, c.send(request.raw)
	}
	return c.roundTrip(request.raw)
}

// forwardLocked relays a write under the write lock. An unacknowledged
// write is sent as an acknowledged one, so that the lock is held until
// FerretDB has finished it; the reply is then dropped.
func (c *gateConn) forwardLocked(request message, msg *opMsg) ([]byte, error) {
	c.server.writeMu.Lock()
	defer c.server.writeMu.Unlock()

	if msg.moreToCome() {
		_, err := c.roundTrip(withoutMoreToCome(request))
		return nil, err
	}
	return c.roundTrip(request.raw)
}

func (c *gateConn) send(raw []byte) error {
	if _, err := c.upstream.Write(raw); err != nil {
		return fmt.Errorf("sending request to FerretDB: %w", err)
	}
	return nil
}

// roundTrip sends one message upstream and returns FerretDB's reply.
func (c *gateConn) roundTrip(raw []byte) ([]byte, error) {
	if err := c.send(raw); err != nil {
		return nil, err
	}
	reply, err := readMessage(c.upstreamIn)
	if err != nil {
		return nil, fmt.Errorf("reading reply from FerretDB: %w", err)
	}
	return reply.raw, nil
}

// runCommand sends a command the gate built itself and returns the reply
// body. Only a failed connection is an error: the caller checks ok.
func (c *gateConn) runCommand(body bsoncore.Document, sequences ...documentSequence) (bsoncore.Document, error) {
	raw, err := c.roundTrip(encodeOpMsg(nextRequestID(), 0, 0, body, sequences...))
	if err != nil {
		return nil, err
	}
	return replyBody(message{raw: raw})
}

func (c *gateConn) reply(request message, body bsoncore.Document) []byte {
	return encodeOpMsg(nextRequestID(), request.requestID(), 0, body)
}

func (c *gateConn) replyError(request message, err *commandError) []byte {
	c.log.Debug().Str("error", err.message).Int32("code", err.code).Msg("embedded store: command rejected")
	return c.reply(request, err.document())
}

// copyBody copies the elements of body except those named in drop and
// appends the given elements, which must be encoded BSON elements.
func copyBody(body bsoncore.Document, drop []string, extra ...[]byte) bsoncore.Document {
	index, doc := bsoncore.AppendDocumentStart(nil)

	elements, _ := body.Elements()
	for _, element := range elements {
		if !slices.Contains(drop, element.Key()) {
			doc = append(doc, element...)
		}
	}
	for _, element := range extra {
		doc = append(doc, element...)
	}

	doc, _ = bsoncore.AppendDocumentEnd(doc, index)
	return doc
}
