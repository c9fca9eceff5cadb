// Package taskdoc reads the fields Bolt interprets in a task document and enforces their rules.
// Every rule violation is an error whose message can go into the task's `ex` as it is.
package taskdoc

import (
	"errors"
	"fmt"
	"math"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
)

// Field names Bolt reads or writes.
const (
	FieldTask         = "task"
	FieldTimeout      = "timeout"
	FieldRunAt        = "run_at"
	FieldEmail        = "email"
	FieldDispatched   = "dispatched"
	FieldDispatchedBy = "dispatched_by"
	FieldDispatchedAt = "dispatched_at"
	FieldAttempts     = "attempts"
	FieldSuccess      = "success"
	FieldEx           = "ex"
	FieldBacktrace    = "backtrace"
)

// Reserved lists the fields a task cannot set by handing fields back.
var Reserved = map[string]bool{
	"_id": true, FieldDispatched: true, FieldDispatchedBy: true, FieldDispatchedAt: true,
	FieldAttempts: true, FieldSuccess: true, FieldEx: true, FieldBacktrace: true,
}

// MaxEpochSeconds is the largest numeric run_at read as seconds (the year 5138). A larger
// number is almost surely milliseconds, and is rejected rather than guessed at.
const MaxEpochSeconds = 1e11

// ErrInvalidRunAt marks a run_at that Bolt cannot schedule; the task is failed, never left waiting.
var ErrInvalidRunAt = errors.New("invalid run_at")

// RunAt returns when a task may start. A missing or null run_at means now (the zero time).
// Numbers are epoch seconds (integer or float); BSON dates are taken as they are.
func RunAt(v bson.RawValue) (time.Time, error) {
	switch v.Type {
	case 0, bson.TypeNull, bson.TypeUndefined:
		return time.Time{}, nil
	case bson.TypeDateTime:
		return v.Time(), nil
	}

	f, ok := number(v)
	if !ok {
		return time.Time{}, fmt.Errorf("%w: run_at must be epoch seconds (a number) or a date, got %s %s", ErrInvalidRunAt, v.Type, short(v))
	}
	switch {
	case math.IsNaN(f) || math.IsInf(f, 0):
		return time.Time{}, fmt.Errorf("%w: run_at must be a finite number of epoch seconds, got %v", ErrInvalidRunAt, f)
	case f < 0:
		return time.Time{}, fmt.Errorf("%w: run_at must not be negative, got %v", ErrInvalidRunAt, f)
	case f >= MaxEpochSeconds:
		return time.Time{}, fmt.Errorf("%w: run_at %v looks like milliseconds; give epoch seconds (divide by 1000)", ErrInvalidRunAt, f)
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)), nil
}

// Timeout returns the task's time limit. A missing timeout gives def; anything but a positive
// number of seconds up to max is an error.
func Timeout(v bson.RawValue, def, max time.Duration) (time.Duration, error) {
	if v.Type == 0 {
		return def, nil
	}
	f, ok := number(v)
	if !ok {
		return 0, fmt.Errorf("invalid timeout: must be a number of seconds, got %s %s", v.Type, short(v))
	}
	if math.IsNaN(f) || f <= 0 {
		return 0, fmt.Errorf("invalid timeout: must be greater than 0 seconds, got %v", f)
	}
	if f > max.Seconds() {
		return 0, fmt.Errorf("invalid timeout: %v seconds is more than the maximum of %v (setting max_timeout)", f, max.Seconds())
	}
	return time.Duration(f * float64(time.Second)), nil
}

// Name returns the task's name, or an error when the field is missing or not a string.
func Name(doc bson.Raw) (string, error) {
	v, err := doc.LookupErr(FieldTask)
	if err != nil {
		return "", errors.New("invalid task document: the mandatory field task is missing")
	}
	s, ok := v.StringValueOK()
	if !ok {
		return "", fmt.Errorf("invalid task document: task must be a string, got %s %s", v.Type, short(v))
	}
	return s, nil
}

func number(v bson.RawValue) (float64, bool) {
	switch v.Type {
	case bson.TypeInt32:
		return float64(v.Int32()), true
	case bson.TypeInt64:
		return float64(v.Int64()), true
	case bson.TypeDouble:
		return v.Double(), true
	}
	return 0, false
}

// short renders a value for an error message, cut to a readable length.
func short(v bson.RawValue) string {
	s := v.String()
	if len(s) > 80 {
		s = s[:80] + "..."
	}
	return s
}
