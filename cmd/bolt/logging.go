package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"
)

// logFile is the daemon's log file. Reopen lets logrotate move the file away and Bolt carry
// on in a new one.
type logFile struct {
	mu   sync.Mutex
	path string
	f    *os.File
}

func openLogFile(path string) (*logFile, error) {
	l := &logFile{path: path}
	return l, l.Reopen()
}

// Reopen closes the current file and opens path again, creating it if it was moved.
func (l *logFile) Reopen() error {
	if err := os.MkdirAll(filepath.Dir(l.path), 0o755); err != nil {
		return fmt.Errorf("creating log folder: %w", err)
	}
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("opening log file: %w", err)
	}
	l.mu.Lock()
	old := l.f
	l.f = f
	l.mu.Unlock()
	if old != nil {
		_ = old.Close()
	}
	return nil
}

func (l *logFile) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Write(p)
}

func (l *logFile) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Close()
}

// newLogger writes plain `time LEVEL message key=value` lines to the file, and the same in
// colour to the terminal when stderr is one.
func newLogger(file io.Writer, level string) zerolog.Logger {
	writers := []io.Writer{zerolog.ConsoleWriter{Out: file, NoColor: true, TimeFormat: time.RFC3339Nano}}
	if isatty.IsTerminal(os.Stderr.Fd()) {
		writers = append(writers, zerolog.ConsoleWriter{Out: os.Stderr, TimeFormat: time.TimeOnly})
	}
	zerolog.TimeFieldFormat = time.RFC3339Nano
	lvl, err := zerolog.ParseLevel(level)
	if err != nil {
		lvl = zerolog.InfoLevel
	}
	return zerolog.New(zerolog.MultiLevelWriter(writers...)).Level(lvl).With().Timestamp().Logger()
}
