package taskdoc

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.mongodb.org/mongo-driver/v2/bson"
)

func value(t *testing.T, v any) bson.RawValue {
	t.Helper()
	raw, err := bson.Marshal(bson.D{{Key: "v", Value: v}})
	require.NoError(t, err)
	return bson.Raw(raw).Lookup("v")
}

func TestRunAt(t *testing.T) {
	at, err := RunAt(bson.RawValue{})
	require.NoError(t, err)
	require.True(t, at.IsZero(), "missing run_at means now")

	at, err = RunAt(value(t, nil))
	require.NoError(t, err)
	require.True(t, at.IsZero(), "null run_at means now")

	at, err = RunAt(value(t, int64(1700000000)))
	require.NoError(t, err)
	require.Equal(t, time.Unix(1700000000, 0), at)

	at, err = RunAt(value(t, 1700000000.5))
	require.NoError(t, err)
	require.Equal(t, time.Unix(1700000000, 5e8), at)

	date := time.Date(2026, 12, 4, 0, 0, 0, 0, time.UTC)
	at, err = RunAt(value(t, date))
	require.NoError(t, err)
	require.True(t, date.Equal(at))

	for _, bad := range []any{"tomorrow", int32(-1), int64(1700000000000), true} {
		_, err := RunAt(value(t, bad))
		require.ErrorIs(t, err, ErrInvalidRunAt, "run_at %v", bad)
	}
}

func TestTimeout(t *testing.T) {
	d, err := Timeout(bson.RawValue{}, 300*time.Second, time.Hour)
	require.NoError(t, err)
	require.Equal(t, 300*time.Second, d)

	d, err = Timeout(value(t, 1.5), time.Second, time.Hour)
	require.NoError(t, err)
	require.Equal(t, 1500*time.Millisecond, d)

	for _, bad := range []any{0, -3, "10", 7200} {
		_, err := Timeout(value(t, bad), time.Second, time.Hour)
		require.Error(t, err, "timeout %v", bad)
	}
}

func TestName(t *testing.T) {
	doc, _ := bson.Marshal(bson.D{{Key: "task", Value: "x"}})
	name, err := Name(doc)
	require.NoError(t, err)
	require.Equal(t, "x", name)

	doc, _ = bson.Marshal(bson.D{{Key: "task", Value: 3}})
	_, err = Name(doc)
	require.ErrorContains(t, err, "must be a string")

	doc, _ = bson.Marshal(bson.D{{Key: "other", Value: 3}})
	_, err = Name(doc)
	require.ErrorContains(t, err, "missing")
}
