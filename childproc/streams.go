package childproc

import (
	"fmt"
	"os"
	"time"
)

// Streams are the pipes and the result file that connect Bolt to one task process: the
// document written to stdin, stdout and stderr read continuously into capped tails, and the
// result file whose path the task gets in ResultFileEnv. Run uses them for the processes it
// starts. A runner whose task is started by another process (a preloaded Ruby that forks
// it) hands ChildFiles to that process, so its output and result are capped and read by the
// same rules.
type Streams struct {
	stdout *outputReader
	stderr *outputReader
	stdin  *inputWriter // nil when there is no input: the child's stdin is /dev/null

	resultDir   string
	resultPath  string
	resultLimit int
}

// OpenStreams creates the pipes and the result file for one run of spec. On error nothing
// is left open.
func OpenStreams(spec Spec) (*Streams, error) {
	spec = spec.withDefaults()
	resultDir, resultPath, err := createResultFile()
	if err != nil {
		return nil, err
	}
	s := &Streams{resultDir: resultDir, resultPath: resultPath, resultLimit: spec.ResultLimit}

	if s.stdout, err = newOutputReader(spec.OutputLimit); err != nil {
		s.removeResultDir()
		return nil, fmt.Errorf("creating stdout pipe: %w", err)
	}
	if s.stderr, err = newOutputReader(spec.OutputLimit); err != nil {
		s.stdout.closeBoth()
		s.removeResultDir()
		return nil, fmt.Errorf("creating stderr pipe: %w", err)
	}
	if s.stdin, err = newInputWriter(spec.Stdin); err != nil {
		s.stdout.closeBoth()
		s.stderr.closeBoth()
		s.removeResultDir()
		return nil, fmt.Errorf("creating stdin pipe: %w", err)
	}
	return s, nil
}

// ResultPath returns the path the task gets in ResultFileEnv.
func (s *Streams) ResultPath() string { return s.resultPath }

// ChildFiles returns the child's ends of the pipes. stdin is nil when there is no input,
// which means /dev/null.
func (s *Streams) ChildFiles() (stdin, stdout, stderr *os.File) {
	if s.stdin != nil {
		stdin = s.stdin.childEnd
	}
	return stdin, s.stdout.childEnd, s.stderr.childEnd
}

// Started closes this process's copies of the child's ends and starts copying. Call it
// once the child, or the process that will fork it, holds its own copies.
func (s *Streams) Started() {
	s.closeChildEnds()
	s.stdout.startReading()
	s.stderr.startReading()
	if s.stdin != nil {
		s.stdin.startWriting()
	}
}

// Abandon closes every pipe and removes the result file, for a child that never started.
func (s *Streams) Abandon() {
	s.closeChildEnds()
	s.stdout.closeParentEnd()
	s.stderr.closeParentEnd()
	if s.stdin != nil {
		s.stdin.closeParentEnd()
	}
	s.removeResultDir()
}

// Collect waits for both outputs to reach end-of-file, closing them after
// pipeDrainTimeout, stops the stdin writer, fills the output and result-file fields of
// result, and removes the result file. Call it once, after Started, when the child's
// process group is dead.
func (s *Streams) Collect(result *Result) {
	deadline := time.NewTimer(pipeDrainTimeout)
	defer deadline.Stop()

	for _, reader := range []*outputReader{s.stdout, s.stderr} {
		select {
		case <-reader.done:
		case <-deadline.C:
			// Closing unblocks the pending Read, so the reader goroutine ends.
			s.stdout.closeParentEnd()
			s.stderr.closeParentEnd()
		}
	}
	<-s.stdout.done
	<-s.stderr.done
	s.stdout.closeParentEnd()
	s.stderr.closeParentEnd()

	if s.stdin != nil {
		// Every reader of stdin in the group is dead, so a pending write has already
		// failed with EPIPE. The exception is a process that escaped the group and
		// keeps the pipe open. Closing our end ends the writer in both cases.
		s.stdin.closeParentEnd()
		<-s.stdin.done
	}

	result.Stdout, result.StdoutDropped = s.stdout.tail.Bytes(), s.stdout.tail.dropped
	result.Stderr, result.StderrDropped = s.stderr.tail.Bytes(), s.stderr.tail.dropped
	result.ResultJSON, result.ResultTruncated, result.ResultErr = readResultFile(s.resultPath, s.resultLimit)
	s.removeResultDir()
}

func (s *Streams) closeChildEnds() {
	s.stdout.closeChildEnd()
	s.stderr.closeChildEnd()
	if s.stdin != nil {
		s.stdin.closeChildEnd()
	}
}

// removeResultDir removes the result folder. Removing the file and the folder directly
// takes two system calls. os.RemoveAll, which takes several more, is needed only when the
// task left other files there.
func (s *Streams) removeResultDir() {
	_ = os.Remove(s.resultPath)
	if os.Remove(s.resultDir) != nil {
		_ = os.RemoveAll(s.resultDir)
	}
}
