package notify

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
)

func TestServerDownThenUp(t *testing.T) {
	t.Parallel()
	log, logs := newLogger(t)
	db := newDatabase(t, embeddedClient)
	addr := reserveAddress(t)
	n := newNotifier(t, db, Config{SMTPURL: "smtp://" + addr, DefaultTo: "ops@example.com"}, log)
	startRun(t, n)

	require.NoError(t, n.Enqueue(context.Background(), successOutcome(nil)))
	failed := waitForAttempt(t, db)
	require.Contains(t, failed.LastError, "connection refused")
	require.NotNil(t, failed.FirstAttemptAt)
	require.True(t, failed.NextAttemptAt.After(*failed.FirstAttemptAt))
	require.Contains(t, logs.String(), "notify: mail delivery failed, will retry")

	server := startSMTPServer(t, smtpOptions{addr: addr})
	m := server.waitMessage(t)
	require.Equal(t, []string{"ops@example.com"}, m.to)

	waitUntilEmpty(t, db)
	require.Len(t, server.accepted(), 1)
}

func TestStalledServerTimesOutAndRetries(t *testing.T) {
	t.Parallel()
	log, _ := newLogger(t)
	db := newDatabase(t, embeddedClient)
	server := startSMTPServer(t, smtpOptions{})
	stalling := startStallingListener(t, server.addr)
	n := newNotifier(t, db, Config{
		SMTPURL:        "smtp://" + stalling.addr(),
		DefaultTo:      "ops@example.com",
		ConnectTimeout: 3 * time.Second,
	}, log)
	startRun(t, n)
	ctx := context.Background()

	require.NoError(t, n.Enqueue(ctx, successOutcome(bson.M{"task": "first"})))
	select {
	case <-stalling.accepted:
	case <-time.After(waitLimit):
		t.Fatal("the notifier did not connect to the stalled server")
	}

	// Run is now waiting for a greeting that never comes. Enqueue must return before
	// that wait ends, which is when the first attempt is recorded.
	require.NoError(t, n.Enqueue(ctx, successOutcome(bson.M{"task": "second"})))
	stored := loadNotifications(t, db)
	require.Len(t, stored, 2)
	for _, doc := range stored {
		require.Zero(t, doc.Attempts, "Enqueue returned only after the connection timed out")
	}

	eventually(t, "a timed-out attempt", func() bool {
		for _, doc := range loadNotifications(t, db) {
			if doc.Attempts > 0 && strings.Contains(doc.LastError, "timeout") {
				return true
			}
		}
		return false
	})

	stalling.release()
	subjects := map[string]int{}
	for range 2 {
		subjects[server.waitMessage(t).subject(t)]++
	}
	waitUntilEmpty(t, db)
	require.Equal(t, map[string]int{
		"[Bolt] first succeeded on worker-1.example.com":  1,
		"[Bolt] second succeeded on worker-1.example.com": 1,
	}, subjects)
	require.Len(t, server.accepted(), 2)
}

func TestTemporaryErrorThenSuccess(t *testing.T) {
	t.Parallel()
	log, logs := newLogger(t)
	db := newDatabase(t, embeddedClient)
	server := startSMTPServer(t, smtpOptions{})
	server.rejectData(smtpReply(451, "try again later"))
	server.rejectRcpt("ann@example.com", smtpReply(450, "mailbox busy"))
	n := newNotifier(t, db, Config{SMTPURL: server.url()}, log)
	startRun(t, n)

	o := successOutcome(bson.M{"email": bson.A{"ann@example.com", "bob@example.com"}})
	require.NoError(t, n.Enqueue(context.Background(), o))

	// The first attempt gets 450 for ann and 451 for bob's data, the second gets
	// through to both.
	got := map[string]int{}
	for range 2 {
		got[server.waitMessage(t).to[0]]++
	}
	waitUntilEmpty(t, db)
	require.Equal(t, map[string]int{"ann@example.com": 1, "bob@example.com": 1}, got)
	require.Len(t, server.accepted(), 2)
	output := logs.String()
	require.Contains(t, output, "notify: mail delivery failed, will retry")
	require.Contains(t, output, `"attempt":2`)
}

func TestPermanentRejectionGivesUp(t *testing.T) {
	t.Parallel()
	log, logs := newLogger(t)
	db := newDatabase(t, embeddedClient)
	server := startSMTPServer(t, smtpOptions{})
	server.rejectRcpt("gone@example.com", smtpReply(550, "no such user"))
	n := newNotifier(t, db, Config{SMTPURL: server.url()}, log)
	startRun(t, n)

	o := failureOutcome(bson.M{"email": bson.A{"gone@example.com", "ann@example.com"}})
	require.NoError(t, n.Enqueue(context.Background(), o))

	m := server.waitMessage(t)
	require.Equal(t, []string{"ann@example.com"}, m.to)
	waitUntilEmpty(t, db)
	require.Len(t, server.accepted(), 1)

	output := logs.String()
	require.Contains(t, output, "notify: mail rejected by the SMTP server, giving up on this recipient")
	require.Contains(t, output, "550")
	require.Contains(t, output, o.TaskID.(bson.ObjectID).Hex())
	require.NotContains(t, output, "will retry")
}

func TestRetryPeriodEndsInGivingUp(t *testing.T) {
	t.Parallel()
	log, logs := newLogger(t)
	db := newDatabase(t, embeddedClient)
	server := startSMTPServer(t, smtpOptions{})
	replies := make([]error, 100)
	for i := range replies {
		replies[i] = smtpReply(421, "service not available")
	}
	server.rejectData(replies...)
	n := newNotifier(t, db, Config{SMTPURL: server.url(), DefaultTo: "ops@example.com", RetryFor: time.Second}, log)
	startRun(t, n)

	require.NoError(t, n.Enqueue(context.Background(), successOutcome(nil)))
	waitUntilEmpty(t, db)

	output := logs.String()
	require.Contains(t, output, "notify: mail not delivered within the retry period, giving up")
	require.Contains(t, output, "421")
	require.Empty(t, server.accepted())
	server.mu.Lock()
	defer server.mu.Unlock()
	require.GreaterOrEqual(t, server.dataCalls, 3, "the mail was not retried")

	// The same error again is logged at debug level only.
	warnings, repeats := 0, 0
	for _, line := range strings.Split(output, "\n") {
		if strings.Contains(line, "will retry") {
			if strings.Contains(line, `"level":"warn"`) {
				warnings++
			} else {
				repeats++
			}
		}
	}
	require.Equal(t, 1, warnings)
	require.GreaterOrEqual(t, repeats, 1)
}

func TestDamagedNotificationIsSkipped(t *testing.T) {
	t.Parallel()
	log, logs := newLogger(t)
	db := newDatabase(t, embeddedClient)
	server := startSMTPServer(t, smtpOptions{})
	n := newNotifier(t, db, Config{SMTPURL: server.url(), DefaultTo: "ops@example.com"}, log)
	ctx := context.Background()

	_, err := db.Collection(notificationsCollection).InsertOne(ctx, bson.M{
		"_id": "damaged", "to": "not an array", "next_attempt_at": time.Now().Add(-time.Hour),
	})
	require.NoError(t, err)

	startRun(t, n)
	require.NoError(t, n.Enqueue(ctx, successOutcome(nil)))
	m := server.waitMessage(t)
	require.Equal(t, []string{"ops@example.com"}, m.to)
	eventually(t, "only the damaged document to be left", func() bool {
		return countNotifications(t, db) == 1
	})
	require.Contains(t, logs.String(), "notify: skipping a notification document that cannot be decoded")
	require.Contains(t, logs.String(), `"notification_id":"\"damaged\""`)
}

func TestRestartSendsPendingMailsOnce(t *testing.T) {
	t.Parallel()
	log, logs := newLogger(t)
	db := newDatabase(t, embeddedClient)
	server := startSMTPServer(t, smtpOptions{})
	cfg := Config{SMTPURL: server.url(), DefaultTo: "ops@example.com"}
	ctx := context.Background()

	// The first daemon stores three mails and stops before sending them. One of them
	// has a lease that expired because its holder died while sending.
	first := newNotifier(t, db, cfg, log)
	for i := range 3 {
		require.NoError(t, first.Enqueue(ctx, successOutcome(bson.M{"task": fmt.Sprintf("task_%d", i)})))
	}
	pending := loadNotifications(t, db)
	require.Len(t, pending, 3)
	_, err := db.Collection(leasesCollection).InsertOne(ctx, lease{
		ID:             pending[0].ID + "/1",
		NotificationID: pending[0].ID,
		Generation:     1,
		Owner:          "crashed-daemon",
		ExpiresAt:      time.Now().Add(-time.Second),
	})
	require.NoError(t, err)

	second := newNotifier(t, db, cfg, log)
	startRun(t, second)

	subjects := map[string]int{}
	for range 3 {
		subjects[server.waitMessage(t).subject(t)]++
	}
	waitUntilEmpty(t, db)
	require.Equal(t, map[string]int{
		"[Bolt] task_0 succeeded on worker-1.example.com": 1,
		"[Bolt] task_1 succeeded on worker-1.example.com": 1,
		"[Bolt] task_2 succeeded on worker-1.example.com": 1,
	}, subjects)
	require.Len(t, server.accepted(), 3)
	require.Contains(t, logs.String(), `"previous_owner":"crashed-daemon"`)
}

func TestOrphanLeasesAreRemoved(t *testing.T) {
	t.Parallel()
	log, _ := newLogger(t)
	db := newDatabase(t, embeddedClient)
	server := startSMTPServer(t, smtpOptions{})
	n := newNotifier(t, db, Config{SMTPURL: server.url(), DefaultTo: "ops@example.com"}, log)
	ctx := context.Background()

	// A sender died after removing its notification and before removing the leases.
	_, err := db.Collection(leasesCollection).InsertMany(ctx, []lease{
		{ID: "gone/1", NotificationID: "gone", Generation: 1, Owner: "crashed", ExpiresAt: time.Now().Add(-time.Minute)},
		{ID: "gone/2", NotificationID: "gone", Generation: 2, Owner: "crashed", ExpiresAt: time.Now().Add(-time.Second)},
	})
	require.NoError(t, err)

	startRun(t, n)
	require.NoError(t, n.Enqueue(ctx, successOutcome(nil)))
	server.waitMessage(t)
	waitUntilEmpty(t, db)
}

func TestLiveLeaseBlocksOtherSenders(t *testing.T) {
	t.Parallel()
	log, _ := newLogger(t)
	db := newDatabase(t, embeddedClient)
	server := startSMTPServer(t, smtpOptions{})
	n := newNotifier(t, db, Config{SMTPURL: server.url(), DefaultTo: "ops@example.com"}, log)
	ctx := context.Background()

	require.NoError(t, n.Enqueue(ctx, successOutcome(nil)))
	pending := loadNotifications(t, db)
	require.Len(t, pending, 1)
	// BSON dates keep milliseconds, so the lease ends at the truncated time the store keeps.
	leaseEnd := time.Now().Add(700 * time.Millisecond).Truncate(time.Millisecond)
	_, err := db.Collection(leasesCollection).InsertOne(ctx, lease{
		ID:             pending[0].ID + "/1",
		NotificationID: pending[0].ID,
		Generation:     1,
		Owner:          "busy-daemon",
		ExpiresAt:      leaseEnd,
	})
	require.NoError(t, err)

	startRun(t, n)
	server.waitMessage(t)
	require.False(t, time.Now().Before(leaseEnd), "the mail was sent while another sender held its lease")
	waitUntilEmpty(t, db)
	require.Len(t, server.accepted(), 1)
}

// TestConcurrentNotifiersSendOnce runs three daemons on one database. Each mail must
// arrive exactly once, on the embedded store and on FerretDB without the gate, whose
// findAndModify is not atomic.
func TestConcurrentNotifiersSendOnce(t *testing.T) {
	t.Parallel()
	stores := map[string]*mongo.Client{"embedded store": embeddedClient, "FerretDB": ferretClient}
	for name, client := range stores {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			log, _ := newLogger(t)
			db := newDatabase(t, client)
			server := startSMTPServer(t, smtpOptions{})
			cfg := Config{SMTPURL: server.url(), DefaultTo: "ops@example.com"}

			notifiers := make([]*Notifier, 3)
			for i := range notifiers {
				notifiers[i] = newNotifier(t, db, cfg, log)
				// Rounds in step make the daemons compete for the same mails.
				notifiers[i].timing.pollInterval = 20 * time.Millisecond
			}

			const mails = 30
			var wg sync.WaitGroup
			for i := range mails {
				wg.Add(1)
				go func() {
					defer wg.Done()
					o := successOutcome(bson.M{"task": fmt.Sprintf("task_%02d", i)})
					require.NoError(t, notifiers[i%len(notifiers)].Enqueue(context.Background(), o))
				}()
			}
			wg.Wait()
			for _, n := range notifiers {
				startRun(t, n)
			}

			waitUntilEmpty(t, db)
			perMessageID := map[string]int{}
			for _, m := range server.accepted() {
				perMessageID[m.parse(t).Header.Get("Message-ID")]++
			}
			require.Len(t, perMessageID, mails)
			for id, count := range perMessageID {
				require.Equal(t, 1, count, "message %s arrived %d times", id, count)
			}
		})
	}
}

func TestSTARTTLSWithAuthentication(t *testing.T) {
	t.Parallel()
	log, logs := newLogger(t)
	db := newDatabase(t, embeddedClient)
	serverTLS, clientTLS := selfSignedTLS(t)
	server := startSMTPServer(t, smtpOptions{tlsConfig: serverTLS, username: "bolt", password: "s3cret-pw"})
	n := newNotifier(t, db, Config{
		SMTPURL:   "smtp://bolt:s3cret-pw@" + server.addr + "?starttls=required",
		DefaultTo: "ops@example.com",
	}, log)
	trustTLS(t, n, clientTLS)
	startRun(t, n)

	require.NoError(t, n.Enqueue(context.Background(), successOutcome(nil)))
	m := server.waitMessage(t)
	require.Equal(t, []string{"ops@example.com"}, m.to)
	server.mu.Lock()
	require.Equal(t, []string{"bolt"}, server.authUsers)
	server.mu.Unlock()
	waitUntilEmpty(t, db)
	require.NotContains(t, logs.String(), "s3cret-pw")
}

func TestImplicitTLS(t *testing.T) {
	t.Parallel()
	log, _ := newLogger(t)
	db := newDatabase(t, embeddedClient)
	serverTLS, clientTLS := selfSignedTLS(t)
	server := startSMTPServer(t, smtpOptions{tlsConfig: serverTLS, implicitTLS: true, username: "bolt", password: "pw"})
	n := newNotifier(t, db, Config{SMTPURL: "smtps://bolt:pw@" + server.addr, DefaultTo: "ops@example.com"}, log)
	trustTLS(t, n, clientTLS)
	startRun(t, n)

	require.NoError(t, n.Enqueue(context.Background(), successOutcome(nil)))
	m := server.waitMessage(t)
	require.Equal(t, []string{"ops@example.com"}, m.to)
	waitUntilEmpty(t, db)
}

func TestRequiredSTARTTLSNotOffered(t *testing.T) {
	t.Parallel()
	log, _ := newLogger(t)
	db := newDatabase(t, embeddedClient)
	server := startSMTPServer(t, smtpOptions{})
	n := newNotifier(t, db, Config{SMTPURL: server.url() + "?starttls=required", DefaultTo: "ops@example.com"}, log)
	startRun(t, n)

	require.NoError(t, n.Enqueue(context.Background(), successOutcome(nil)))
	failed := waitForAttempt(t, db)
	require.Contains(t, failed.LastError, "does not support STARTTLS")
	require.Empty(t, server.accepted())
}

func TestWrongPasswordIsRetriedAndNotLogged(t *testing.T) {
	t.Parallel()
	log, logs := newLogger(t)
	db := newDatabase(t, embeddedClient)
	serverTLS, clientTLS := selfSignedTLS(t)
	server := startSMTPServer(t, smtpOptions{tlsConfig: serverTLS, username: "bolt", password: "right"})
	n := newNotifier(t, db, Config{SMTPURL: "smtp://bolt:wr0ng-pw@" + server.addr, DefaultTo: "ops@example.com"}, log)
	trustTLS(t, n, clientTLS)
	startRun(t, n)

	require.NoError(t, n.Enqueue(context.Background(), successOutcome(nil)))
	failed := waitForAttempt(t, db)
	require.Contains(t, failed.LastError, "535")
	require.NotContains(t, failed.LastError, "wr0ng-pw")
	require.NotContains(t, logs.String(), "wr0ng-pw")
	require.Contains(t, logs.String(), "smtp://bolt:xxxxx@")
	require.Empty(t, server.accepted())
}

func TestDevelopmentWritesEMLFiles(t *testing.T) {
	t.Parallel()
	log, _ := newLogger(t)
	db := newDatabase(t, embeddedClient)
	dir := filepath.Join(t.TempDir(), "tmp", "mail")
	n := newNotifier(t, db, Config{Env: EnvDevelopment, MailDir: dir, DefaultTo: "Ops <ops@example.com>"}, log)
	startRun(t, n)

	o := failureOutcome(bson.M{"email": bson.A{"ann@example.com", "bob@example.com"}})
	require.NoError(t, n.Enqueue(context.Background(), o))
	waitUntilEmpty(t, db)

	files, err := filepath.Glob(filepath.Join(dir, "*"))
	require.NoError(t, err)
	require.Len(t, files, 2, "expected one file per recipient and no temporary files: %v", files)

	recipients := map[string]bool{}
	for _, file := range files {
		require.True(t, strings.HasSuffix(file, ".eml"), file)
		require.Contains(t, filepath.Base(file), "-send_report-")
		raw, err := os.ReadFile(file)
		require.NoError(t, err)
		m := receivedMessage{raw: raw}
		require.Equal(t, "[Bolt] send_report failed on worker-1.example.com: RuntimeError: report server returned 502", m.subject(t))
		require.Contains(t, m.body(t), "Exception:\nRuntimeError: report server returned 502")
		recipients[m.parse(t).Header.Get("To")] = true
	}
	require.Equal(t, map[string]bool{"<ann@example.com>": true, "<bob@example.com>": true}, recipients)
}

func TestProductionWithoutSMTPDropsMail(t *testing.T) {
	t.Parallel()
	log, logs := newLogger(t)
	db := newDatabase(t, embeddedClient)
	n := newNotifier(t, db, Config{Env: EnvProduction, DefaultTo: "ops@example.com"}, log)
	require.Contains(t, logs.String(), "notify: mail is not set up because SMTPURL is empty")
	startRun(t, n)

	require.NoError(t, n.Enqueue(context.Background(), failureOutcome(nil)))
	require.Zero(t, countNotifications(t, db))
	require.Contains(t, logs.String(), "notify: mail dropped because SMTPURL is not set")
	require.Contains(t, logs.String(), "[Bolt] send_report failed on worker-1.example.com")
}

func TestEnqueueRepeatedStoresOneMail(t *testing.T) {
	t.Parallel()
	log, logs := newLogger(t)
	db := newDatabase(t, embeddedClient)
	server := startSMTPServer(t, smtpOptions{})
	n := newNotifier(t, db, Config{SMTPURL: server.url(), DefaultTo: "ops@example.com"}, log)

	o := failureOutcome(nil)
	require.NoError(t, n.Enqueue(context.Background(), o))
	require.NoError(t, n.Enqueue(context.Background(), o))
	require.Equal(t, int64(1), countNotifications(t, db))
	require.Contains(t, logs.String(), "notify: mail already queued")

	// The same task run again is a new outcome with a new mail.
	again := o
	again.Started = o.Started.Add(time.Minute)
	require.NoError(t, n.Enqueue(context.Background(), again))
	require.Equal(t, int64(2), countNotifications(t, db))

	startRun(t, n)
	waitUntilEmpty(t, db)
	require.Len(t, server.accepted(), 2)
}

func TestRunTwiceIsRejected(t *testing.T) {
	t.Parallel()
	log, _ := newLogger(t)
	n := newNotifier(t, newDatabase(t, embeddedClient), Config{MailDir: t.TempDir()}, log)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	eventually(t, "Run to start", n.running.Load)

	require.ErrorIs(t, n.Run(context.Background()), ErrAlreadyRunning)
	cancel()
	require.NoError(t, <-done)
}

func TestRetryDelayGrowsToMaximum(t *testing.T) {
	t.Parallel()
	n := &Notifier{timing: timing{retryInitial: time.Minute, retryMax: time.Hour}}

	first := n.retryDelay(1)
	require.GreaterOrEqual(t, first, 48*time.Second)
	require.LessOrEqual(t, first, 72*time.Second)

	require.Greater(t, n.retryDelay(4), 4*time.Minute)
	for _, attempt := range []int{10, 30, 1000} {
		delay := n.retryDelay(attempt)
		require.GreaterOrEqual(t, delay, 48*time.Minute, "attempt %d", attempt)
		require.LessOrEqual(t, delay, 72*time.Minute, "attempt %d", attempt)
	}
}
