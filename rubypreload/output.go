package rubypreload

// The pipes, tail buffer and result file below behave like childproc's unexported ones,
// so that a forked task's output and result are capped and read the same way as a
// spawned task's.
//
// TODO: childproc could export these parts; until then a change to its capping or
// result-file rules must be made here as well.

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/bolt-runner/bolt/childproc"
)

// readChunk is the size of each read from an output pipe.
const readChunk = 32 << 10

// openPipes creates the task's stdin, stdout and stderr pipes.
func (r *taskRun) openPipes(spec childproc.Spec) error {
	var err error
	if r.stdout, err = newOutputReader(spec.OutputLimit); err != nil {
		return fmt.Errorf("creating stdout pipe: %w", err)
	}
	if r.stderr, err = newOutputReader(spec.OutputLimit); err != nil {
		r.stdout.closeBoth()
		return fmt.Errorf("creating stderr pipe: %w", err)
	}
	if r.stdin, err = newInputWriter(spec.Stdin); err != nil {
		r.stdout.closeBoth()
		r.stderr.closeBoth()
		return fmt.Errorf("creating stdin pipe: %w", err)
	}

	return nil
}

func (r *taskRun) closeChildEnds() {
	_ = r.stdout.childEnd.Close()
	_ = r.stderr.childEnd.Close()
	_ = r.stdin.childEnd.Close()
}

func (r *taskRun) closeParentEnds() {
	_ = r.stdout.parentEnd.Close()
	_ = r.stderr.parentEnd.Close()
	_ = r.stdin.parentEnd.Close()
}

func (r *taskRun) startCopying() {
	r.stdout.startReading()
	r.stderr.startReading()
	r.stdin.startWriting()
}

// drain waits for both outputs to reach end-of-file, closing them after
// pipeDrainTimeout, and stops the stdin writer. It may be called once per run, after
// startCopying or after closeParentEnds.
func (r *taskRun) drain() {
	deadline := time.NewTimer(pipeDrainTimeout)
	defer deadline.Stop()

	for _, reader := range []*outputReader{r.stdout, r.stderr} {
		select {
		case <-reader.done:
		case <-deadline.C:
			// Closing unblocks the pending Read, so the reader goroutine ends.
			_ = r.stdout.parentEnd.Close()
			_ = r.stderr.parentEnd.Close()
		}
	}
	<-r.stdout.done
	<-r.stderr.done
	_ = r.stdout.parentEnd.Close()
	_ = r.stderr.parentEnd.Close()

	_ = r.stdin.parentEnd.Close()
	<-r.stdin.done
}

// outputReader reads one output pipe of the task into a tail buffer.
type outputReader struct {
	parentEnd *os.File
	childEnd  *os.File
	tail      tailBuffer
	done      chan struct{} // closed when reading has ended
}

func newOutputReader(limit int) (*outputReader, error) {
	parentEnd, childEnd, err := os.Pipe()
	if err != nil {
		return nil, err
	}

	return &outputReader{parentEnd: parentEnd, childEnd: childEnd, tail: tailBuffer{limit: limit}, done: make(chan struct{})}, nil
}

// startReading reads until end-of-file or until the parent end is closed.
func (r *outputReader) startReading() {
	go func() {
		defer close(r.done)

		chunk := make([]byte, readChunk)
		for {
			n, err := r.parentEnd.Read(chunk)
			r.tail.Write(chunk[:n])
			if err != nil {
				return
			}
		}
	}()
}

func (r *outputReader) closeBoth() {
	_ = r.childEnd.Close()
	_ = r.parentEnd.Close()
	close(r.done)
}

// inputWriter writes the task document to the task's stdin pipe.
type inputWriter struct {
	parentEnd *os.File
	childEnd  *os.File
	data      []byte
	done      chan struct{} // closed when writing has ended
}

func newInputWriter(data []byte) (*inputWriter, error) {
	childEnd, parentEnd, err := os.Pipe()
	if err != nil {
		return nil, err
	}

	return &inputWriter{parentEnd: parentEnd, childEnd: childEnd, data: data, done: make(chan struct{})}, nil
}

// startWriting writes the input and closes the pipe. A write error means the task
// closed stdin without reading all of it, which tasks may do.
func (w *inputWriter) startWriting() {
	go func() {
		defer close(w.done)

		_, _ = w.parentEnd.Write(w.data)
		_ = w.parentEnd.Close()
	}()
}

// tailBuffer keeps the last limit bytes written to it and counts the bytes it dropped.
type tailBuffer struct {
	limit   int
	buf     []byte
	start   int // index of the oldest byte once buf is full
	dropped int64
}

// Write appends p, dropping the oldest bytes beyond the limit.
func (b *tailBuffer) Write(p []byte) {
	if len(p) >= b.limit {
		b.dropped += int64(len(b.buf)) + int64(len(p)-b.limit)
		b.buf = append(b.buf[:0], p[len(p)-b.limit:]...)
		b.start = 0
		return
	}

	if room := b.limit - len(b.buf); room > 0 {
		n := min(room, len(p))
		b.buf = append(b.buf, p[:n]...)
		p = p[n:]
	}

	// buf is full: overwrite the oldest bytes, wrapping at the end of buf.
	b.dropped += int64(len(p))
	for len(p) > 0 {
		n := copy(b.buf[b.start:], p)
		p = p[n:]
		b.start = (b.start + n) % b.limit
	}
}

// Bytes returns a copy of the kept bytes, oldest first, or nil if nothing was written.
func (b *tailBuffer) Bytes() []byte {
	if len(b.buf) == 0 {
		return nil
	}

	out := make([]byte, 0, len(b.buf))
	out = append(out, b.buf[b.start:]...)

	return append(out, b.buf[:b.start]...)
}

// createResultFile creates an empty result file in a new private folder and returns the
// folder and the file's path.
func createResultFile() (dir, path string, err error) {
	dir, err = os.MkdirTemp("", "bolt-task-")
	if err != nil {
		return "", "", fmt.Errorf("creating result folder: %w", err)
	}

	path = filepath.Join(dir, "result.json")
	file, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err == nil {
		err = file.Close()
	}
	if err != nil {
		_ = os.RemoveAll(dir)
		return "", "", fmt.Errorf("creating result file: %w", err)
	}

	return dir, path, nil
}

// removeResultFile removes the result folder. Removing the file and the folder directly
// takes two system calls; os.RemoveAll, which takes several more, is needed only when the
// task left other files there. A failure leaves a temporary folder behind and harms
// nothing else.
func removeResultFile(dir, path string) {
	_ = os.Remove(path)
	if os.Remove(dir) != nil {
		_ = os.RemoveAll(dir)
	}
}

// readResultFile returns up to limit bytes of the result file and whether it was longer.
// A missing or empty file returns nil; anything but a regular file is an error.
func readResultFile(path string, limit int) ([]byte, bool, error) {
	file, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("opening result file: %w", err)
	}
	defer file.Close()

	info, err := file.Stat()
	if err != nil {
		return nil, false, fmt.Errorf("checking result file: %w", err)
	}
	if !info.Mode().IsRegular() {
		return nil, false, fmt.Errorf("result file %s is not a regular file (mode %s); write a JSON object to it",
			path, info.Mode())
	}

	data, err := io.ReadAll(io.LimitReader(file, int64(limit)+1))
	if err != nil {
		return nil, false, fmt.Errorf("reading result file: %w", err)
	}
	if len(data) == 0 {
		return nil, false, nil
	}
	if len(data) > limit {
		return data[:limit], true, nil
	}

	return data, false, nil
}
