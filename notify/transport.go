package notify

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	gomail "github.com/wneessen/go-mail"
	"github.com/wneessen/go-mail/smtp"
)

// transport opens a session for each delivery round.
type transport interface {
	newSession() session
}

// session delivers the messages of one round.
type session interface {
	// send delivers msg, the copy of n for recipient r.
	send(ctx context.Context, n *notification, r recipient, msg *gomail.Msg) error
	close()
}

// smtpTransport sends through an SMTP server, one connection per round.
type smtpTransport struct {
	settings       smtpSettings
	connectTimeout time.Duration
	sendTimeout    time.Duration

	// tlsConfig, when set, replaces the default TLS configuration, for example with one
	// that trusts the certificate of a test server. ServerName defaults to the URL's host.
	tlsConfig *tls.Config
}

func (t *smtpTransport) newSession() session {
	return &smtpSession{transport: t}
}

// smtpSession connects on its first message and reuses the connection for the rest of
// the round. After a connection failure it returns that error for every later message
// without connecting again, so that an unreachable server costs one timeout per round.
type smtpSession struct {
	transport *smtpTransport
	client    *gomail.Client
	conn      *smtp.Client
	broken    error
}

func (s *smtpSession) send(ctx context.Context, _ *notification, _ recipient, msg *gomail.Msg) error {
	if s.broken != nil {
		return s.broken
	}
	if s.conn == nil {
		if err := s.connect(ctx); err != nil {
			s.broken = err
			return err
		}
	}

	err := s.client.SendWithSMTPClient(s.conn, msg)
	if err == nil || msg.IsDelivered() {
		// A failed RSET after the server accepted the data does not undo the delivery.
		return nil
	}
	if !isSMTPReply(err) {
		s.broken = fmt.Errorf("the connection to %s failed while sending an earlier message: %w",
			s.transport.settings.redactedURL, err)
		s.close()
	}
	return err
}

func (s *smtpSession) connect(ctx context.Context) error {
	t := s.transport

	tlsConfig := &tls.Config{MinVersion: tls.VersionTLS12}
	if t.tlsConfig != nil {
		tlsConfig = t.tlsConfig.Clone()
	}
	if tlsConfig.ServerName == "" {
		tlsConfig.ServerName = t.settings.host
	}

	opts := []gomail.Option{
		gomail.WithPort(t.settings.port),
		gomail.WithTimeout(t.connectTimeout),
		gomail.WithTLSConfig(tlsConfig),
	}
	if t.settings.implicitTLS {
		opts = append(opts, gomail.WithSSL())
	} else {
		opts = append(opts, gomail.WithTLSPolicy(t.settings.tlsPolicy))
	}
	if t.settings.username != "" {
		// Auto-discovery picks the strongest mechanism that the server offers, and it
		// never sends the password in clear text over an unencrypted connection.
		opts = append(opts,
			gomail.WithSMTPAuth(gomail.SMTPAuthAutoDiscover),
			gomail.WithUsername(t.settings.username),
			gomail.WithPassword(t.settings.password))
	}

	client, err := gomail.NewClient(t.settings.host, opts...)
	if err != nil {
		return fmt.Errorf("configuring SMTP client for %s: %w", t.settings.redactedURL, err)
	}

	// go-mail applies its timeout to the dial and as the deadline for the handshake.
	conn, err := client.DialToSMTPClientWithContext(ctx)
	if err != nil {
		return fmt.Errorf("connecting to SMTP server %s (timeout %s): %w",
			t.settings.redactedURL, t.connectTimeout, err)
	}

	// From here on, the timeout is the deadline that go-mail sets before each message.
	// Options are plain functions on the client, so this one changes it in place.
	if err := gomail.WithTimeout(t.sendTimeout)(client); err != nil {
		_ = client.CloseWithSMTPClient(conn)
		return fmt.Errorf("setting SMTP send timeout %s: %w", t.sendTimeout, err)
	}

	s.client = client
	s.conn = conn
	return nil
}

// close sends QUIT, which is bounded by the send timeout like any other command.
func (s *smtpSession) close() {
	if s.conn == nil {
		return
	}
	_ = s.client.CloseWithSMTPClient(s.conn)
	s.conn = nil
}

// isSMTPReply reports whether err is an SMTP error reply (4xx or 5xx) to a command of
// one message, after which the connection can still be used.
func isSMTPReply(err error) bool {
	var sendErr *gomail.SendError
	if !errors.As(err, &sendErr) {
		return false
	}
	code := sendErr.ErrorCode()
	return code >= 400 && code < 600
}

// isPermanent reports whether retrying err cannot succeed: a 5xx reply to MAIL FROM,
// RCPT TO or DATA, or a message that cannot be sent at all. Errors while connecting,
// 5xx replies to the greeting, STARTTLS or AUTH included, are not permanent: they come
// from the server or its settings, and can be fixed while the mail waits.
func isPermanent(err error) bool {
	var sendErr *gomail.SendError
	if !errors.As(err, &sendErr) {
		return false
	}
	switch sendErr.Reason {
	case gomail.ErrSMTPMailFrom, gomail.ErrSMTPRcptTo, gomail.ErrSMTPData, gomail.ErrSMTPDataClose:
		code := sendErr.ErrorCode()
		return code >= 500 && code < 600
	case gomail.ErrGetSender, gomail.ErrGetRcpts, gomail.ErrNoUnencoded:
		return true
	default:
		return false
	}
}

// fileTransport writes each message as an .eml file (RFC 5322), for development and
// tests without an SMTP server.
type fileTransport struct {
	dir string
}

func (t *fileTransport) newSession() session {
	return &fileSession{dir: t.dir}
}

type fileSession struct {
	dir string
}

// send writes msg under a name derived from the notification and the recipient, so a
// retry overwrites the file of an earlier attempt. The file appears complete or not
// at all because it is renamed into place.
func (s *fileSession) send(_ context.Context, n *notification, r recipient, msg *gomail.Msg) error {
	if err := os.MkdirAll(s.dir, 0o750); err != nil {
		return fmt.Errorf("creating mail directory: %w", err)
	}

	sum := sha256.Sum256([]byte(strings.ToLower(r.Address)))
	name := fmt.Sprintf("%s-%s-%s-%s.eml",
		n.EnqueuedAt.UTC().Format("20060102-150405"), fileNamePart(n.Task), n.ID, hex.EncodeToString(sum[:4]))

	tmp, err := os.CreateTemp(s.dir, ".writing-*.eml")
	if err != nil {
		return fmt.Errorf("creating mail file: %w", err)
	}
	defer func() { _ = os.Remove(tmp.Name()) }()

	if _, err := msg.WriteTo(tmp); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("writing mail file %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("closing mail file %s: %w", tmp.Name(), err)
	}
	if err := os.Chmod(tmp.Name(), 0o640); err != nil {
		return fmt.Errorf("setting mode of mail file %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(s.dir, name)); err != nil {
		return fmt.Errorf("renaming mail file to %s: %w", name, err)
	}
	return nil
}

func (s *fileSession) close() {}

// fileNamePart keeps the letters, digits, '-' and '_' of a task name, at most 40 bytes.
func fileNamePart(task string) string {
	var b strings.Builder
	for _, r := range task {
		if b.Len() >= 40 {
			break
		}
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			b.WriteRune(r)
		default:
			b.WriteRune('_')
		}
	}
	if b.Len() == 0 {
		return "task"
	}
	return b.String()
}
