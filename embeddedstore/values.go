package embeddedstore

import (
	"fmt"
	"math"

	"go.mongodb.org/mongo-driver/v2/x/bsonx/bsoncore"
)

// valueRule selects the values a part of a command may not contain.
type valueRule int

const (
	// rejectUndecodable rejects NaN and Decimal128 anywhere in a message.
	// FerretDB v1.24.2 cannot decode them and closes the client's
	// connection instead of returning an error.
	rejectUndecodable valueRule = iota

	// rejectUnstorable also rejects +Infinity and -Infinity, which FerretDB
	// decodes but cannot store. It applies to documents that are written.
	rejectUnstorable
)

// unsupportedValueError names the field that holds a value the embedded
// store cannot keep, and why.
type unsupportedValueError struct {
	path  string
	value string
}

func (e *unsupportedValueError) Error() string {
	return fmt.Sprintf(
		"field %q contains %s, which the embedded store (FerretDB on SQLite) cannot store; "+
			"store null, a string or a finite number instead, or use MongoDB",
		e.path, e.value)
}

// findUnsupportedValue walks doc, nested documents and arrays included, and
// returns the first value that rule rejects, or nil.
func findUnsupportedValue(doc bsoncore.Document, rule valueRule) *unsupportedValueError {
	return walkValues(doc, "", rule, "")
}

// walkValues checks every element of doc except a top-level element named
// skip. Paths of nested values are joined with dots, array indexes included.
func walkValues(doc []byte, prefix string, rule valueRule, skip string) *unsupportedValueError {
	elements, err := bsoncore.Document(doc).Elements()
	if err != nil {
		// parseOpMsg validated every document, so only a value that is not
		// a document gets here, and it contains nothing to check.
		return nil
	}

	for _, element := range elements {
		if skip != "" && element.Key() == skip {
			continue
		}

		path := element.Key()
		if prefix != "" {
			path = prefix + "." + path
		}

		value := element.Value()
		switch value.Type {
		case bsoncore.TypeDouble:
			if problem := describeDouble(value.Double(), rule); problem != "" {
				return &unsupportedValueError{path: path, value: problem}
			}
		case bsoncore.TypeDecimal128:
			return &unsupportedValueError{path: path, value: "a Decimal128 value"}
		case bsoncore.TypeEmbeddedDocument, bsoncore.TypeArray:
			if problem := walkValues(value.Data, path, rule, ""); problem != nil {
				return problem
			}
		}
	}

	return nil
}

func describeDouble(f float64, rule valueRule) string {
	switch {
	case math.IsNaN(f):
		return "NaN"
	case rule == rejectUnstorable && math.IsInf(f, 1):
		return "+Infinity"
	case rule == rejectUnstorable && math.IsInf(f, -1):
		return "-Infinity"
	}
	return ""
}

// checkStatement applies the rules for one write statement: the document
// that is written must be storable, and everything else decodable.
func checkStatement(command string, statement bsoncore.Document) *unsupportedValueError {
	switch command {
	case "insert":
		return findUnsupportedValue(statement, rejectUnstorable)
	case "update":
		update := statement.Lookup("u")
		if update.Type == bsoncore.TypeEmbeddedDocument || update.Type == bsoncore.TypeArray {
			if problem := walkValues(update.Data, "", rejectUnstorable, ""); problem != nil {
				return problem
			}
		}
		return walkValues(statement, "", rejectUndecodable, "u")
	default:
		return findUnsupportedValue(statement, rejectUndecodable)
	}
}

// writeErrorDocument builds a writeErrors entry for a statement the gate
// rejected before it reached FerretDB.
func writeErrorDocument(index int, problem *unsupportedValueError) bsoncore.Document {
	return bsoncore.NewDocumentBuilder().
		AppendInt32("index", int32(index)).
		AppendInt32("code", codeBadValue).
		AppendString("codeName", codeNames[codeBadValue]).
		AppendString("errmsg", problem.Error()).
		Build()
}
