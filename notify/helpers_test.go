package notify

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"log"
	"math/big"
	"mime"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
)

const (
	testHost = "worker-1.example.com"
	testFrom = "Bolt <bolt@example.com>"
	// waitLimit bounds every wait for a condition. It is generous because a loaded
	// machine, or the race detector, slows the embedded store down several times.
	waitLimit  = time.Minute
	pollPeriod = 10 * time.Millisecond
)

var databaseCounter atomic.Int64

// newDatabase returns an empty database of client that is dropped after the test.
func newDatabase(t *testing.T, client *mongo.Client) *mongo.Database {
	t.Helper()
	db := client.Database(fmt.Sprintf("notify_test_%d", databaseCounter.Add(1)))
	t.Cleanup(func() {
		_ = db.Drop(context.Background())
	})
	return db
}

// logBuffer collects zerolog output. A failed test prints it.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func newLogger(t *testing.T) (zerolog.Logger, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs:\n%s", logs.String())
		}
	})
	return zerolog.New(logs).Level(zerolog.DebugLevel).With().Timestamp().Logger(), logs
}

// testTiming shortens every interval so that retries happen within milliseconds.
var testTiming = timing{
	retryInitial:  50 * time.Millisecond,
	retryMax:      200 * time.Millisecond,
	pollInterval:  200 * time.Millisecond,
	leaseFor:      5 * time.Second,
	recordTimeout: 5 * time.Second,
	batchSize:     50,
}

// newNotifier returns a Notifier with test timing. cfg gets the test host and sender
// unless it sets them.
func newNotifier(t *testing.T, db *mongo.Database, cfg Config, log zerolog.Logger) *Notifier {
	t.Helper()
	if cfg.Env == "" {
		cfg.Env = EnvTest
	}
	if cfg.Host == "" {
		cfg.Host = testHost
	}
	if cfg.From == "" {
		cfg.From = testFrom
	}
	n, err := New(db, cfg, log)
	require.NoError(t, err)
	n.timing = testTiming
	return n
}

// startRun runs n.Run until the test ends and checks that it returns nil.
func startRun(t *testing.T, n *Notifier) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(waitLimit):
			t.Error("Run did not return after its context was cancelled")
		}
	})
}

// eventually polls cond until it returns true or the wait limit passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", waitLimit, what)
		}
		time.Sleep(pollPeriod)
	}
}

func countNotifications(t *testing.T, db *mongo.Database) int64 {
	t.Helper()
	count, err := db.Collection(notificationsCollection).CountDocuments(context.Background(), bson.D{})
	require.NoError(t, err)
	return count
}

func countLeases(t *testing.T, db *mongo.Database) int64 {
	t.Helper()
	count, err := db.Collection(leasesCollection).CountDocuments(context.Background(), bson.D{})
	require.NoError(t, err)
	return count
}

func loadNotifications(t *testing.T, db *mongo.Database) []notification {
	t.Helper()
	cursor, err := db.Collection(notificationsCollection).Find(context.Background(), bson.D{})
	require.NoError(t, err)
	var all []notification
	require.NoError(t, cursor.All(context.Background(), &all))
	return all
}

// waitForAttempt waits until the only notification has failed at least once, and
// returns it.
func waitForAttempt(t *testing.T, db *mongo.Database) notification {
	t.Helper()
	var found notification
	eventually(t, "a failed delivery attempt", func() bool {
		all := loadNotifications(t, db)
		if len(all) == 1 && all[0].Attempts > 0 {
			found = all[0]
			return true
		}
		return false
	})
	return found
}

// waitUntilEmpty waits until no notification and no lease is left. A notification is
// removed before its leases, so the leases are checked last.
func waitUntilEmpty(t *testing.T, db *mongo.Database) {
	t.Helper()
	eventually(t, "the notifications and their leases to be removed", func() bool {
		return countNotifications(t, db) == 0 && countLeases(t, db) == 0
	})
}

// successOutcome returns the outcome of a successful send_report run with doc as its
// document. doc gets an _id if it has none.
func successOutcome(doc bson.M) Outcome {
	if doc == nil {
		doc = bson.M{}
	}
	if _, ok := doc["_id"]; !ok {
		doc["_id"] = bson.NewObjectID()
	}
	if _, ok := doc["task"]; !ok {
		doc["task"] = "send_report"
	}
	return Outcome{
		TaskID:   doc["_id"],
		Task:     doc["task"].(string),
		Document: doc,
		Success:  true,
		Started:  time.Date(2026, 12, 4, 19, 45, 3, 0, time.UTC),
		Duration: 1500 * time.Millisecond,
	}
}

// failureOutcome returns the outcome of a failed send_report run.
func failureOutcome(doc bson.M) Outcome {
	o := successOutcome(doc)
	o.Success = false
	o.Ex = "RuntimeError: report server returned 502\nsecond line of the message"
	o.Backtrace = []string{"lib/bolt/tasks/send_report.rb:12:in `run'", "lib/bolt/runner.rb:40:in `call'"}
	o.Stderr = "warning: retrying\nfatal: giving up\n"
	o.ExitStatus = "exit status 1"
	return o
}

// receivedMessage is one message that the SMTP test server accepted.
type receivedMessage struct {
	from string
	to   []string
	raw  []byte
}

func (m receivedMessage) parse(t *testing.T) *mail.Message {
	t.Helper()
	parsed, err := mail.ReadMessage(bytes.NewReader(m.raw))
	require.NoError(t, err)
	return parsed
}

// subject returns the decoded Subject header.
func (m receivedMessage) subject(t *testing.T) string {
	t.Helper()
	subject, err := new(mime.WordDecoder).DecodeHeader(m.parse(t).Header.Get("Subject"))
	require.NoError(t, err)
	return subject
}

// body returns the decoded text body with LF line endings.
func (m receivedMessage) body(t *testing.T) string {
	t.Helper()
	parsed := m.parse(t)
	var reader io.Reader = parsed.Body
	if strings.EqualFold(parsed.Header.Get("Content-Transfer-Encoding"), "quoted-printable") {
		reader = quotedprintable.NewReader(parsed.Body)
	}
	body, err := io.ReadAll(reader)
	require.NoError(t, err)
	return strings.ReplaceAll(string(body), "\r\n", "\n")
}

// smtpServer is a go-smtp server on loopback that keeps the messages it accepts. Tests
// queue error replies for RCPT TO and DATA to simulate a failing server.
type smtpServer struct {
	addr string

	// received signals each accepted message. It holds the first 1000 that no test
	// read, and later ones are only in messages.
	received chan receivedMessage

	mu          sync.Mutex
	messages    []receivedMessage
	rcptReplies map[string][]error
	dataReplies []error
	dataCalls   int
	username    string
	password    string
	authUsers   []string
}

type smtpOptions struct {
	addr        string      // listen address, "127.0.0.1:0" when empty
	tlsConfig   *tls.Config // enables STARTTLS, or implicit TLS with implicitTLS
	implicitTLS bool
	username    string // requires AUTH PLAIN with these credentials when set
	password    string
}

func startSMTPServer(t *testing.T, opts smtpOptions) *smtpServer {
	t.Helper()
	if opts.addr == "" {
		opts.addr = "127.0.0.1:0"
	}
	s := &smtpServer{
		received:    make(chan receivedMessage, 1000),
		rcptReplies: map[string][]error{},
		username:    opts.username,
		password:    opts.password,
	}

	server := smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) {
		return &testSMTPSession{server: s}, nil
	}))
	server.Domain = "localhost"
	server.EnableSMTPUTF8 = true
	server.ErrorLog = log.New(io.Discard, "", 0)
	server.ReadTimeout = waitLimit
	server.WriteTimeout = waitLimit
	if !opts.implicitTLS {
		server.TLSConfig = opts.tlsConfig
	}

	listener, err := net.Listen("tcp", opts.addr)
	require.NoError(t, err)
	if opts.implicitTLS {
		listener = tls.NewListener(listener, opts.tlsConfig)
	}
	s.addr = listener.Addr().String()

	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = server.Serve(listener)
	}()
	t.Cleanup(func() {
		_ = server.Close()
		<-done
	})
	return s
}

func (s *smtpServer) url() string {
	return "smtp://" + s.addr
}

// rejectRcpt queues replies for RCPT TO of address, one per command.
func (s *smtpServer) rejectRcpt(address string, replies ...error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rcptReplies[address] = append(s.rcptReplies[address], replies...)
}

// rejectData queues replies for DATA, one per message.
func (s *smtpServer) rejectData(replies ...error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dataReplies = append(s.dataReplies, replies...)
}

func (s *smtpServer) accepted() []receivedMessage {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]receivedMessage(nil), s.messages...)
}

// waitMessage returns the next accepted message.
func (s *smtpServer) waitMessage(t *testing.T) receivedMessage {
	t.Helper()
	select {
	case m := <-s.received:
		return m
	case <-time.After(waitLimit):
		t.Fatalf("no message arrived within %s", waitLimit)
		return receivedMessage{}
	}
}

func smtpReply(code int, message string) error {
	return &smtp.SMTPError{Code: code, EnhancedCode: smtp.EnhancedCodeNotSet, Message: message}
}

type testSMTPSession struct {
	server *smtpServer
	from   string
	to     []string
}

func (s *testSMTPSession) AuthMechanisms() []string {
	if s.server.username == "" {
		return nil
	}
	return []string{sasl.Plain}
}

func (s *testSMTPSession) Auth(string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(_, username, password string) error {
		if username != s.server.username || password != s.server.password {
			return smtpReply(535, "authentication credentials invalid")
		}
		s.server.mu.Lock()
		s.server.authUsers = append(s.server.authUsers, username)
		s.server.mu.Unlock()
		return nil
	}), nil
}

func (s *testSMTPSession) Mail(from string, _ *smtp.MailOptions) error {
	s.server.mu.Lock()
	defer s.server.mu.Unlock()
	if s.server.username != "" && len(s.server.authUsers) == 0 {
		return smtpReply(530, "authentication required")
	}
	s.from = from
	return nil
}

func (s *testSMTPSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.server.mu.Lock()
	defer s.server.mu.Unlock()
	if queue := s.server.rcptReplies[to]; len(queue) > 0 {
		s.server.rcptReplies[to] = queue[1:]
		if queue[0] != nil {
			return queue[0]
		}
	}
	s.to = append(s.to, to)
	return nil
}

func (s *testSMTPSession) Data(r io.Reader) error {
	raw, err := io.ReadAll(r)
	if err != nil {
		return err
	}

	s.server.mu.Lock()
	defer s.server.mu.Unlock()
	s.server.dataCalls++
	if len(s.server.dataReplies) > 0 {
		reply := s.server.dataReplies[0]
		s.server.dataReplies = s.server.dataReplies[1:]
		if reply != nil {
			return reply
		}
	}

	m := receivedMessage{from: s.from, to: append([]string(nil), s.to...), raw: raw}
	s.server.messages = append(s.server.messages, m)
	select {
	case s.server.received <- m:
	default:
		// Tests that wait for messages read far fewer than the buffer holds, and
		// accepted() still has every message.
	}
	return nil
}

func (s *testSMTPSession) Reset() {
	s.from = ""
	s.to = nil
}

func (s *testSMTPSession) Logout() error { return nil }

// reserveAddress returns a loopback address on which nothing listens, so connecting
// to it is refused until a test starts a server there.
func reserveAddress(t *testing.T) string {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := listener.Addr().String()
	require.NoError(t, listener.Close())
	return addr
}

// stallingListener accepts connections and sends nothing on them until release is
// called. Connections accepted after that are forwarded to target.
type stallingListener struct {
	listener net.Listener
	target   string
	accepted chan struct{}

	released atomic.Bool
	mu       sync.Mutex
	conns    []net.Conn
	wg       sync.WaitGroup
}

func startStallingListener(t *testing.T, target string) *stallingListener {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s := &stallingListener{listener: listener, target: target, accepted: make(chan struct{}, 100)}

	s.wg.Add(1)
	go s.acceptLoop()
	t.Cleanup(func() {
		_ = listener.Close()
		s.mu.Lock()
		for _, c := range s.conns {
			_ = c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func (s *stallingListener) addr() string { return s.listener.Addr().String() }

func (s *stallingListener) release() { s.released.Store(true) }

func (s *stallingListener) acceptLoop() {
	defer s.wg.Done()
	for {
		conn, err := s.listener.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conns = append(s.conns, conn)
		s.mu.Unlock()
		s.accepted <- struct{}{}

		if s.released.Load() {
			s.wg.Add(1)
			go s.forward(conn)
		}
	}
}

func (s *stallingListener) forward(client net.Conn) {
	defer s.wg.Done()
	defer client.Close()
	upstream, err := net.Dial("tcp", s.target)
	if err != nil {
		return
	}
	s.mu.Lock()
	s.conns = append(s.conns, upstream)
	s.mu.Unlock()
	defer upstream.Close()

	copied := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(upstream, client); copied <- struct{}{} }()
	go func() { _, _ = io.Copy(client, upstream); copied <- struct{}{} }()
	<-copied
	_ = client.Close()
	_ = upstream.Close()
	<-copied
}

// selfSignedTLS returns a server configuration with a certificate for 127.0.0.1 and a
// client configuration that trusts it.
func selfSignedTLS(t *testing.T) (server *tls.Config, client *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	template := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)

	pool := x509.NewCertPool()
	pool.AddCert(cert)
	server = &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		MinVersion:   tls.VersionTLS12,
	}
	client = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	return server, client
}

// trustTLS makes the notifier trust the test certificate.
func trustTLS(t *testing.T, n *Notifier, client *tls.Config) {
	t.Helper()
	transport, ok := n.transport.(*smtpTransport)
	require.True(t, ok, "the notifier does not send through SMTP")
	transport.tlsConfig = client
}
