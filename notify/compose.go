package notify

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"go.mongodb.org/mongo-driver/v2/bson"
)

// Limits on the parts of a mail. A longer part is cut, and a note gives the size that was
// shown and the full size. The limits keep a mail readable, and the body below about
// 150 KB, far below the message size limits of common mail servers (10 MB or more).
const (
	maxSubjectRunes       = 200
	maxSubjectReasonRunes = 100
	maxExceptionBytes     = 8 << 10
	maxBacktraceLines     = 100
	maxBacktraceBytes     = 32 << 10
	maxStderrBytes        = 16 << 10
	maxDocumentBytes      = 32 << 10
	maxOverrideBodyBytes  = 64 << 10
)

// ansiEscape matches terminal color and cursor sequences, which task output often has.
var ansiEscape = regexp.MustCompile(`\x1b\[[0-9;?]*[ -/]*[@-~]`)

// composition is the rendered text of a mail and the problems found in the document.
type composition struct {
	subject  string
	body     string
	problems []string
}

// compose renders the subject and body for an outcome. notes are shown in the body
// before the details, for example why the mail went to the default recipient.
func (n *Notifier) compose(o Outcome, notes []string) composition {
	kind := "failure"
	if o.Success {
		kind = "success"
	}
	subjectOverride, subjectProblem := emailOverride(o.Document, kind, "subject")
	bodyOverride, bodyProblem := emailOverride(o.Document, kind, "body")

	var c composition
	for _, problem := range []string{subjectProblem, bodyProblem} {
		if problem != "" {
			c.problems = append(c.problems, problem)
			notes = append(notes, problem)
		}
	}

	subject := subjectOverride
	if subject == "" {
		subject = n.defaultSubject(o)
	}
	c.subject = truncateRunes(sanitizeHeader(subject), maxSubjectRunes)

	var b strings.Builder
	if bodyOverride != "" {
		b.WriteString(limitHead(sanitizeBody(bodyOverride), maxOverrideBodyBytes))
	} else if o.Success {
		fmt.Fprintf(&b, "Task %s succeeded.", taskLabel(o))
	} else {
		fmt.Fprintf(&b, "Task %s failed.", taskLabel(o))
	}
	b.WriteString("\n\n")
	for _, note := range notes {
		b.WriteString(sanitizeBody(note))
		b.WriteString("\n\n")
	}
	n.writeDetails(&b, o)
	c.body = b.String()

	return c
}

func (n *Notifier) defaultSubject(o Outcome) string {
	if o.Success {
		return fmt.Sprintf("[Bolt] %s succeeded on %s", taskLabel(o), n.cfg.Host)
	}

	reason := firstLine(o.Ex)
	switch {
	case reason != "":
	case o.TimedOut:
		reason = "timed out"
	case o.ExitStatus != "":
		reason = o.ExitStatus
	default:
		reason = "no exception recorded"
	}
	reason = truncateRunes(sanitizeHeader(reason), maxSubjectReasonRunes)
	return fmt.Sprintf("[Bolt] %s failed on %s: %s", taskLabel(o), n.cfg.Host, reason)
}

// writeDetails writes the facts of the outcome as "Label: value" lines and sections.
func (n *Notifier) writeDetails(b *strings.Builder, o Outcome) {
	started := "unknown"
	if !o.Started.IsZero() {
		started = o.Started.Format(time.RFC3339)
	}
	fmt.Fprintf(b, "Task:        %s\n", sanitizeBody(o.Task))
	fmt.Fprintf(b, "Task ID:     %s\n", sanitizeBody(formatTaskID(o.TaskID)))
	fmt.Fprintf(b, "Host:        %s\n", n.cfg.Host)
	fmt.Fprintf(b, "Started:     %s\n", started)
	fmt.Fprintf(b, "Duration:    %s\n", o.Duration.Round(time.Millisecond))

	if !o.Success {
		fmt.Fprintf(b, "Exit status: %s\n", orNone(sanitizeBody(o.ExitStatus)))
		fmt.Fprintf(b, "Timed out:   %s\n", yesNo(o.TimedOut))
		writeSection(b, "Exception", orNone(limitHead(sanitizeBody(o.Ex), maxExceptionBytes)))
		writeSection(b, "Backtrace", orNone(formatBacktrace(o.Backtrace)))
		writeSection(b, "Stderr (end)", orNone(limitTail(sanitizeBody(o.Stderr), maxStderrBytes)))
	}

	writeSection(b, "Document", formatDocument(o.Document))
}

func writeSection(b *strings.Builder, title, text string) {
	fmt.Fprintf(b, "\n%s:\n%s\n", title, strings.TrimRight(text, "\n"))
}

// emailOverride returns the string at opts.email.<kind>.<field> in the document. A value
// of another type is ignored, and the returned problem describes it.
func emailOverride(doc bson.M, kind, field string) (value string, problem string) {
	var current any = doc
	path := []string{"opts", "email", kind, field}
	for _, key := range path {
		next, ok := lookupField(current, key)
		if !ok || next == nil {
			return "", ""
		}
		current = next
	}

	s, ok := current.(string)
	if !ok {
		return "", fmt.Sprintf("%s is a %T, not a string, so the default %s is used.",
			strings.Join(path, "."), current, field)
	}
	return s, ""
}

// lookupField returns a field of an embedded document, which the driver decodes as
// bson.D or bson.M depending on the type it decodes into.
func lookupField(doc any, key string) (any, bool) {
	switch d := doc.(type) {
	case bson.M:
		v, ok := d[key]
		return v, ok
	case map[string]any:
		v, ok := d[key]
		return v, ok
	case bson.D:
		for _, e := range d {
			if e.Key == key {
				return e.Value, true
			}
		}
	}
	return nil, false
}

func taskLabel(o Outcome) string {
	if name := sanitizeHeader(o.Task); name != "" {
		return name
	}
	return "with ID " + sanitizeHeader(formatTaskID(o.TaskID))
}

// formatTaskID renders a document _id the way a person would search for it.
func formatTaskID(id any) string {
	switch v := id.(type) {
	case nil:
		return "none"
	case bson.ObjectID:
		return v.Hex()
	case string:
		return v
	default:
		return fmt.Sprint(v)
	}
}

func formatBacktrace(lines []string) string {
	included := lines
	if len(included) > maxBacktraceLines {
		included = included[:maxBacktraceLines]
	}

	var b strings.Builder
	for _, line := range included {
		b.WriteString(sanitizeBody(line))
		b.WriteString("\n")
	}
	text := limitHead(b.String(), maxBacktraceBytes)
	if len(included) < len(lines) {
		text += fmt.Sprintf("[backtrace cut: the first %d of %d lines are shown]\n", len(included), len(lines))
	}
	return text
}

// formatDocument renders the task document as indented relaxed Extended JSON with the
// keys sorted (and _id first), so that two mails of the same task read alike.
func formatDocument(doc bson.M) string {
	if doc == nil {
		return "none"
	}
	data, err := bson.MarshalExtJSONIndent(sortedDocument(doc), false, false, "", "  ")
	if err != nil {
		return limitHead(sanitizeBody(fmt.Sprintf("%v", doc)), maxDocumentBytes) +
			fmt.Sprintf("\n[the document is shown with Go formatting because it could not be encoded as JSON: %v]", err)
	}
	return limitHead(sanitizeBody(string(data)), maxDocumentBytes)
}

// sortedDocument converts maps, at any depth, to bson.D with sorted keys.
func sortedDocument(v any) any {
	switch d := v.(type) {
	case bson.M:
		return sortedMap(d)
	case map[string]any:
		return sortedMap(d)
	case bson.D:
		out := make(bson.D, len(d))
		for i, e := range d {
			out[i] = bson.E{Key: e.Key, Value: sortedDocument(e.Value)}
		}
		return out
	case bson.A:
		out := make(bson.A, len(d))
		for i, e := range d {
			out[i] = sortedDocument(e)
		}
		return out
	case []any:
		out := make(bson.A, len(d))
		for i, e := range d {
			out[i] = sortedDocument(e)
		}
		return out
	default:
		return v
	}
}

func sortedMap(m map[string]any) bson.D {
	out := make(bson.D, 0, len(m))
	for k, v := range m {
		out = append(out, bson.E{Key: k, Value: sortedDocument(v)})
	}
	// _id sorts before every other key, because a reader looks for it first.
	slices.SortFunc(out, func(a, b bson.E) int {
		switch {
		case a.Key == b.Key:
			return 0
		case a.Key == "_id":
			return -1
		case b.Key == "_id":
			return 1
		default:
			return strings.Compare(a.Key, b.Key)
		}
	})
	return out
}

// sanitizeHeader makes s safe for a header: invalid UTF-8 is replaced, terminal escapes
// are removed, and control characters (CR and LF included) and runs of white space
// become one space.
func sanitizeHeader(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = ansiEscape.ReplaceAllString(s, "")
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
	return strings.Join(strings.Fields(s), " ")
}

// sanitizeBody makes s safe for a text/plain body: invalid UTF-8 is replaced, line
// endings become LF, and terminal escapes and control characters other than tab and
// LF are removed.
func sanitizeBody(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.ReplaceAll(s, "\r\n", "\n")
	s = ansiEscape.ReplaceAllString(s, "")
	return strings.Map(func(r rune) rune {
		switch {
		case r == '\r':
			return '\n'
		case r == '\n' || r == '\t':
			return r
		case unicode.IsControl(r):
			return -1
		default:
			return r
		}
	}, s)
}

// truncateHead returns at most maxBytes bytes from the start of s, cut at a rune
// boundary, and whether anything was cut.
func truncateHead(s string, maxBytes int) (string, bool) {
	if len(s) <= maxBytes {
		return s, false
	}
	cut := maxBytes
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut], true
}

// limitHead keeps the start of s and appends a note when it cuts.
func limitHead(s string, maxBytes int) string {
	head, cut := truncateHead(s, maxBytes)
	if !cut {
		return s
	}
	return fmt.Sprintf("%s\n[cut: the first %d of %d bytes are shown]", head, len(head), len(s))
}

// limitTail keeps the end of s, where the last output of a failing task is, and puts a
// note in front when it cuts.
func limitTail(s string, maxBytes int) string {
	if len(s) <= maxBytes {
		return s
	}
	start := len(s) - maxBytes
	for start < len(s) && !utf8.RuneStart(s[start]) {
		start++
	}
	return fmt.Sprintf("[cut: the last %d of %d bytes are shown]\n%s", len(s)-start, len(s), s[start:])
}

func truncateRunes(s string, maxRunes int) string {
	if utf8.RuneCountInString(s) <= maxRunes {
		return s
	}
	runes := []rune(s)
	return string(runes[:maxRunes-1]) + "…"
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		s = s[:i]
	}
	return s
}

func orNone(s string) string {
	if strings.TrimSpace(s) == "" {
		return "none recorded"
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
