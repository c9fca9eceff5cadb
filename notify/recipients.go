package notify

import (
	"errors"
	"fmt"
	"net/mail"
	"strings"
	"unicode"
	"unicode/utf8"

	"go.mongodb.org/mongo-driver/v2/bson"
)

// maxQuotedValueBytes limits how much of a rejected email value is quoted in logs and mails.
const maxQuotedValueBytes = 200

// recipient is one address of a pending mail, as stored in the notification document.
type recipient struct {
	Name    string `bson:"name,omitempty"`
	Address string `bson:"address"`
}

func (r recipient) mailAddress() *mail.Address {
	return &mail.Address{Name: r.Name, Address: r.Address}
}

func (r recipient) String() string {
	return r.mailAddress().String()
}

// checkHeaderSafe rejects text that cannot go into a header unchanged: invalid UTF-8, or
// a control character such as CR or LF that could end the header and start another.
func checkHeaderSafe(s string) error {
	if !utf8.ValidString(s) {
		return errors.New("it contains invalid UTF-8")
	}
	if i := strings.IndexFunc(s, unicode.IsControl); i >= 0 {
		r, _ := utf8.DecodeRuneInString(s[i:])
		return fmt.Errorf("it contains the control character %q", r)
	}
	return nil
}

func parseSingleAddress(s string) (*mail.Address, error) {
	if err := checkHeaderSafe(s); err != nil {
		return nil, err
	}
	return mail.ParseAddress(s)
}

// parseAddressList parses one or more comma-separated addresses, with or without
// display names ("Ann <ann@example.com>, bob@example.com").
//
// NOTE: addresses with non-ASCII characters are accepted, but only a server with
// SMTPUTF8 takes them. Others reply 5xx, which gives up on that recipient.
func parseAddressList(s string) ([]*mail.Address, error) {
	if err := checkHeaderSafe(s); err != nil {
		return nil, err
	}
	return mail.ParseAddressList(s)
}

// addRecipients appends the addresses of list that rcpts does not contain yet. Addresses
// are compared without regard to case.
func addRecipients(rcpts []recipient, list []*mail.Address) []recipient {
	for _, a := range list {
		duplicate := false
		for _, r := range rcpts {
			if strings.EqualFold(r.Address, a.Address) {
				duplicate = true
				break
			}
		}
		if !duplicate {
			rcpts = append(rcpts, recipient{Name: a.Name, Address: a.Address})
		}
	}
	return rcpts
}

// taskRecipients reads the email field of a task document: one string or an array of
// strings, each with one or more comma-separated addresses. It returns the valid
// addresses, a description of every value it skipped, and whether the field was set
// to anything but null, "" or [].
func taskRecipients(doc bson.M) (rcpts []recipient, problems []string, present bool) {
	value, ok := doc["email"]
	if !ok || value == nil {
		return nil, nil, false
	}

	var values []any
	switch v := value.(type) {
	case string:
		values = []any{v}
	case bson.A:
		values = v
	case []any:
		values = v
	case []string:
		for _, s := range v {
			values = append(values, s)
		}
	default:
		problem := fmt.Sprintf("the email field is a %T, but it must be a string or an array of strings", value)
		return nil, []string{problem}, true
	}

	for i, element := range values {
		s, ok := element.(string)
		if !ok {
			problems = append(problems, fmt.Sprintf("email[%d] is a %T, not a string", i, element))
			present = true
			continue
		}
		if strings.TrimSpace(s) == "" {
			continue
		}
		present = true

		list, err := parseAddressList(s)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s is not a valid address: %v", quoteValue(s), err))
			continue
		}
		rcpts = addRecipients(rcpts, list)
	}
	return rcpts, problems, present
}

// quoteValue quotes s for a log line or mail body, escaping control characters and
// shortening long values.
func quoteValue(s string) string {
	if len(s) > maxQuotedValueBytes {
		s, _ = truncateHead(s, maxQuotedValueBytes)
		return fmt.Sprintf("%q (shortened)", s)
	}
	return fmt.Sprintf("%q", s)
}

// isSilent reports whether the document turns off the success mail. Only the boolean
// true counts, so that a string such as "false" never silences a task.
func isSilent(doc bson.M) bool {
	silent, ok := doc["silent"].(bool)
	return ok && silent
}
