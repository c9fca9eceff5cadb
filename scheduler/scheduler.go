// Package scheduler keeps the tasks a daemon has seen in a timer heap ordered by due time,
// then by the order in which they were added, so the reactor claims them in run_at, then
// insertion, order.
package scheduler

import (
	"container/heap"
	"time"
)

// Entry is one task waiting in the heap.
type Entry struct {
	Key string    // identity of the task, unique in the heap (see reactor.keyOf)
	ID  any       // the document's _id, as passed to Add
	Due time.Time // when the task may start; the zero time means now

	seq   uint64
	index int
}

// Scheduler is a timer heap of task entries. It is not safe for concurrent use: the reactor
// owns it from one goroutine.
type Scheduler struct {
	entries entryHeap
	byKey   map[string]*Entry
	nextSeq uint64
}

// New returns an empty scheduler.
func New() *Scheduler {
	return &Scheduler{byKey: map[string]*Entry{}}
}

// Add puts a task in the heap, or moves it to its new due time when the key is already there.
// A moved entry keeps its place among entries with the same due time.
func (s *Scheduler) Add(key string, id any, due time.Time) {
	if e, ok := s.byKey[key]; ok {
		e.Due = due
		e.ID = id
		heap.Fix(&s.entries, e.index)
		return
	}
	s.nextSeq++
	e := &Entry{Key: key, ID: id, Due: due, seq: s.nextSeq}
	s.byKey[key] = e
	heap.Push(&s.entries, e)
}

// Remove drops the entry with key, if present.
func (s *Scheduler) Remove(key string) {
	e, ok := s.byKey[key]
	if !ok {
		return
	}
	heap.Remove(&s.entries, e.index)
	delete(s.byKey, key)
}

// Contains reports whether key is in the heap.
func (s *Scheduler) Contains(key string) bool {
	_, ok := s.byKey[key]
	return ok
}

// PopDue removes and returns the earliest entry if it is due at now.
func (s *Scheduler) PopDue(now time.Time) (Entry, bool) {
	if len(s.entries) == 0 || s.entries[0].Due.After(now) {
		return Entry{}, false
	}
	e := heap.Pop(&s.entries).(*Entry)
	delete(s.byKey, e.Key)
	return *e, true
}

// Next returns the due time of the earliest entry; ok is false when the heap is empty.
func (s *Scheduler) Next() (due time.Time, ok bool) {
	if len(s.entries) == 0 {
		return time.Time{}, false
	}
	return s.entries[0].Due, true
}

// Len returns the number of entries.
func (s *Scheduler) Len() int { return len(s.entries) }

type entryHeap []*Entry

func (h entryHeap) Len() int { return len(h) }

func (h entryHeap) Less(i, j int) bool {
	if !h[i].Due.Equal(h[j].Due) {
		return h[i].Due.Before(h[j].Due)
	}
	return h[i].seq < h[j].seq
}

func (h entryHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = i
	h[j].index = j
}

func (h *entryHeap) Push(x any) {
	e := x.(*Entry)
	e.index = len(*h)
	*h = append(*h, e)
}

func (h *entryHeap) Pop() any {
	old := *h
	n := len(old)
	e := old[n-1]
	old[n-1] = nil
	*h = old[:n-1]
	return e
}
