// Package embeddedstore runs the zero-setup store Bolt uses when no MongoDB
// is configured: FerretDB v1.24.2 on SQLite behind a MongoDB wire protocol
// gate.
//
// FerretDB listens only on a private Unix socket. Clients connect to the
// gate, which relays each message over a per-client upstream connection.
// The gate adds what Bolt needs from MongoDB and FerretDB lacks. Write
// commands run one at a time, which makes single-document writes atomic.
// Change streams on collections are served from an in-memory event log.
// NaN, Infinity and Decimal128 values get a write error instead of a
// dropped connection.
package embeddedstore

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/FerretDB/FerretDB/ferretdb"
	"github.com/rs/zerolog"
)

// Options configures the embedded store.
type Options struct {
	// Listen is the TCP address for clients, for example "127.0.0.1:27018".
	// A port of 0 picks a free port, and an empty address means "127.0.0.1:0".
	Listen string

	// DataDir is the folder for FerretDB's SQLite files, one per database.
	// It is created if missing.
	DataDir string

	Logger zerolog.Logger

	// AllowRemote allows a Listen address that is not loopback. The store
	// has no authentication, so anyone who reaches the port can read and
	// change all data.
	AllowRemote bool

	// RetainedEvents is the number of change events kept in memory for
	// change streams to resume from; 0 means DefaultRetainedEvents.
	RetainedEvents int

	// upstreamTCP makes FerretDB listen on a loopback port instead of a
	// Unix socket, as it does when the socket path would be too long.
	// Tests and benchmarks set it.
	upstreamTCP bool
}

// Server is a running embedded store: FerretDB and the gate in front of it.
type Server struct {
	log      zerolog.Logger
	listener net.Listener

	upstreamNetwork string
	upstreamAddress string
	socketDir       string
	stopFerret      context.CancelFunc
	ferretDone      chan struct{}

	// writeMu serialises write commands, which FerretDB does not run
	// atomically, and the change events recorded for them.
	writeMu sync.Mutex
	ids     *idIndexer
	events  *eventLog
	cursors *cursorRegistry

	closing   chan struct{}
	connsMu   sync.Mutex
	conns     map[*gateConn]struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// maxUnixSocketPath is the usable length of sun_path on Linux.
const maxUnixSocketPath = 107

// Start starts FerretDB and the gate and returns when the gate accepts
// connections. ctx bounds the start only, and the store runs until Close.
func Start(ctx context.Context, opts Options) (*Server, error) {
	if opts.Listen == "" {
		opts.Listen = "127.0.0.1:0"
	}
	if err := checkListenAddress(opts.Listen, opts.AllowRemote); err != nil {
		return nil, err
	}
	if opts.DataDir == "" {
		return nil, errors.New("starting embedded store: DataDir is empty; set it to the folder for the SQLite files")
	}
	if opts.RetainedEvents < 0 {
		return nil, fmt.Errorf("starting embedded store: RetainedEvents is %d; use a positive number, or 0 for %d", opts.RetainedEvents, DefaultRetainedEvents)
	}
	if opts.RetainedEvents == 0 {
		opts.RetainedEvents = DefaultRetainedEvents
	}

	s := &Server{
		log:     opts.Logger,
		events:  newEventLog(rand.Uint64(), opts.RetainedEvents),
		cursors: newCursorRegistry(),
		closing: make(chan struct{}),
		conns:   make(map[*gateConn]struct{}),
	}

	if err := s.startFerret(opts.DataDir, opts.upstreamTCP); err != nil {
		return nil, err
	}

	if err := ctx.Err(); err != nil {
		s.stopFerretDB()
		return nil, fmt.Errorf("starting embedded store: %w", err)
	}

	listener, err := net.Listen("tcp", opts.Listen)
	if err != nil {
		s.stopFerretDB()
		return nil, fmt.Errorf("starting embedded store: listening on %s: %w", opts.Listen, err)
	}
	if ip := listener.Addr().(*net.TCPAddr).IP; !opts.AllowRemote && !ip.IsLoopback() {
		listener.Close()
		s.stopFerretDB()
		return nil, fmt.Errorf("starting embedded store: %s resolved to %s, which is not a loopback address; %s",
			opts.Listen, ip, allowRemoteHint)
	}
	s.listener = listener

	s.wg.Add(1)
	go s.acceptLoop()

	s.log.Info().Str("addr", s.Addr()).Str("data_dir", opts.DataDir).Msg("embedded store: listening")
	return s, nil
}

const allowRemoteHint = "the embedded store has no authentication, so it listens on 127.0.0.1 or ::1 " +
	"unless remote clients are allowed explicitly (Options.AllowRemote, or bolt db --allow-remote)"

// checkListenAddress rejects a host that is not loopback unless allowRemote.
func checkListenAddress(address string, allowRemote bool) error {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return fmt.Errorf("starting embedded store: invalid listen address %q: %w; use host:port, for example 127.0.0.1:27018", address, err)
	}
	if allowRemote || host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("starting embedded store: listen address %q is not a loopback address; %s", address, allowRemoteHint)
}

// startFerret starts FerretDB on a Unix socket in a new private folder. It
// falls back to a loopback port when the temporary folder's path is too
// long for a socket.
func (s *Server) startFerret(dataDir string, useTCP bool) error {
	dataDir, err := filepath.Abs(dataDir)
	if err != nil {
		return fmt.Errorf("starting embedded store: resolving data folder: %w", err)
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return fmt.Errorf("starting embedded store: creating data folder: %w", err)
	}
	s.ids = &idIndexer{dir: dataDir, log: s.log, done: map[namespace]bool{}}

	s.socketDir, err = os.MkdirTemp("", "bolt-store-")
	if err != nil {
		return fmt.Errorf("starting embedded store: creating socket folder: %w", err)
	}

	listener := ferretdb.ListenerConfig{}
	socketPath := filepath.Join(s.socketDir, "ferretdb.sock")
	if !useTCP && len(socketPath) <= maxUnixSocketPath {
		listener.Unix = socketPath
	} else {
		listener.TCP = "127.0.0.1:0"
	}

	sqliteURL := (&url.URL{Scheme: "file", Path: dataDir + "/"}).String()
	ferretNewMu.Lock()
	ferret, err := ferretdb.New(&ferretdb.Config{
		Listener:  listener,
		Logger:    newFerretLogger(s.log),
		Handler:   "sqlite",
		SQLiteURL: sqliteURL,
	})
	ferretNewMu.Unlock()
	if err != nil {
		os.RemoveAll(s.socketDir)
		return fmt.Errorf("starting embedded store: starting FerretDB on %s: %w", dataDir, err)
	}

	runCtx, stop := context.WithCancel(context.Background())
	s.stopFerret = stop
	s.ferretDone = make(chan struct{})
	go func() {
		defer close(s.ferretDone)
		_ = ferret.Run(runCtx) // returns nil once runCtx is cancelled
	}()

	if listener.Unix != "" {
		s.upstreamNetwork, s.upstreamAddress = "unix", socketPath
		return nil
	}
	uri, err := url.Parse(ferret.MongoDBURI())
	if err != nil {
		s.stopFerretDB()
		return fmt.Errorf("starting embedded store: reading FerretDB address: %w", err)
	}
	s.upstreamNetwork, s.upstreamAddress = "tcp", uri.Host
	return nil
}

// ferretNewMu serialises ferretdb.New, which writes a package variable of
// FerretDB's (the version's Package field) without a lock.
var ferretNewMu sync.Mutex

func (s *Server) stopFerretDB() {
	s.stopFerret()
	<-s.ferretDone
	os.RemoveAll(s.socketDir)
}

// URI returns "mongodb://127.0.0.1:PORT/" usable by the Go driver and
// pymongo.
func (s *Server) URI() string {
	return "mongodb://" + s.clientAddress() + "/"
}

// Addr returns the address the gate listens on.
func (s *Server) Addr() string {
	return s.listener.Addr().String()
}

// clientAddress returns an address a local client can dial: a wildcard
// listen address is replaced by loopback.
func (s *Server) clientAddress() string {
	addr := s.listener.Addr().(*net.TCPAddr)
	if !addr.IP.IsUnspecified() {
		return addr.String()
	}
	host := "127.0.0.1"
	if addr.IP.To4() == nil {
		host = "::1"
	}
	return net.JoinHostPort(host, fmt.Sprint(addr.Port))
}

// Close stops accepting connections, closes client connections and stops
// FerretDB. Later calls return the result of the first.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		close(s.closing)
		if err := s.listener.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			s.closeErr = fmt.Errorf("closing embedded store listener: %w", err)
		}

		s.connsMu.Lock()
		for conn := range s.conns {
			conn.client.Close()
			conn.upstream.Close()
		}
		s.connsMu.Unlock()
		s.wg.Wait()

		s.stopFerretDB()
		s.log.Info().Str("addr", s.Addr()).Msg("embedded store: stopped")
	})
	return s.closeErr
}

func (s *Server) acceptLoop() {
	defer s.wg.Done()

	retryDelay := 5 * time.Millisecond
	for {
		client, err := s.listener.Accept()
		if err != nil {
			select {
			case <-s.closing:
				return
			default:
			}

			// Accept fails for lack of file descriptors and similar
			// passing conditions: wait a little, as net/http does.
			s.log.Warn().Err(err).Dur("retry_in", retryDelay).Msg("embedded store: accepting a connection failed")
			select {
			case <-s.closing:
				return
			case <-time.After(retryDelay):
			}
			retryDelay = min(2*retryDelay, time.Second)
			continue
		}
		retryDelay = 5 * time.Millisecond

		s.startConn(client)
	}
}

// startConn connects a new client to FerretDB and serves it.
func (s *Server) startConn(client net.Conn) {
	dialer := net.Dialer{Timeout: 10 * time.Second}
	upstream, err := dialer.Dial(s.upstreamNetwork, s.upstreamAddress)
	if err != nil {
		s.log.Error().Err(err).Str("remote_addr", client.RemoteAddr().String()).
			Msg("embedded store: connecting to FerretDB failed; closing the client connection")
		client.Close()
		return
	}

	conn := newGateConn(s, client, upstream)

	s.connsMu.Lock()
	select {
	case <-s.closing:
		s.connsMu.Unlock()
		client.Close()
		upstream.Close()
		return
	default:
	}
	s.conns[conn] = struct{}{}
	s.wg.Add(1)
	s.connsMu.Unlock()

	go func() {
		defer s.wg.Done()
		conn.serve()

		s.connsMu.Lock()
		delete(s.conns, conn)
		s.connsMu.Unlock()
		client.Close()
		upstream.Close()
	}()
}
