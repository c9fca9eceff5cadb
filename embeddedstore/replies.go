package embeddedstore

import (
	"fmt"

	"go.mongodb.org/mongo-driver/v2/x/bsonx/bsoncore"
)

// MongoDB error codes that the gate returns itself. Names and numbers follow
// MongoDB's src/mongo/base/error_codes.yml, so drivers classify them as they
// would on MongoDB.
const (
	codeBadValue                = 2
	codeFailedToParse           = 9
	codeTypeMismatch            = 14
	codeCursorNotFound          = 43
	codeCommandNotSupported     = 115
	codeNotImplemented          = 238
	codeInvalidResumeToken      = 260
	codeChangeStreamHistoryLost = 286
)

var codeNames = map[int32]string{
	codeBadValue:                "BadValue",
	codeFailedToParse:           "FailedToParse",
	codeTypeMismatch:            "TypeMismatch",
	codeCursorNotFound:          "CursorNotFound",
	codeCommandNotSupported:     "CommandNotSupported",
	codeNotImplemented:          "NotImplemented",
	codeInvalidResumeToken:      "InvalidResumeToken",
	codeChangeStreamHistoryLost: "ChangeStreamHistoryLost",
}

// commandError is a failed command as the gate reports it to the client:
// a reply with ok: 0, code, codeName and errmsg.
type commandError struct {
	code    int32
	message string
}

func (e *commandError) Error() string {
	return fmt.Sprintf("%s (%d): %s", codeNames[e.code], e.code, e.message)
}

func newCommandError(code int32, format string, args ...any) *commandError {
	return &commandError{code: code, message: fmt.Sprintf(format, args...)}
}

func (e *commandError) document() bsoncore.Document {
	return bsoncore.NewDocumentBuilder().
		AppendDouble("ok", 0).
		AppendString("errmsg", e.message).
		AppendInt32("code", e.code).
		AppendString("codeName", codeNames[e.code]).
		Build()
}

// upstreamError is a reply with ok: 0 from FerretDB.
type upstreamError struct {
	reply bsoncore.Document
}

func (e *upstreamError) Error() string {
	message, _ := e.reply.Lookup("errmsg").StringValueOK()
	code, _ := e.reply.Lookup("code").AsInt64OK()
	return fmt.Sprintf("store error %d: %s", code, message)
}

// replyOK reports whether a command reply has ok: 1 in any numeric type.
func replyOK(reply bsoncore.Document) bool {
	ok, isNumber := reply.Lookup("ok").AsFloat64OK()
	return isNumber && ok == 1
}
