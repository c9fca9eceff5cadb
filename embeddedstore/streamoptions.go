package embeddedstore

import (
	"slices"

	"go.mongodb.org/mongo-driver/v2/x/bsonx/bsoncore"
)

// changeStreamSpec is the part of a $changeStream stage the gate supports.
type changeStreamSpec struct {
	resumeToken   bsoncore.Value // from resumeAfter or startAfter
	startAt       *clusterTime   // from startAtOperationTime
	lookupUpdates bool           // fullDocument: "updateLookup"
}

func parseChangeStreamOptions(options bsoncore.Document) (changeStreamSpec, *commandError) {
	var spec changeStreamSpec
	resumeOptions := 0

	elements, _ := options.Elements()
	for _, element := range elements {
		value := element.Value()

		switch key := element.Key(); key {
		case "resumeAfter", "startAfter":
			// Without invalidate events the two mean the same here.
			spec.resumeToken = value
			resumeOptions++

		case "startAtOperationTime":
			seconds, increment, ok := value.TimestampOK()
			if !ok {
				return spec, newCommandError(codeTypeMismatch, "$changeStream.startAtOperationTime must be a timestamp, not %s", value)
			}
			spec.startAt = &clusterTime{seconds: seconds, increment: increment}
			resumeOptions++

		case "fullDocument":
			mode, _ := value.StringValueOK()
			switch mode {
			case "default":
			case "updateLookup":
				spec.lookupUpdates = true
			default:
				return spec, newCommandError(codeNotImplemented,
					"$changeStream.fullDocument %s is not supported by the embedded store: use \"default\" or \"updateLookup\"", value)
			}

		case "fullDocumentBeforeChange":
			if mode, _ := value.StringValueOK(); mode != "off" {
				return spec, newCommandError(codeNotImplemented,
					"$changeStream.fullDocumentBeforeChange %s is not supported by the embedded store, which keeps no pre-images: use \"off\"", value)
			}

		case "allChangesForCluster":
			if all, _ := value.BooleanOK(); all {
				return spec, newCommandError(codeCommandNotSupported,
					"the embedded store supports change streams on a collection only, not allChangesForCluster")
			}

		case "showExpandedEvents":
			// Accepted and ignored: the gate reports no DDL events at all.

		default:
			return spec, newCommandError(codeFailedToParse, "unknown $changeStream option %q", key)
		}
	}

	if resumeOptions > 1 {
		return spec, newCommandError(codeBadValue,
			"$changeStream takes only one of resumeAfter, startAfter and startAtOperationTime")
	}
	return spec, nil
}

// startPosition returns the position in log after which the stream starts.
func (spec changeStreamSpec) startPosition(log *eventLog, ns namespace) (uint64, *commandError) {
	switch {
	case spec.resumeToken.Type != 0:
		return log.positionAfterToken(spec.resumeToken)
	case spec.startAt != nil:
		return log.positionAtTime(ns, *spec.startAt)
	default:
		return log.currentPosition(), nil
	}
}

// operationFilter holds the conditions on operationType from the $match
// stages after $changeStream. An event passes when it meets all of them.
type operationFilter []func(operation string) bool

func (f operationFilter) matches(operation string) bool {
	for _, condition := range f {
		if !condition(operation) {
			return false
		}
	}
	return true
}

// parseMatchStages accepts $match stages on operationType with equality,
// $eq, $ne, $in and $nin, and rejects every other stage or condition.
func parseMatchStages(stages []bsoncore.Value) (operationFilter, *commandError) {
	var filter operationFilter

	for _, stage := range stages {
		doc, _ := stage.DocumentOK()
		elements, _ := doc.Elements()
		if len(elements) != 1 || elements[0].Key() != "$match" {
			return nil, newCommandError(codeNotImplemented,
				"the embedded store supports only $match on operationType after $changeStream, not the stage %s", stage)
		}

		match, ok := elements[0].Value().DocumentOK()
		if !ok {
			return nil, newCommandError(codeFailedToParse, "$match must be a document, not %s", elements[0].Value())
		}
		conditions, cmdErr := parseOperationConditions(match)
		if cmdErr != nil {
			return nil, cmdErr
		}
		filter = append(filter, conditions...)
	}

	return filter, nil
}

func parseOperationConditions(match bsoncore.Document) (operationFilter, *commandError) {
	var filter operationFilter

	elements, _ := match.Elements()
	for _, element := range elements {
		if element.Key() != "operationType" {
			return nil, newCommandError(codeNotImplemented,
				"the embedded store supports $match after $changeStream on operationType only, not on %q", element.Key())
		}

		value := element.Value()
		if operation, ok := value.StringValueOK(); ok {
			filter = append(filter, func(op string) bool { return op == operation })
			continue
		}

		operators, ok := value.DocumentOK()
		if !ok {
			return nil, newCommandError(codeNotImplemented,
				"$match on operationType needs a string or one of $eq, $ne, $in and $nin, not %s", value)
		}
		conditions, cmdErr := parseOperators(operators)
		if cmdErr != nil {
			return nil, cmdErr
		}
		filter = append(filter, conditions...)
	}

	return filter, nil
}

func parseOperators(operators bsoncore.Document) (operationFilter, *commandError) {
	var filter operationFilter

	elements, _ := operators.Elements()
	for _, element := range elements {
		value := element.Value()

		switch element.Key() {
		case "$eq", "$ne":
			operation, ok := value.StringValueOK()
			if !ok {
				return nil, newCommandError(codeBadValue, "%s on operationType needs a string, not %s", element.Key(), value)
			}
			equal := element.Key() == "$eq"
			filter = append(filter, func(op string) bool { return (op == operation) == equal })

		case "$in", "$nin":
			operations, cmdErr := stringList(element.Key(), value)
			if cmdErr != nil {
				return nil, cmdErr
			}
			in := element.Key() == "$in"
			filter = append(filter, func(op string) bool { return slices.Contains(operations, op) == in })

		default:
			return nil, newCommandError(codeNotImplemented,
				"$match on operationType supports $eq, $ne, $in and $nin on the embedded store, not %s", element.Key())
		}
	}

	return filter, nil
}

func stringList(operator string, value bsoncore.Value) ([]string, *commandError) {
	array, ok := value.ArrayOK()
	if !ok {
		return nil, newCommandError(codeBadValue, "%s on operationType needs an array of strings, not %s", operator, value)
	}

	values, _ := array.Values()
	list := make([]string, 0, len(values))
	for _, v := range values {
		s, ok := v.StringValueOK()
		if !ok {
			return nil, newCommandError(codeBadValue, "%s on operationType needs an array of strings, not %s", operator, value)
		}
		list = append(list, s)
	}
	return list, nil
}
