package notify

import (
	"errors"
	"fmt"
	"net"
	"net/mail"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	gomail "github.com/wneessen/go-mail"
)

// Environment names accepted in Config.Env.
const (
	EnvProduction  = "production"
	EnvDevelopment = "development"
	EnvTest        = "test"
)

// Defaults applied by New to zero Config fields.
const (
	DefaultRetryFor       = 24 * time.Hour
	DefaultConnectTimeout = 10 * time.Second
	DefaultSendTimeout    = 30 * time.Second

	// defaultFileFrom is the sender of .eml files written when no SMTP server is set.
	defaultFileFrom = "bolt@localhost"
)

// Config contains the mail settings that Bolt passes to New.
type Config struct {
	// SMTPURL is the SMTP server. smtp://user:pass@host:587 uses STARTTLS when the server
	// offers it, smtps://host:465 uses implicit TLS. The query parameter starttls sets the
	// STARTTLS policy of smtp:// URLs: "required", "opportunistic" or "none". Without it,
	// STARTTLS is required when the URL has credentials and the host is not a loopback
	// address, and opportunistic otherwise. The default port is 587 for smtp:// and 465
	// for smtps://. An empty SMTPURL writes .eml files to MailDir outside production and
	// drops mails in production.
	SMTPURL string

	// From is the sender address. It is required when SMTPURL is set.
	From string

	// DefaultTo is the recipient, or comma-separated recipients, for tasks whose
	// document has no usable email field.
	DefaultTo string

	// Env is "production", "development" or "test".
	Env string

	// MailDir is the directory for .eml files when SMTPURL is empty and Env is not
	// production.
	MailDir string

	// RetryFor is how long a mail that fails with a temporary error is retried, counted
	// from its first delivery attempt. Zero means DefaultRetryFor.
	RetryFor time.Duration

	// ConnectTimeout bounds the TCP connection and the SMTP handshake (greeting, EHLO,
	// STARTTLS, AUTH). Zero means DefaultConnectTimeout.
	ConnectTimeout time.Duration

	// SendTimeout bounds the sending of one message on an open connection. Zero means
	// DefaultSendTimeout.
	SendTimeout time.Duration

	// Host is the machine name shown in mails. Empty means os.Hostname.
	Host string
}

// smtpSettings is the parsed form of Config.SMTPURL.
type smtpSettings struct {
	host        string
	port        int
	implicitTLS bool
	tlsPolicy   gomail.TLSPolicy
	username    string
	password    string

	// redactedURL is the URL with the password replaced, safe for logs and errors.
	redactedURL string
}

// normalize validates cfg and fills in defaults. Errors name the setting and the fix.
func normalize(cfg Config) (Config, *smtpSettings, *mail.Address, error) {
	switch cfg.Env {
	case EnvProduction, EnvDevelopment, EnvTest:
	default:
		return cfg, nil, nil, fmt.Errorf("invalid Env %q: use %q, %q or %q",
			cfg.Env, EnvProduction, EnvDevelopment, EnvTest)
	}

	var smtp *smtpSettings
	if cfg.SMTPURL != "" {
		parsed, err := parseSMTPURL(cfg.SMTPURL)
		if err != nil {
			return cfg, nil, nil, err
		}
		smtp = &parsed
	}

	if cfg.From == "" {
		if smtp != nil {
			return cfg, nil, nil, errors.New("missing From: set the sender address, " +
				"for example bolt@example.com, when SMTPURL is set")
		}
		cfg.From = defaultFileFrom
	}
	from, err := parseSingleAddress(cfg.From)
	if err != nil {
		return cfg, nil, nil, fmt.Errorf("invalid From %q: %w", cfg.From, err)
	}

	if cfg.DefaultTo != "" {
		if _, err := parseAddressList(cfg.DefaultTo); err != nil {
			return cfg, nil, nil, fmt.Errorf("invalid DefaultTo %q: %w", cfg.DefaultTo, err)
		}
	}

	if smtp == nil && cfg.Env != EnvProduction && cfg.MailDir == "" {
		return cfg, nil, nil, errors.New("missing MailDir: set the directory for .eml files " +
			"(for example <app>/tmp/mail) or set SMTPURL")
	}

	durations := []struct {
		name  string
		value *time.Duration
		def   time.Duration
	}{
		{"RetryFor", &cfg.RetryFor, DefaultRetryFor},
		{"ConnectTimeout", &cfg.ConnectTimeout, DefaultConnectTimeout},
		{"SendTimeout", &cfg.SendTimeout, DefaultSendTimeout},
	}
	for _, d := range durations {
		if *d.value < 0 {
			return cfg, nil, nil, fmt.Errorf("invalid %s %s: use a positive duration, or zero for the default %s",
				d.name, *d.value, d.def)
		}
		if *d.value == 0 {
			*d.value = d.def
		}
	}

	if cfg.Host == "" {
		cfg.Host, err = os.Hostname()
		if err != nil {
			cfg.Host = "unknown host"
		}
	}
	cfg.Host = sanitizeHeader(cfg.Host)

	return cfg, smtp, from, nil
}

// parseSMTPURL parses Config.SMTPURL. Its errors never contain the password.
func parseSMTPURL(raw string) (smtpSettings, error) {
	u, err := url.Parse(raw)
	if err != nil {
		// url.Parse errors quote the URL, and even the inner error may quote part of the
		// password (an invalid escape), so that error is shown only without credentials.
		if strings.Contains(raw, "@") {
			return smtpSettings{}, fmt.Errorf("invalid SMTPURL %s: it is not a valid URL "+
				"(percent-encode special characters in the user name and password)", maskUserinfo(raw))
		}
		var urlErr *url.Error
		if errors.As(err, &urlErr) {
			err = urlErr.Err
		}
		return smtpSettings{}, fmt.Errorf("invalid SMTPURL %s: %w", raw, err)
	}
	redacted := u.Redacted()
	invalid := func(format string, args ...any) error {
		return fmt.Errorf("invalid SMTPURL %s: %s", redacted, fmt.Sprintf(format, args...))
	}

	s := smtpSettings{redactedURL: redacted}
	switch u.Scheme {
	case "smtp":
		s.port = gomail.DefaultPortTLS
	case "smtps":
		s.port = gomail.DefaultPortSSL
		s.implicitTLS = true
	default:
		return s, invalid("scheme %q is not supported: use smtp:// (STARTTLS) or smtps:// (implicit TLS)", u.Scheme)
	}

	s.host = u.Hostname()
	if s.host == "" {
		return s, invalid("missing host name, for example smtp://mail.example.com:587")
	}
	if p := u.Port(); p != "" {
		port, err := strconv.Atoi(p)
		if err != nil || port < 1 || port > 65535 {
			return s, invalid("port %q is not a number from 1 to 65535", p)
		}
		s.port = port
	}
	if u.Path != "" && u.Path != "/" {
		return s, invalid("unexpected path %q: the URL names only a server", u.Path)
	}

	if u.User != nil {
		s.username = u.User.Username()
		s.password, _ = u.User.Password()
	}

	policy, err := startTLSPolicy(u, s)
	if err != nil {
		return s, invalid("%v", err)
	}
	s.tlsPolicy = policy

	return s, nil
}

// startTLSPolicy reads the starttls query parameter, the only one an SMTP URL may carry.
func startTLSPolicy(u *url.URL, s smtpSettings) (gomail.TLSPolicy, error) {
	query := u.Query()
	for key := range query {
		if key != "starttls" {
			return gomail.NoTLS, fmt.Errorf("unknown query parameter %q: the only one supported is starttls", key)
		}
	}

	value := query.Get("starttls")
	if s.implicitTLS {
		if query.Has("starttls") {
			return gomail.NoTLS, errors.New("starttls applies to smtp:// only: smtps:// always uses TLS")
		}
		return gomail.NoTLS, nil
	}

	switch value {
	case "required":
		return gomail.TLSMandatory, nil
	case "opportunistic":
		return gomail.TLSOpportunistic, nil
	case "none":
		return gomail.NoTLS, nil
	case "":
		// Without STARTTLS, a man in the middle could read the mails of a remote server,
		// so credentials for a remote server imply that TLS is expected.
		if s.username != "" && !isLoopbackHost(s.host) {
			return gomail.TLSMandatory, nil
		}
		return gomail.TLSOpportunistic, nil
	default:
		return gomail.NoTLS, fmt.Errorf("starttls=%q: use required, opportunistic or none", value)
	}
}

func isLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// maskUserinfo hides everything between the scheme and the last "@" of a URL that
// url.Parse rejected, and raw must contain "@". A password may contain characters that
// make the authority impossible to find, so the mask errs towards hiding too much.
func maskUserinfo(raw string) string {
	at := strings.LastIndex(raw, "@")
	start := strings.Index(raw, "://")
	if start < 0 || at < start {
		return "xxxxx" + raw[at:]
	}
	return raw[:start+3] + "xxxxx" + raw[at:]
}
