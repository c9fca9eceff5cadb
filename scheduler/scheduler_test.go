package scheduler

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestPopDueOrdersByTimeThenInsertion(t *testing.T) {
	s := New()
	now := time.Unix(1000, 0)
	s.Add("late", "late", now.Add(time.Minute))
	s.Add("first", "first", time.Time{})
	s.Add("second", "second", time.Time{})
	s.Add("past", "past", now.Add(-time.Second))

	var order []string
	for {
		e, ok := s.PopDue(now)
		if !ok {
			break
		}
		order = append(order, e.Key)
	}
	require.Equal(t, []string{"first", "second", "past"}, order)
	require.Equal(t, 1, s.Len())
	next, ok := s.Next()
	require.True(t, ok)
	require.Equal(t, now.Add(time.Minute), next)
}

func TestAddMovesExistingEntry(t *testing.T) {
	s := New()
	now := time.Unix(1000, 0)
	s.Add("a", "a", now.Add(time.Hour))
	s.Add("a", "a", now)
	require.Equal(t, 1, s.Len())
	e, ok := s.PopDue(now)
	require.True(t, ok)
	require.Equal(t, "a", e.Key)
}

func TestRemove(t *testing.T) {
	s := New()
	s.Add("a", "a", time.Time{})
	s.Add("b", "b", time.Time{})
	s.Remove("a")
	s.Remove("missing")
	require.False(t, s.Contains("a"))
	e, ok := s.PopDue(time.Now())
	require.True(t, ok)
	require.Equal(t, "b", e.Key)
	_, ok = s.PopDue(time.Now())
	require.False(t, ok)
}
