// Package taskpath validates task names and finds the file that implements a task.
//
// A task name such as "reports/daily_sales" maps to a file under a load-path folder of
// the application: bolt/tasks/reports/daily_sales.rb (a Ruby task) or an executable
// bolt/tasks/reports/daily_sales (any program). The name is validated before any file
// is touched, so a document with a bad name can never load or execute anything.
package taskpath

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// MaxNameLength is the maximum length of a task name in bytes.
const MaxNameLength = 200

// Errors returned by ValidateName and Resolve. Match them with errors.Is. The wrapping
// error's message names the value and the fix.
var (
	ErrInvalidName     = errors.New("invalid task name")
	ErrNotFound        = errors.New("task not found")
	ErrNotExecutable   = errors.New("task file is not executable")
	ErrOutsideLoadPath = errors.New("task file resolves outside the load path")
	ErrInvalidLoadPath = errors.New("invalid load path")
)

// nameRule is the rule quoted in every ErrInvalidName message.
const nameRule = `use lower-case letters, digits and underscores, with "/" between namespace parts ` +
	`(for example "reports/daily_sales"), no empty part, no leading or trailing "/", ` +
	`at most 200 characters`

var namePattern = regexp.MustCompile(`^[a-z0-9_]+(/[a-z0-9_]+)*$`)

// ValidateName returns an error wrapping ErrInvalidName unless name is a valid task
// name: parts of [a-z0-9_]+ separated by "/", at most MaxNameLength bytes.
func ValidateName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: the name is empty: %s", ErrInvalidName, nameRule)
	}

	if len(name) > MaxNameLength {
		return fmt.Errorf("%w %q: %d characters is longer than the maximum of %d: %s",
			ErrInvalidName, truncateForMessage(name), len(name), MaxNameLength, nameRule)
	}

	if !namePattern.MatchString(name) {
		return fmt.Errorf("%w %q: %s", ErrInvalidName, name, nameRule)
	}

	return nil
}

// Constant returns the Ruby constant that a Ruby task must define:
// "reports/daily_sales" becomes "Bolt::Tasks::Reports::DailySales". Each part is split
// on "_" and each piece is capitalized; digits are kept. Constant does not validate
// the name, so call ValidateName first.
func Constant(name string) string {
	parts := strings.Split(name, "/")

	var b strings.Builder
	b.WriteString("Bolt::Tasks")
	for _, part := range parts {
		b.WriteString("::")
		b.WriteString(camelize(part))
	}

	return b.String()
}

// camelize turns "daily_sales" into "DailySales".
func camelize(part string) string {
	var b strings.Builder
	for _, piece := range strings.Split(part, "_") {
		if piece == "" {
			continue
		}
		b.WriteString(strings.ToUpper(piece[:1]))
		b.WriteString(piece[1:])
	}

	return b.String()
}

// validateConstantParts returns an error when a part of name cannot become a Ruby
// constant name, such as "2fa" or "_", because Ruby constants start with an upper-case
// letter. Only Ruby tasks need a constant, so executables may use such names.
func validateConstantParts(name string) error {
	for _, part := range strings.Split(name, "/") {
		camel := camelize(part)
		if camel == "" || camel[0] < 'A' || camel[0] > 'Z' {
			return fmt.Errorf("%w: part %q of Ruby task %q becomes %q, which is not a valid Ruby constant "+
				"because it does not start with a letter; rename the task so that each part starts with a letter",
				ErrInvalidName, part, name, camel)
		}
	}

	return nil
}

// truncateForMessage shortens a long value so that an error message stays readable.
func truncateForMessage(value string) string {
	const keep = 60
	if len(value) <= keep {
		return value
	}

	return value[:keep] + "..."
}
