// Package notify mails the outcome of each task: success, or failure with the
// exception and backtrace.
//
// Enqueue stores the mail in the notifications collection and returns without touching
// the network. Run delivers stored mails in the background, retries temporary failures
// with backoff, and takes a lease on each mail so that several daemons on one database
// do not send it concurrently. docs/email.md describes the mails, settings and delivery
// guarantees.
package notify

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/mail"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	gomail "github.com/wneessen/go-mail"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
)

// Outcome is the result of one task run, as the executor hands it over.
type Outcome struct {
	TaskID     any    // the document's _id (ObjectId, string, ...)
	Task       string // the task name
	Document   bson.M // the task document as claimed, with handed-back fields merged
	Success    bool
	Ex         string   // exception class and message
	Backtrace  []string // one frame per line
	Stderr     string   // the end of the task's standard error
	ExitStatus string   // "exit status 3", "signal SIGSEGV", "" on success
	TimedOut   bool
	Started    time.Time
	Duration   time.Duration
	Kept       bool // the task document is kept, and a silent task's failure is recorded there
}

// deliveryMode is the destination of stored mails: an SMTP server, .eml files or none.
type deliveryMode int

const (
	modeSMTP deliveryMode = iota // stored, then sent by Run through the SMTP server
	modeFile                     // stored, then written by Run as an .eml file
	modeDrop                     // production without SMTPURL: logged and dropped by Enqueue
)

// timing contains the delivery intervals. Tests shorten them.
type timing struct {
	retryInitial  time.Duration // delay after the first failed attempt
	retryMax      time.Duration // maximum delay between attempts
	pollInterval  time.Duration // how often Run looks for mails without a wake-up
	leaseFor      time.Duration // how long a claim on one attempt lasts
	recordTimeout time.Duration // bound on recording an attempt after shutdown began
	batchSize     int           // maximum number of mails per round
}

func defaultTiming(cfg Config) timing {
	return timing{
		retryInitial: time.Minute,
		retryMax:     time.Hour,
		pollInterval: time.Minute,
		// An attempt takes at most one connect and one send, so a lease this long only
		// expires when its holder has died or cannot reach the store.
		leaseFor:      cfg.ConnectTimeout + cfg.SendTimeout + time.Minute,
		recordTimeout: 10 * time.Second,
		batchSize:     50,
	}
}

// Notifier stores task outcome mails and delivers them.
type Notifier struct {
	cfg       Config
	from      *mail.Address
	defaultTo []recipient
	mode      deliveryMode
	transport transport
	store     *store
	log       zerolog.Logger
	timing    timing

	// owner names this notifier in the leases it takes.
	owner string

	// wake carries a signal from Enqueue to Run, so a new mail goes out at once.
	wake    chan struct{}
	running atomic.Bool
}

// New validates cfg and returns a Notifier that stores mails in db. It does not connect
// to the database or the SMTP server. An invalid setting returns an error that names
// it. New logs a warning when there is no default recipient, and when mails will be
// dropped because SMTPURL is empty in production.
func New(db *mongo.Database, cfg Config, log zerolog.Logger) (*Notifier, error) {
	if db == nil {
		return nil, errors.New("notify: the database is nil")
	}
	cfg, smtpSettings, from, err := normalize(cfg)
	if err != nil {
		return nil, fmt.Errorf("notify: %w", err)
	}

	n := &Notifier{
		cfg:    cfg,
		from:   from,
		store:  newStore(db, log),
		log:    log,
		timing: defaultTiming(cfg),
		owner:  newOwnerID(),
		wake:   make(chan struct{}, 1),
	}
	if cfg.DefaultTo != "" {
		list, _ := parseAddressList(cfg.DefaultTo) // validated by normalize
		n.defaultTo = addRecipients(nil, list)
	}

	switch {
	case smtpSettings != nil:
		n.mode = modeSMTP
		n.transport = &smtpTransport{
			settings:       *smtpSettings,
			connectTimeout: cfg.ConnectTimeout,
			sendTimeout:    cfg.SendTimeout,
		}
		log.Info().Str("smtp_url", smtpSettings.redactedURL).Str("from", from.String()).
			Msg("notify: sending mail through SMTP server")
	case cfg.Env == EnvProduction:
		n.mode = modeDrop
		log.Warn().Msg("notify: mail is not set up because SMTPURL is empty, " +
			"so task outcome mails are dropped and each is logged at warn level")
	default:
		n.mode = modeFile
		n.transport = &fileTransport{dir: cfg.MailDir}
		log.Info().Str("mail_dir", cfg.MailDir).
			Msg("notify: SMTPURL is empty, so mails are written as .eml files")
	}

	if len(n.defaultTo) == 0 {
		log.Warn().Msg("notify: no default recipient is set (DefaultTo), " +
			"so only tasks with an email field get mail")
	}

	return n, nil
}

func newOwnerID() string {
	host, err := os.Hostname()
	if err != nil {
		host = "unknown"
	}
	random := make([]byte, 4)
	_, _ = rand.Read(random)
	return fmt.Sprintf("%s/%d/%s", host, os.Getpid(), hex.EncodeToString(random))
}

// Enqueue stores the mail for an outcome, or does nothing when the outcome gets no mail:
// a silent task's success, a silent task's failure that is kept in its document, or no
// recipient at all. It does not touch the network, so it is safe to call before the
// task document is removed. It returns an error only when the store fails, and the
// caller may then repeat the call: an outcome whose mail is still pending is not
// stored twice.
func (n *Notifier) Enqueue(ctx context.Context, o Outcome) error {
	taskID := formatTaskID(o.TaskID)
	log := n.log.With().Str("task", o.Task).Str("task_id", taskID).Bool("success", o.Success).Logger()

	if isSilent(o.Document) && (o.Success || o.Kept) {
		log.Debug().Bool("kept", o.Kept).Msg("notify: no mail because the task is silent")
		return nil
	}

	rcpts, notes := n.resolveRecipients(o, log)
	if len(rcpts) == 0 {
		return nil
	}

	c := n.compose(o, notes)
	for _, problem := range c.problems {
		log.Warn().Str("problem", problem).Msg("notify: ignoring an invalid email option of the task")
	}

	if n.mode == modeDrop {
		log.Warn().Strs("to", recipientStrings(rcpts)).Str("subject", c.subject).
			Msg("notify: mail dropped because SMTPURL is not set")
		return nil
	}

	now := time.Now()
	id := notificationID(o)
	doc := notification{
		ID:            id,
		TaskID:        o.TaskID,
		Task:          o.Task,
		Success:       o.Success,
		Subject:       c.subject,
		Body:          c.body,
		MessageID:     n.messageID(id),
		To:            rcpts,
		EnqueuedAt:    now,
		NextAttemptAt: now,
	}
	err := n.store.insert(ctx, doc)
	if mongo.IsDuplicateKeyError(err) {
		log.Debug().Str("notification_id", id).Msg("notify: mail already queued")
		return nil
	}
	if err != nil {
		return fmt.Errorf("notify: storing mail for task %s: %w", taskID, err)
	}
	log.Debug().Str("notification_id", id).Strs("to", recipientStrings(rcpts)).
		Msg("notify: mail queued")

	select {
	case n.wake <- struct{}{}:
	default:
	}
	return nil
}

// resolveRecipients returns the task's valid addresses, or the default recipients when
// the task names none that is valid. notes tell the reader of the mail about addresses
// that were skipped. With no recipient at all it logs why.
func (n *Notifier) resolveRecipients(o Outcome, log zerolog.Logger) (rcpts []recipient, notes []string) {
	rcpts, problems, present := taskRecipients(o.Document)
	if len(problems) > 0 {
		log.Warn().Strs("problems", problems).Msg("notify: skipping invalid values in the task's email field")
	}

	switch {
	case len(rcpts) > 0:
		if len(problems) > 0 {
			notes = append(notes, "These values of the task's email field were skipped: "+
				strings.Join(problems, "; ")+".")
		}
		return rcpts, notes
	case len(n.defaultTo) == 0:
		if present {
			log.Error().Strs("problems", problems).
				Msg("notify: mail not sent because the task's email field has no valid address and no default recipient is set")
		} else {
			log.Debug().Msg("notify: no mail because the task has no email field and no default recipient is set")
		}
		return nil, nil
	case present:
		notes = append(notes, "This mail went to the default recipient because the task's email field "+
			"has no valid address: "+strings.Join(problems, "; ")+".")
		return n.defaultTo, notes
	default:
		return n.defaultTo, nil
	}
}

// notificationID derives the _id of an outcome's notification from the task's _id, the
// start time and the result. When the caller repeats an Enqueue, for example after the
// reply of the store was lost, the insert finds the pending notification and adds none.
func notificationID(o Outcome) string {
	key := bson.D{
		{Key: "task_id", Value: o.TaskID},
		{Key: "task", Value: o.Task},
		{Key: "started", Value: o.Started.UnixNano()},
		{Key: "success", Value: o.Success},
		{Key: "ex", Value: o.Ex},
		{Key: "exit_status", Value: o.ExitStatus},
		{Key: "timed_out", Value: o.TimedOut},
	}
	data, err := bson.Marshal(key)
	if err != nil {
		data = fmt.Appendf(nil, "%#v", key)
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:12])
}

// messageID returns the Message-ID of a notification. Every copy and every retry of the
// mail carries it, so a mail system can recognise a copy that arrives twice.
func (n *Notifier) messageID(id string) string {
	domain := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '.':
			return r
		default:
			return -1
		}
	}, n.cfg.Host)
	if domain == "" {
		domain = "localhost"
	}
	return id + ".bolt@" + domain
}

// buildMessage builds the copy of a notification for one recipient.
func (n *Notifier) buildMessage(doc *notification, r recipient) *gomail.Msg {
	msg := gomail.NewMsg(gomail.WithNoDefaultUserAgent())
	msg.FromMailAddress(n.from)
	msg.ToMailAddress(r.mailAddress())
	msg.Subject(doc.Subject)
	msg.SetMessageIDWithValue(doc.MessageID)
	msg.SetDateWithValue(doc.EnqueuedAt)

	// RFC 3834: auto-responders must not reply to an auto-generated message.
	msg.SetGenHeader("Auto-Submitted", "auto-generated")
	msg.SetGenHeader("X-Bolt-Task", sanitizeHeader(doc.Task))
	msg.SetGenHeader("X-Bolt-Task-Id", sanitizeHeader(formatTaskID(doc.TaskID)))

	msg.SetBodyString(gomail.TypeTextPlain, doc.Body)
	return msg
}

func recipientStrings(rcpts []recipient) []string {
	out := make([]string, len(rcpts))
	for i, r := range rcpts {
		out[i] = r.String()
	}
	return out
}
