package childproc

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// createResultFile creates an empty result file in a new private folder and returns the
// folder and the file's path. The folder lets a task replace the file atomically by
// renaming, and removing it cleans up whatever the task wrote there.
func createResultFile() (dir, path string, err error) {
	dir, err = os.MkdirTemp("", "bolt-task-")
	if err != nil {
		return "", "", fmt.Errorf("creating result folder: %w", err)
	}

	path = filepath.Join(dir, "result.json")
	file, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		_ = os.RemoveAll(dir)
		return "", "", fmt.Errorf("creating result file: %w", err)
	}
	if err := file.Close(); err != nil {
		_ = os.RemoveAll(dir)
		return "", "", fmt.Errorf("creating result file: %w", err)
	}

	return dir, path, nil
}

// readResultFile returns up to limit bytes of the result file and whether it was longer.
// A missing or empty file returns nil with no error. Anything other than a regular file,
// such as a FIFO that the child left there, is an error. O_NONBLOCK makes opening a FIFO
// return at once instead of waiting for a writer.
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
