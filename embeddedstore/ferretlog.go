package embeddedstore

import (
	"context"
	"log/slog"

	"github.com/rs/zerolog"
)

// ferretLogHandler routes FerretDB's slog records to zerolog. FerretDB logs
// every failed command at WARN with the whole message, which is routine for
// the store's clients (a duplicate key, a missing collection), so records
// below ERROR become debug lines and ERROR stays an error.
type ferretLogHandler struct {
	log    zerolog.Logger
	attrs  []slog.Attr
	prefix string // group names joined with dots, each followed by a dot
}

func newFerretLogger(log zerolog.Logger) *slog.Logger {
	return slog.New(&ferretLogHandler{log: log})
}

func (h *ferretLogHandler) Enabled(_ context.Context, level slog.Level) bool {
	threshold := max(h.log.GetLevel(), zerolog.GlobalLevel())
	if level >= slog.LevelError {
		return threshold <= zerolog.ErrorLevel
	}
	return level >= slog.LevelInfo && threshold <= zerolog.DebugLevel
}

func (h *ferretLogHandler) Handle(_ context.Context, record slog.Record) error {
	event := h.log.Debug()
	if record.Level >= slog.LevelError {
		event = h.log.Error()
	}
	if event == nil {
		return nil
	}

	for _, attr := range h.attrs {
		event.Str(attr.Key, attr.Value.String())
	}
	record.Attrs(func(attr slog.Attr) bool {
		event.Str(h.prefix+attr.Key, attr.Value.String())
		return true
	})

	event.Msg("embedded store: ferretdb: " + record.Message)
	return nil
}

func (h *ferretLogHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	next := *h
	next.attrs = append([]slog.Attr(nil), h.attrs...)
	for _, attr := range attrs {
		attr.Key = h.prefix + attr.Key
		next.attrs = append(next.attrs, attr)
	}
	return &next
}

func (h *ferretLogHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	next := *h
	next.prefix = h.prefix + name + "."
	return &next
}
