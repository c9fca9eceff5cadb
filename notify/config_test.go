package notify

import (
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	gomail "github.com/wneessen/go-mail"
)

func TestNewRejectsInvalidConfig(t *testing.T) {
	t.Parallel()
	valid := Config{SMTPURL: "smtp://mail.example.com", From: "bolt@example.com", Env: EnvProduction}

	cases := []struct {
		name   string
		change func(*Config)
		want   string
	}{
		{"unknown env", func(c *Config) { c.Env = "staging" }, `invalid Env "staging"`},
		{"empty env", func(c *Config) { c.Env = "" }, `invalid Env ""`},
		{"scheme", func(c *Config) { c.SMTPURL = "ftp://mail.example.com" }, `scheme "ftp" is not supported`},
		{"missing host", func(c *Config) { c.SMTPURL = "smtp://:25" }, "missing host name"},
		{"port", func(c *Config) { c.SMTPURL = "smtp://mail.example.com:99999" }, `port "99999" is not a number from 1 to 65535`},
		{"path", func(c *Config) { c.SMTPURL = "smtp://mail.example.com/inbox" }, `unexpected path "/inbox"`},
		{"unknown parameter", func(c *Config) { c.SMTPURL = "smtp://mail.example.com?tls=yes" }, `unknown query parameter "tls"`},
		{"starttls value", func(c *Config) { c.SMTPURL = "smtp://mail.example.com?starttls=maybe" }, `starttls="maybe"`},
		{"starttls with smtps", func(c *Config) { c.SMTPURL = "smtps://mail.example.com?starttls=required" }, "starttls applies to smtp:// only"},
		{"missing from", func(c *Config) { c.From = "" }, "missing From"},
		{"invalid from", func(c *Config) { c.From = "bolt at example" }, `invalid From "bolt at example"`},
		{"from with line break", func(c *Config) { c.From = "bolt@example.com\r\nBcc: x@example.com" }, "control character"},
		{"invalid default recipient", func(c *Config) { c.DefaultTo = "ops@example.com, nobody" }, `invalid DefaultTo "ops@example.com, nobody"`},
		{"missing mail dir", func(c *Config) { c.SMTPURL = ""; c.Env = EnvDevelopment }, "missing MailDir"},
		{"negative timeout", func(c *Config) { c.SendTimeout = -time.Second }, "invalid SendTimeout -1s"},
		{"negative retry", func(c *Config) { c.RetryFor = -time.Hour }, "invalid RetryFor -1h0m0s"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := valid
			tc.change(&cfg)
			_, err := New(embeddedClient.Database("notify_unused"), cfg, zerolog.Nop())
			require.Error(t, err)
			require.Contains(t, err.Error(), tc.want)
			require.Contains(t, err.Error(), "notify: ")
		})
	}
}

func TestSMTPURLErrorsHidePassword(t *testing.T) {
	t.Parallel()
	urls := []string{
		"smtp://user:pa%zzss@mail.example.com",    // invalid escape inside the password
		"smtp://user:pa ss@mail.example.com:port", // space and invalid port
		"smtp://user:passw0rd@mail.example.com:0",
		"ftp://user:passw0rd@mail.example.com",
	}
	for _, raw := range urls {
		_, err := parseSMTPURL(raw)
		require.Error(t, err, raw)
		require.NotContains(t, err.Error(), "pa%zzss", raw)
		require.NotContains(t, err.Error(), "pa ss", raw)
		require.NotContains(t, err.Error(), "passw0rd", raw)
		require.Contains(t, err.Error(), "xxxxx", raw)
	}
}

func TestParseSMTPURL(t *testing.T) {
	t.Parallel()
	cases := []struct {
		url         string
		host        string
		port        int
		implicitTLS bool
		policy      gomail.TLSPolicy
		username    string
		password    string
	}{
		{"smtp://mail.example.com", "mail.example.com", 587, false, gomail.TLSOpportunistic, "", ""},
		{"smtp://127.0.0.1:25", "127.0.0.1", 25, false, gomail.TLSOpportunistic, "", ""},
		{"smtp://user:p%40ss@mail.example.com:587", "mail.example.com", 587, false, gomail.TLSMandatory, "user", "p@ss"},
		{"smtp://user:pass@localhost:2525", "localhost", 2525, false, gomail.TLSOpportunistic, "user", "pass"},
		{"smtp://user:pass@mail.example.com?starttls=opportunistic", "mail.example.com", 587, false, gomail.TLSOpportunistic, "user", "pass"},
		{"smtp://mail.example.com?starttls=required", "mail.example.com", 587, false, gomail.TLSMandatory, "", ""},
		{"smtp://[::1]:25?starttls=none", "::1", 25, false, gomail.NoTLS, "", ""},
		{"smtps://mail.example.com", "mail.example.com", 465, true, gomail.NoTLS, "", ""},
	}
	for _, tc := range cases {
		s, err := parseSMTPURL(tc.url)
		require.NoError(t, err, tc.url)
		require.Equal(t, tc.host, s.host, tc.url)
		require.Equal(t, tc.port, s.port, tc.url)
		require.Equal(t, tc.implicitTLS, s.implicitTLS, tc.url)
		require.Equal(t, tc.policy, s.tlsPolicy, tc.url)
		require.Equal(t, tc.username, s.username, tc.url)
		require.Equal(t, tc.password, s.password, tc.url)
		if tc.password != "" {
			require.NotContains(t, s.redactedURL, tc.password, tc.url)
		}
	}
}

func TestNewAppliesDefaults(t *testing.T) {
	t.Parallel()
	n, err := New(embeddedClient.Database("notify_unused"), Config{Env: EnvTest, MailDir: t.TempDir(), DefaultTo: "a@example.com, b@example.com"}, zerolog.Nop())
	require.NoError(t, err)
	require.Equal(t, DefaultRetryFor, n.cfg.RetryFor)
	require.Equal(t, DefaultConnectTimeout, n.cfg.ConnectTimeout)
	require.Equal(t, DefaultSendTimeout, n.cfg.SendTimeout)
	require.NotEmpty(t, n.cfg.Host)
	require.Equal(t, "bolt@localhost", n.from.Address)
	require.Len(t, n.defaultTo, 2)
	require.Equal(t, modeFile, n.mode)
}

func TestNewRejectsNilDatabase(t *testing.T) {
	t.Parallel()
	_, err := New(nil, Config{Env: EnvTest, MailDir: t.TempDir()}, zerolog.Nop())
	require.EqualError(t, err, "notify: the database is nil")
}
