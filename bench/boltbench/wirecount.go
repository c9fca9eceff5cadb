package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"sync"

	"go.mongodb.org/mongo-driver/v2/bson"
)

// Wire protocol opcodes that clients send; see the MongoDB wire protocol reference.
const (
	opQuery = 2004
	opMsg   = 2013
)

// commandCounter is a loopback TCP proxy in front of a MongoDB-compatible server that
// counts the commands clients send through it, by command name.
type commandCounter struct {
	listener net.Listener
	upstream string

	mu     sync.Mutex
	counts map[string]int
}

// startCommandCounter listens on a free loopback port and relays each connection to upstream.
func startCommandCounter(upstream string) (*commandCounter, error) {
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	c := &commandCounter{listener: listener, upstream: upstream, counts: map[string]int{}}
	go c.accept()
	return c, nil
}

// URI returns the address clients connect to.
func (c *commandCounter) URI() string {
	return fmt.Sprintf("mongodb://%s/", c.listener.Addr())
}

// Counts returns a copy of the counts so far.
func (c *commandCounter) Counts() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.counts)
}

func (c *commandCounter) Close() { _ = c.listener.Close() }

func (c *commandCounter) accept() {
	for {
		client, err := c.listener.Accept()
		if err != nil {
			return
		}
		go c.relay(client)
	}
}

func (c *commandCounter) relay(client net.Conn) {
	defer client.Close()
	server, err := net.Dial("tcp", c.upstream)
	if err != nil {
		return
	}
	defer server.Close()
	go func() {
		_, _ = io.Copy(client, server)
		_ = client.Close()
	}()

	for {
		message, err := readMessage(client)
		if err != nil {
			return
		}
		c.count(commandName(message))
		if _, err := server.Write(message); err != nil {
			return
		}
	}
}

func (c *commandCounter) count(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.counts[name]++
}

// readMessage reads one wire protocol message: a little-endian int32 length that counts
// itself, then the rest of the message.
func readMessage(r io.Reader) ([]byte, error) {
	var header [16]byte
	if _, err := io.ReadFull(r, header[:]); err != nil {
		return nil, err
	}
	length := int(binary.LittleEndian.Uint32(header[:4]))
	if length < 16 || length > 48*1024*1024 {
		return nil, errors.New("invalid message length")
	}
	message := make([]byte, length)
	copy(message, header[:])
	_, err := io.ReadFull(r, message[16:])
	return message, err
}

// commandName returns the first key of an OP_MSG body, which names the command, or the
// opcode for other messages.
func commandName(message []byte) string {
	opcode := binary.LittleEndian.Uint32(message[12:16])
	switch {
	case opcode == opQuery:
		return "OP_QUERY"
	case opcode != opMsg:
		return fmt.Sprintf("opcode %d", opcode)
	}
	// flagBits (4 bytes), then sections; the body is a kind 0 section with one document.
	offset := 20
	for offset < len(message) {
		kind := message[offset]
		offset++
		if offset+4 > len(message) {
			break
		}
		size := int(binary.LittleEndian.Uint32(message[offset : offset+4]))
		if kind == 0 && offset+size <= len(message) {
			elements, err := bson.Raw(message[offset : offset+size]).Elements()
			if err == nil && len(elements) > 0 {
				return elements[0].Key()
			}
			break
		}
		offset += size // a kind 1 section: its size counts itself
	}
	return "OP_MSG"
}
