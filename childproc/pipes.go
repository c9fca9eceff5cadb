package childproc

import (
	"os"
)

// readChunk is the size of each read from an output pipe. Reads reuse one buffer, so
// memory per output is readChunk plus the kept tail, whatever the child prints.
const readChunk = 32 << 10

// outputReader reads one output pipe of the child into a tail buffer.
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

	return &outputReader{
		parentEnd: parentEnd,
		childEnd:  childEnd,
		tail:      tailBuffer{limit: limit},
		done:      make(chan struct{}),
	}, nil
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

func (r *outputReader) closeChildEnd()  { _ = r.childEnd.Close() }
func (r *outputReader) closeParentEnd() { _ = r.parentEnd.Close() }

func (r *outputReader) closeBoth() {
	r.closeChildEnd()
	r.closeParentEnd()
}

// inputWriter writes the task's input to the child's stdin pipe.
type inputWriter struct {
	parentEnd *os.File
	childEnd  *os.File
	data      []byte
	done      chan struct{} // closed when writing has ended
}

// newInputWriter returns nil when there is no input, so that the child's stdin is
// /dev/null.
func newInputWriter(data []byte) (*inputWriter, error) {
	if len(data) == 0 {
		return nil, nil
	}

	childEnd, parentEnd, err := os.Pipe()
	if err != nil {
		return nil, err
	}

	return &inputWriter{
		parentEnd: parentEnd,
		childEnd:  childEnd,
		data:      data,
		done:      make(chan struct{}),
	}, nil
}

// startWriting writes the input and closes the pipe. Write errors are ignored: EPIPE
// means the child exited or closed stdin without reading everything, which tasks may
// do, and the Go runtime ignores SIGPIPE for pipes other than stdout and stderr.
func (w *inputWriter) startWriting() {
	go func() {
		defer close(w.done)

		_, _ = w.parentEnd.Write(w.data)
		_ = w.parentEnd.Close()
	}()
}

func (w *inputWriter) closeChildEnd()  { _ = w.childEnd.Close() }
func (w *inputWriter) closeParentEnd() { _ = w.parentEnd.Close() }

// tailBuffer keeps the last limit bytes written to it and counts the bytes it dropped.
// It grows up to limit and is then used as a ring.
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
