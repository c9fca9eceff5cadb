package embeddedstore

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync/atomic"

	"go.mongodb.org/mongo-driver/v2/x/bsonx/bsoncore"
)

// Wire protocol constants from the MongoDB wire protocol specification.
const (
	opCodeReply = 1
	opCodeMsg   = 2013

	headerLength = 16

	// maxMessageLength matches maxMessageSizeBytes that MongoDB and FerretDB
	// report in their hello reply.
	maxMessageLength = 48_000_000

	flagChecksumPresent uint32 = 1 << 0
	flagMoreToCome      uint32 = 1 << 1

	sectionBody     = 0
	sectionSequence = 1
)

// gateRequestID numbers the messages the gate itself sends upstream.
var gateRequestID atomic.Int32

func nextRequestID() int32 {
	return gateRequestID.Add(1)
}

// message is one wire protocol message, header included.
type message struct {
	raw []byte
}

func (m message) requestID() int32 { return int32(binary.LittleEndian.Uint32(m.raw[4:8])) }
func (m message) opCode() int32    { return int32(binary.LittleEndian.Uint32(m.raw[12:16])) }

// readMessage reads one whole message. It rejects a length outside the
// protocol's bounds because the connection cannot be resynchronised after it.
func readMessage(r *bufio.Reader) (message, error) {
	var header [headerLength]byte
	if _, err := io.ReadFull(r, header[:]); err != nil {
		return message{}, err
	}

	length := int32(binary.LittleEndian.Uint32(header[0:4]))
	if length < headerLength || length > maxMessageLength {
		return message{}, fmt.Errorf("invalid message length %d: want %d to %d bytes", length, headerLength, maxMessageLength)
	}

	raw := make([]byte, length)
	copy(raw, header[:])
	if _, err := io.ReadFull(r, raw[headerLength:]); err != nil {
		return message{}, fmt.Errorf("reading message body: %w", err)
	}

	return message{raw: raw}, nil
}

// opMsg is a parsed OP_MSG: its flags, the body document and any kind-1
// document sequences (the Go driver sends insert documents, update and
// delete statements that way).
type opMsg struct {
	flags     uint32
	body      bsoncore.Document
	sequences []documentSequence
}

type documentSequence struct {
	identifier string
	documents  []bsoncore.Document
}

var errMalformedMessage = errors.New("malformed OP_MSG")

func parseOpMsg(m message) (*opMsg, error) {
	src := m.raw[headerLength:]
	if len(src) < 4 {
		return nil, errMalformedMessage
	}

	msg := &opMsg{flags: binary.LittleEndian.Uint32(src)}
	src = src[4:]
	if msg.flags&flagChecksumPresent != 0 {
		if len(src) < 4 {
			return nil, errMalformedMessage
		}
		src = src[:len(src)-4]
	}

	for len(src) > 0 {
		kind := src[0]
		src = src[1:]

		switch kind {
		case sectionBody:
			doc, rest, ok := bsoncore.ReadDocument(src)
			if !ok || msg.body != nil {
				return nil, errMalformedMessage
			}
			if err := doc.Validate(); err != nil {
				return nil, fmt.Errorf("%w: body: %w", errMalformedMessage, err)
			}
			msg.body = doc
			src = rest
		case sectionSequence:
			sequence, rest, err := readDocumentSequence(src)
			if err != nil {
				return nil, err
			}
			msg.sequences = append(msg.sequences, sequence)
			src = rest
		default:
			return nil, fmt.Errorf("%w: unknown section kind %d", errMalformedMessage, kind)
		}
	}

	if msg.body == nil {
		return nil, fmt.Errorf("%w: no body section", errMalformedMessage)
	}

	return msg, nil
}

func readDocumentSequence(src []byte) (documentSequence, []byte, error) {
	if len(src) < 4 {
		return documentSequence{}, nil, errMalformedMessage
	}

	size := int(binary.LittleEndian.Uint32(src))
	if size < 4 || size > len(src) {
		return documentSequence{}, nil, errMalformedMessage
	}
	section, rest := src[4:size], src[size:]

	identifier, section, ok := readCString(section)
	if !ok {
		return documentSequence{}, nil, errMalformedMessage
	}

	sequence := documentSequence{identifier: identifier}
	for len(section) > 0 {
		doc, remaining, ok := bsoncore.ReadDocument(section)
		if !ok {
			return documentSequence{}, nil, errMalformedMessage
		}
		if err := doc.Validate(); err != nil {
			return documentSequence{}, nil, fmt.Errorf("%w: sequence %q: %w", errMalformedMessage, identifier, err)
		}
		sequence.documents = append(sequence.documents, doc)
		section = remaining
	}

	return sequence, rest, nil
}

func readCString(src []byte) (string, []byte, bool) {
	for i, b := range src {
		if b == 0 {
			return string(src[:i]), src[i+1:], true
		}
	}
	return "", nil, false
}

// commandName returns the first key of the body, which names the command.
func (m *opMsg) commandName() string {
	element, err := m.body.IndexErr(0)
	if err != nil {
		return ""
	}
	return element.Key()
}

func (m *opMsg) database() string {
	db, _ := m.body.Lookup("$db").StringValueOK()
	return db
}

func (m *opMsg) moreToCome() bool {
	return m.flags&flagMoreToCome != 0
}

// encodeOpMsg builds an OP_MSG without a checksum: the body and then each
// document sequence as a kind-1 section.
func encodeOpMsg(requestID, responseTo int32, flags uint32, body bsoncore.Document, sequences ...documentSequence) []byte {
	flags &^= flagChecksumPresent

	raw := make([]byte, headerLength, headerLength+5+len(body))
	binary.LittleEndian.PutUint32(raw[4:8], uint32(requestID))
	binary.LittleEndian.PutUint32(raw[8:12], uint32(responseTo))
	binary.LittleEndian.PutUint32(raw[12:16], opCodeMsg)
	raw = binary.LittleEndian.AppendUint32(raw, flags)

	raw = append(raw, sectionBody)
	raw = append(raw, body...)

	for _, sequence := range sequences {
		raw = append(raw, sectionSequence)
		start := len(raw)
		raw = append(raw, 0, 0, 0, 0)
		raw = append(raw, sequence.identifier...)
		raw = append(raw, 0)
		for _, doc := range sequence.documents {
			raw = append(raw, doc...)
		}
		binary.LittleEndian.PutUint32(raw[start:], uint32(len(raw)-start))
	}

	binary.LittleEndian.PutUint32(raw[0:4], uint32(len(raw)))
	return raw
}

// withoutMoreToCome returns a copy of an OP_MSG that requests a reply. The
// gate uses it for unacknowledged writes, so that it learns when the write
// ended and can release the write lock. A checksum is dropped because the
// flags it covers change.
func withoutMoreToCome(m message) []byte {
	raw := append([]byte(nil), m.raw...)
	flags := binary.LittleEndian.Uint32(raw[headerLength:])
	if flags&flagChecksumPresent != 0 {
		raw = raw[:len(raw)-4]
		binary.LittleEndian.PutUint32(raw[0:4], uint32(len(raw)))
	}
	flags &^= flagMoreToCome | flagChecksumPresent
	binary.LittleEndian.PutUint32(raw[headerLength:], flags)
	return raw
}

// replyBody returns the body of an OP_MSG reply.
func replyBody(m message) (bsoncore.Document, error) {
	if m.opCode() != opCodeMsg {
		return nil, fmt.Errorf("unexpected reply op code %d", m.opCode())
	}
	msg, err := parseOpMsg(m)
	if err != nil {
		return nil, err
	}
	return msg.body, nil
}
