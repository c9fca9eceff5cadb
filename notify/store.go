package notify

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// Collection names, in the same database as the task queue.
const (
	notificationsCollection = "notifications"
	leasesCollection        = "notification_leases"
)

// notification is a pending mail in the notifications collection. Enqueue inserts it,
// and afterwards only the holder of its lease changes or removes it.
type notification struct {
	ID        string `bson:"_id"`
	TaskID    any    `bson:"task_id"`
	Task      string `bson:"task"`
	Success   bool   `bson:"success"`
	Subject   string `bson:"subject"`
	Body      string `bson:"body"`
	MessageID string `bson:"message_id"`

	// To contains the recipients that have not received the mail yet. Each recipient
	// gets a separate message, so that one rejected address does not stop the others.
	To []recipient `bson:"to"`

	EnqueuedAt     time.Time  `bson:"enqueued_at"`
	NextAttemptAt  time.Time  `bson:"next_attempt_at"`
	FirstAttemptAt *time.Time `bson:"first_attempt_at,omitempty"`
	Attempts       int        `bson:"attempts"`
	LastError      string     `bson:"last_error,omitempty"`
}

// lease is a claim on one delivery attempt of a notification.
//
// FerretDB (v1.24) runs findAndModify as a query and a separate update, so two claimers
// can both win a conditional update. A lease is therefore not a field that claimers
// update but a document whose _id is "<notification id>/<generation>". Inserting it
// succeeds for exactly one claimer on any store, because _id is unique. A new lease
// takes the next generation after the highest one seen, and only when that one has
// expired. Its holder removes it after the attempt is recorded.
type lease struct {
	ID             string    `bson:"_id"`
	NotificationID string    `bson:"notification_id"`
	Generation     int64     `bson:"generation"`
	Owner          string    `bson:"owner"`
	ExpiresAt      time.Time `bson:"expires_at"`
}

// store wraps the two collections that the notifier uses.
type store struct {
	notifications *mongo.Collection
	leases        *mongo.Collection
	log           zerolog.Logger
}

func newStore(db *mongo.Database, log zerolog.Logger) *store {
	return &store{
		notifications: db.Collection(notificationsCollection),
		leases:        db.Collection(leasesCollection),
		log:           log,
	}
}

// ensureIndexes creates the indexes that a MongoDB server uses for the due scan and the
// lease lookup. The embedded store accepts them but still scans.
func (s *store) ensureIndexes(ctx context.Context) error {
	if _, err := s.notifications.Indexes().CreateOne(ctx, mongo.IndexModel{
		Keys: bson.D{{Key: "next_attempt_at", Value: 1}},
	}); err != nil {
		return fmt.Errorf("creating index on %s.next_attempt_at: %w", notificationsCollection, err)
	}
	if _, err := s.leases.Indexes().CreateOne(ctx, mongo.IndexModel{
		Keys: bson.D{{Key: "notification_id", Value: 1}},
	}); err != nil {
		return fmt.Errorf("creating index on %s.notification_id: %w", leasesCollection, err)
	}
	return nil
}

// insert stores a new notification. A notification with the same _id makes it return
// a duplicate key error (mongo.IsDuplicateKeyError).
func (s *store) insert(ctx context.Context, n notification) error {
	if _, err := s.notifications.InsertOne(ctx, n); err != nil {
		return fmt.Errorf("inserting notification: %w", err)
	}
	return nil
}

// earliest returns up to limit notifications with the earliest next_attempt_at. The
// caller picks the due ones, and the first one that is not due gives the time of the
// next round.
func (s *store) earliest(ctx context.Context, limit int) ([]notification, error) {
	opts := options.Find().
		SetSort(bson.D{{Key: "next_attempt_at", Value: 1}}).
		SetLimit(int64(limit))
	cursor, err := s.notifications.Find(ctx, bson.D{}, opts)
	if err != nil {
		return nil, fmt.Errorf("finding due notifications: %w", err)
	}
	defer func() { _ = cursor.Close(ctx) }()

	// Documents are decoded one by one, so that one that another program damaged does
	// not stop the delivery of the others.
	var found []notification
	for cursor.Next(ctx) {
		var n notification
		if err := cursor.Decode(&n); err != nil {
			s.log.Error().Err(err).Str("notification_id", cursor.Current.Lookup("_id").String()).
				Msg("notify: skipping a notification document that cannot be decoded")
			continue
		}
		found = append(found, n)
	}
	if err := cursor.Err(); err != nil {
		return nil, fmt.Errorf("reading due notifications: %w", err)
	}
	return found, nil
}

func (s *store) load(ctx context.Context, id string) (notification, bool, error) {
	var n notification
	err := s.notifications.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&n)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return n, false, nil
	}
	if err != nil {
		return n, false, fmt.Errorf("loading notification %s: %w", id, err)
	}
	return n, true, nil
}

// latestLeases returns the lease with the highest generation of each notification.
func (s *store) latestLeases(ctx context.Context) (map[string]lease, error) {
	cursor, err := s.leases.Find(ctx, bson.D{})
	if err != nil {
		return nil, fmt.Errorf("finding notification leases: %w", err)
	}
	var all []lease
	if err := cursor.All(ctx, &all); err != nil {
		return nil, fmt.Errorf("reading notification leases: %w", err)
	}

	latest := make(map[string]lease, len(all))
	for _, l := range all {
		if current, ok := latest[l.NotificationID]; !ok || l.Generation > current.Generation {
			latest[l.NotificationID] = l
		}
	}
	return latest, nil
}

// errLeaseTaken means that another sender inserted the same lease first.
var errLeaseTaken = errors.New("lease taken by another sender")

// claim inserts the lease that follows previous (nil when the notification has none).
// It returns errLeaseTaken when another sender was faster.
func (s *store) claim(ctx context.Context, id string, previous *lease, owner string, expiresAt time.Time) (lease, error) {
	generation := int64(1)
	if previous != nil {
		generation = previous.Generation + 1
	}
	l := lease{
		ID:             fmt.Sprintf("%s/%d", id, generation),
		NotificationID: id,
		Generation:     generation,
		Owner:          owner,
		ExpiresAt:      expiresAt,
	}

	_, err := s.leases.InsertOne(ctx, l)
	if mongo.IsDuplicateKeyError(err) {
		return l, errLeaseTaken
	}
	if err != nil {
		return l, fmt.Errorf("inserting lease %s: %w", l.ID, err)
	}
	return l, nil
}

func (s *store) release(ctx context.Context, l lease) error {
	if _, err := s.leases.DeleteOne(ctx, bson.D{{Key: "_id", Value: l.ID}}); err != nil {
		return fmt.Errorf("deleting lease %s: %w", l.ID, err)
	}
	return nil
}

// remove deletes a notification and then all of its leases. A sender that wins a lease
// after this finds no notification when it loads it, so it sends nothing.
func (s *store) remove(ctx context.Context, id string) error {
	if _, err := s.notifications.DeleteOne(ctx, bson.D{{Key: "_id", Value: id}}); err != nil {
		return fmt.Errorf("deleting notification %s: %w", id, err)
	}
	if _, err := s.leases.DeleteMany(ctx, bson.D{{Key: "notification_id", Value: id}}); err != nil {
		return fmt.Errorf("deleting leases of notification %s: %w", id, err)
	}
	return nil
}

// removeExpiredLeases deletes the leases of a notification that expired before now.
func (s *store) removeExpiredLeases(ctx context.Context, id string, now time.Time) error {
	filter := bson.D{
		{Key: "notification_id", Value: id},
		{Key: "expires_at", Value: bson.D{{Key: "$lt", Value: now}}},
	}
	if _, err := s.leases.DeleteMany(ctx, filter); err != nil {
		return fmt.Errorf("deleting expired leases of notification %s: %w", id, err)
	}
	return nil
}

// reschedule stores the state after a failed attempt.
func (s *store) reschedule(ctx context.Context, n notification) error {
	update := bson.D{{Key: "$set", Value: bson.D{
		{Key: "to", Value: n.To},
		{Key: "attempts", Value: n.Attempts},
		{Key: "first_attempt_at", Value: n.FirstAttemptAt},
		{Key: "next_attempt_at", Value: n.NextAttemptAt},
		{Key: "last_error", Value: n.LastError},
	}}}
	if _, err := s.notifications.UpdateOne(ctx, bson.D{{Key: "_id", Value: n.ID}}, update); err != nil {
		return fmt.Errorf("rescheduling notification %s: %w", n.ID, err)
	}
	return nil
}
