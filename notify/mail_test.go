package notify

import (
	"context"
	"net/mail"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
	"go.mongodb.org/mongo-driver/v2/bson"
)

func TestSuccessMailContent(t *testing.T) {
	t.Parallel()
	log, _ := newLogger(t)
	db := newDatabase(t, embeddedClient)
	server := startSMTPServer(t, smtpOptions{})
	n := newNotifier(t, db, Config{SMTPURL: server.url(), DefaultTo: "ops@example.com"}, log)
	startRun(t, n)

	o := successOutcome(bson.M{"email": "ann@example.com", "report": "daily", "rows": int32(42)})
	require.NoError(t, n.Enqueue(context.Background(), o))

	m := server.waitMessage(t)
	taskID := o.TaskID.(bson.ObjectID).Hex()
	require.Equal(t, "bolt@example.com", m.from)
	require.Equal(t, []string{"ann@example.com"}, m.to)
	require.Equal(t, "[Bolt] send_report succeeded on worker-1.example.com", m.subject(t))

	header := m.parse(t).Header
	require.Equal(t, "auto-generated", header.Get("Auto-Submitted"))
	require.Equal(t, "send_report", header.Get("X-Bolt-Task"))
	require.Equal(t, taskID, header.Get("X-Bolt-Task-Id"))
	require.True(t, strings.HasSuffix(header.Get("Message-ID"), ".bolt@worker-1.example.com>"), header.Get("Message-ID"))

	body := m.body(t)
	require.True(t, strings.HasPrefix(body, "Task send_report succeeded.\n"), body)
	require.Contains(t, body, "Task ID:     "+taskID+"\n")
	require.Contains(t, body, "Host:        worker-1.example.com\n")
	require.Contains(t, body, "Started:     2026-12-04T19:45:03Z\n")
	require.Contains(t, body, "Duration:    1.5s\n")
	require.Contains(t, body, `"report": "daily"`)
	require.Contains(t, body, `"rows": 42`)
	require.NotContains(t, body, "Exception:")

	waitUntilEmpty(t, db)
}

func TestFailureMailContent(t *testing.T) {
	t.Parallel()
	log, _ := newLogger(t)
	db := newDatabase(t, embeddedClient)
	server := startSMTPServer(t, smtpOptions{})
	n := newNotifier(t, db, Config{SMTPURL: server.url(), DefaultTo: "Ops <ops@example.com>"}, log)
	startRun(t, n)

	o := failureOutcome(bson.M{"report": "daily"})
	require.NoError(t, n.Enqueue(context.Background(), o))

	m := server.waitMessage(t)
	require.Equal(t, []string{"ops@example.com"}, m.to)
	require.Equal(t, "[Bolt] send_report failed on worker-1.example.com: RuntimeError: report server returned 502",
		m.subject(t))

	to, err := mail.ParseAddress(m.parse(t).Header.Get("To"))
	require.NoError(t, err)
	require.Equal(t, "Ops", to.Name)

	body := m.body(t)
	require.True(t, strings.HasPrefix(body, "Task send_report failed.\n"), body)
	require.Contains(t, body, "Exit status: exit status 1\n")
	require.Contains(t, body, "Timed out:   no\n")
	require.Contains(t, body, "Exception:\nRuntimeError: report server returned 502\nsecond line of the message\n")
	require.Contains(t, body, "Backtrace:\nlib/bolt/tasks/send_report.rb:12:in `run'\nlib/bolt/runner.rb:40:in `call'\n")
	require.Contains(t, body, "Stderr (end):\nwarning: retrying\nfatal: giving up\n")
	require.Contains(t, body, `"report": "daily"`)
}

func TestFailureSubjectWithoutException(t *testing.T) {
	t.Parallel()
	log, _ := newLogger(t)
	n := newNotifier(t, newDatabase(t, embeddedClient), Config{MailDir: t.TempDir()}, log)

	timedOut := failureOutcome(nil)
	timedOut.Ex = ""
	timedOut.TimedOut = true
	require.Equal(t, "[Bolt] send_report failed on worker-1.example.com: timed out", n.compose(timedOut, nil).subject)

	signalled := failureOutcome(nil)
	signalled.Ex = ""
	signalled.ExitStatus = "signal SIGSEGV"
	require.Equal(t, "[Bolt] send_report failed on worker-1.example.com: signal SIGSEGV", n.compose(signalled, nil).subject)

	unnamed := failureOutcome(bson.M{"_id": "job-7", "task": ""})
	unnamed.Ex = ""
	unnamed.ExitStatus = ""
	require.Equal(t, "[Bolt] with ID job-7 failed on worker-1.example.com: no exception recorded",
		n.compose(unnamed, nil).subject)
}

func TestEmailOverrides(t *testing.T) {
	t.Parallel()
	log, _ := newLogger(t)
	db := newDatabase(t, embeddedClient)
	server := startSMTPServer(t, smtpOptions{})
	n := newNotifier(t, db, Config{SMTPURL: server.url(), DefaultTo: "ops@example.com"}, log)
	startRun(t, n)

	// Embedded documents come from the driver as bson.D, and handed-back fields may
	// come as bson.M, so the test uses both.
	opts := bson.D{{Key: "email", Value: bson.M{
		"success": bson.D{{Key: "subject", Value: "Report ready"}, {Key: "body", Value: "42 rows exported."}},
		"failure": bson.M{"subject": "Report failed", "body": "Call the data team."},
	}}}

	require.NoError(t, n.Enqueue(context.Background(), successOutcome(bson.M{"opts": opts})))
	success := server.waitMessage(t)
	require.Equal(t, "Report ready", success.subject(t))
	require.True(t, strings.HasPrefix(success.body(t), "42 rows exported.\n\n"), success.body(t))
	require.Contains(t, success.body(t), "Task ID:")

	require.NoError(t, n.Enqueue(context.Background(), failureOutcome(bson.M{"opts": opts})))
	failure := server.waitMessage(t)
	require.Equal(t, "Report failed", failure.subject(t))
	require.True(t, strings.HasPrefix(failure.body(t), "Call the data team.\n\n"), failure.body(t))
	require.Contains(t, failure.body(t), "Exception:\nRuntimeError: report server returned 502")
}

func TestEmailOverrideOfWrongTypeIsIgnored(t *testing.T) {
	t.Parallel()
	log, logs := newLogger(t)
	n := newNotifier(t, newDatabase(t, embeddedClient), Config{MailDir: t.TempDir(), DefaultTo: "ops@example.com"}, log)

	o := successOutcome(bson.M{"opts": bson.M{"email": bson.M{"success": bson.M{"subject": int32(5)}}}})
	c := n.compose(o, nil)
	require.Equal(t, "[Bolt] send_report succeeded on worker-1.example.com", c.subject)
	require.Contains(t, c.body, "opts.email.success.subject is a int32, not a string, so the default subject is used.")

	require.NoError(t, n.Enqueue(context.Background(), o))
	require.Contains(t, logs.String(), "notify: ignoring an invalid email option of the task")
}

func TestSilentTask(t *testing.T) {
	t.Parallel()
	log, _ := newLogger(t)
	db := newDatabase(t, embeddedClient)
	server := startSMTPServer(t, smtpOptions{})
	n := newNotifier(t, db, Config{SMTPURL: server.url(), DefaultTo: "ops@example.com"}, log)
	startRun(t, n)
	ctx := context.Background()

	require.NoError(t, n.Enqueue(ctx, successOutcome(bson.M{"silent": true})))
	keptFailure := failureOutcome(bson.M{"silent": true})
	keptFailure.Kept = true
	require.NoError(t, n.Enqueue(ctx, keptFailure))
	require.Zero(t, countNotifications(t, db), "a silent success or a kept silent failure was stored")

	// Only the boolean true silences a task.
	require.NoError(t, n.Enqueue(ctx, successOutcome(bson.M{"silent": "true", "task": "string_silent"})))
	require.NoError(t, n.Enqueue(ctx, failureOutcome(bson.M{"silent": true, "task": "silent_failure"})))

	subjects := map[string]bool{}
	for range 2 {
		subjects[server.waitMessage(t).subject(t)] = true
	}
	require.True(t, subjects["[Bolt] string_silent succeeded on worker-1.example.com"], subjects)
	require.True(t, subjects["[Bolt] silent_failure failed on worker-1.example.com: RuntimeError: report server returned 502"], subjects)

	waitUntilEmpty(t, db)
	require.Len(t, server.accepted(), 2)
}

func TestRecipientList(t *testing.T) {
	t.Parallel()
	log, _ := newLogger(t)
	db := newDatabase(t, embeddedClient)
	server := startSMTPServer(t, smtpOptions{})
	n := newNotifier(t, db, Config{SMTPURL: server.url(), DefaultTo: "ops@example.com"}, log)
	startRun(t, n)

	emails := bson.A{"ann@example.com", "Bea <bea@example.com>, carl@example.com", "ANN@example.com", ""}
	require.NoError(t, n.Enqueue(context.Background(), successOutcome(bson.M{"email": emails})))

	got := map[string]string{}
	for range 3 {
		m := server.waitMessage(t)
		require.Len(t, m.to, 1, "each recipient gets a separate message")
		got[m.to[0]] = m.parse(t).Header.Get("To")
	}
	require.Equal(t, map[string]string{
		"ann@example.com":  "<ann@example.com>",
		"bea@example.com":  `"Bea" <bea@example.com>`,
		"carl@example.com": "<carl@example.com>",
	}, got)

	waitUntilEmpty(t, db)
	require.Len(t, server.accepted(), 3, "the duplicate address got a second message")
}

func TestUnicodeSubjectAndAddress(t *testing.T) {
	t.Parallel()
	log, _ := newLogger(t)
	db := newDatabase(t, embeddedClient)
	server := startSMTPServer(t, smtpOptions{})
	n := newNotifier(t, db, Config{SMTPURL: server.url(), From: "Bolt Überwachung <bolt@example.com>"}, log)
	startRun(t, n)

	o := successOutcome(bson.M{
		"email": "Jörg Müller <jörg@exämple.de>",
		"opts":  bson.M{"email": bson.M{"success": bson.M{"subject": "Größe geprüft ✓ 完了"}}},
	})
	require.NoError(t, n.Enqueue(context.Background(), o))

	m := server.waitMessage(t)
	require.Equal(t, []string{"jörg@exämple.de"}, m.to)
	require.Equal(t, "Größe geprüft ✓ 完了", m.subject(t))

	header := m.parse(t).Header
	to, err := header.AddressList("To")
	require.NoError(t, err)
	require.Equal(t, []*mail.Address{{Name: "Jörg Müller", Address: "jörg@exämple.de"}}, to)
	from, err := header.AddressList("From")
	require.NoError(t, err)
	require.Equal(t, "Bolt Überwachung", from[0].Name)

	for _, line := range strings.Split(string(m.raw), "\r\n") {
		if line == "" {
			break // end of the header
		}
		require.False(t, strings.HasPrefix(line, "Subject:") && strings.ContainsFunc(line, func(r rune) bool { return r > 127 }),
			"the subject is not encoded: %q", line)
	}
}

func TestHeaderInjectionInSubject(t *testing.T) {
	t.Parallel()
	log, _ := newLogger(t)
	db := newDatabase(t, embeddedClient)
	server := startSMTPServer(t, smtpOptions{})
	n := newNotifier(t, db, Config{SMTPURL: server.url(), DefaultTo: "ops@example.com"}, log)
	startRun(t, n)

	o := successOutcome(bson.M{
		"task": "evil\r\nX-Injected: yes",
		"opts": bson.M{"email": bson.M{"success": bson.M{"subject": "Done\r\nBcc: evil@example.com\r\n\r\nbody"}}},
	})
	require.NoError(t, n.Enqueue(context.Background(), o))

	m := server.waitMessage(t)
	require.Equal(t, []string{"ops@example.com"}, m.to)
	require.Equal(t, "Done Bcc: evil@example.com body", m.subject(t))

	header := m.parse(t).Header
	require.Empty(t, header.Get("Bcc"))
	require.Empty(t, header.Get("X-Injected"))
	require.Equal(t, "evil X-Injected: yes", header.Get("X-Bolt-Task"))
}

func TestHeaderInjectionInAddress(t *testing.T) {
	t.Parallel()
	log, logs := newLogger(t)
	db := newDatabase(t, embeddedClient)
	server := startSMTPServer(t, smtpOptions{})
	n := newNotifier(t, db, Config{SMTPURL: server.url(), DefaultTo: "ops@example.com"}, log)
	startRun(t, n)

	injected := "ann@example.com\r\nBcc: evil@example.com"
	require.NoError(t, n.Enqueue(context.Background(), failureOutcome(bson.M{"email": injected})))

	m := server.waitMessage(t)
	require.Equal(t, []string{"ops@example.com"}, m.to, "the mail must go to the default recipient only")
	require.Empty(t, m.parse(t).Header.Get("Bcc"))
	body := m.body(t)
	require.Contains(t, body, "This mail went to the default recipient because the task's email field has no valid address")
	require.Contains(t, body, `"ann@example.com\r\nBcc: evil@example.com" is not a valid address: it contains the control character '\r'`)
	require.Contains(t, logs.String(), "notify: skipping invalid values in the task's email field")
}

func TestInvalidAddressWithoutDefaultIsLogged(t *testing.T) {
	t.Parallel()
	log, logs := newLogger(t)
	db := newDatabase(t, embeddedClient)
	n := newNotifier(t, db, Config{MailDir: t.TempDir()}, log)

	o := failureOutcome(bson.M{"email": bson.A{"not an address", int32(7)}})
	require.NoError(t, n.Enqueue(context.Background(), o))

	require.Zero(t, countNotifications(t, db))
	output := logs.String()
	require.Contains(t, output, "notify: mail not sent because the task's email field has no valid address and no default recipient is set")
	require.Contains(t, output, o.TaskID.(bson.ObjectID).Hex())
	require.Contains(t, output, `email[1] is a int32, not a string`)
}

func TestNoRecipientNoMail(t *testing.T) {
	t.Parallel()
	log, logs := newLogger(t)
	db := newDatabase(t, embeddedClient)
	n := newNotifier(t, db, Config{MailDir: t.TempDir()}, log)
	require.Contains(t, logs.String(), "notify: no default recipient is set (DefaultTo)")

	require.NoError(t, n.Enqueue(context.Background(), failureOutcome(nil)))
	require.NoError(t, n.Enqueue(context.Background(), successOutcome(bson.M{"email": bson.A{}})))
	require.Zero(t, countNotifications(t, db))
}

func TestInvalidUTF8IsReplaced(t *testing.T) {
	t.Parallel()
	log, _ := newLogger(t)
	db := newDatabase(t, embeddedClient)
	server := startSMTPServer(t, smtpOptions{})
	n := newNotifier(t, db, Config{SMTPURL: server.url(), DefaultTo: "ops@example.com"}, log)
	startRun(t, n)

	o := failureOutcome(bson.M{"task": "bad\xffname"})
	o.Ex = "Encoding\xfe\xffError: \x1b[31mred\x1b[0m text"
	o.Stderr = "partial \xc3"
	require.NoError(t, n.Enqueue(context.Background(), o))

	m := server.waitMessage(t)
	subject := m.subject(t)
	body := m.body(t)
	require.True(t, utf8.ValidString(subject), subject)
	require.True(t, utf8.ValidString(body), body)
	require.Equal(t, "[Bolt] bad\uFFFDname failed on worker-1.example.com: Encoding\uFFFDError: red text", subject)
	require.Contains(t, body, "Exception:\nEncoding\uFFFDError: red text\n")
	require.Contains(t, body, "Stderr (end):\npartial \uFFFD\n")
}

func TestLongPartsAreCut(t *testing.T) {
	t.Parallel()
	log, _ := newLogger(t)
	n := newNotifier(t, newDatabase(t, embeddedClient), Config{MailDir: t.TempDir()}, log)

	backtrace := make([]string, 500)
	for i := range backtrace {
		backtrace[i] = "lib/deep.rb:1:in `recurse'"
	}
	o := failureOutcome(bson.M{
		"payload": strings.Repeat("p", 100_000),
		"opts":    bson.M{"email": bson.M{"failure": bson.M{"subject": strings.Repeat("s", 1000)}}},
	})
	o.Ex = strings.Repeat("e", 20_000)
	o.Backtrace = backtrace
	o.Stderr = "first line\n" + strings.Repeat("x", 100_000) + "\nlast line"

	c := n.compose(o, nil)
	require.Equal(t, maxSubjectRunes, utf8.RuneCountInString(c.subject))
	require.True(t, strings.HasSuffix(c.subject, "…"))
	require.Contains(t, c.body, "[cut: the first 8192 of 20000 bytes are shown]")
	require.Contains(t, c.body, "[backtrace cut: the first 100 of 500 lines are shown]")
	require.Contains(t, c.body, "[cut: the last 16384 of 100021 bytes are shown]")
	require.Contains(t, c.body, "last line")
	require.NotContains(t, c.body, "first line")
	require.Contains(t, c.body, "[cut: the first 32768 of ")
	require.Less(t, len(c.body), 100_000)
}

func TestFormatDocumentSortsKeys(t *testing.T) {
	t.Parallel()
	doc := bson.M{
		"zeta":  1,
		"_id":   "job-1",
		"alpha": bson.M{"y": 2, "x": 1},
		"when":  time.Date(2026, 12, 4, 0, 0, 0, 0, time.UTC),
	}
	want := `{
  "_id": "job-1",
  "alpha": {
    "x": 1,
    "y": 2
  },
  "when": {
    "$date": "2026-12-04T00:00:00Z"
  },
  "zeta": 1
}`
	require.Equal(t, want, formatDocument(doc))
	require.Equal(t, "none", formatDocument(nil))
}

func TestSanitizeHeader(t *testing.T) {
	t.Parallel()
	require.Equal(t, "a b c", sanitizeHeader("a\r\nb\tc"))
	require.Equal(t, "x \uFFFD y", sanitizeHeader("x \xff y"))
	require.Equal(t, "trim", sanitizeHeader("  trim \n"))
}

func TestLimitTailKeepsRunes(t *testing.T) {
	t.Parallel()
	s := strings.Repeat("ä", 10) // 20 bytes
	got := limitTail(s, 5)
	require.True(t, utf8.ValidString(got), got)
	require.True(t, strings.HasSuffix(got, "\nää"), got)
	require.Equal(t, "short", limitTail("short", 5))
}
