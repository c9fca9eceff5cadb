package taskpath

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// Kind is the way a task file is run.
type Kind int

const (
	// Ruby is a bolt/tasks/NAME.rb file, run by Bolt's Ruby runner.
	Ruby Kind = iota + 1
	// Executable is a bolt/tasks/NAME program with an execute bit, run directly.
	Executable
)

// String returns "ruby" or "executable".
func (k Kind) String() string {
	switch k {
	case Ruby:
		return "ruby"
	case Executable:
		return "executable"
	default:
		return fmt.Sprintf("Kind(%d)", int(k))
	}
}

// Task is a task name resolved to the file that implements it.
type Task struct {
	// Name is the validated task name, such as "reports/daily_sales".
	Name string
	// Kind is Ruby for a .rb file and Executable for a program.
	Kind Kind
	// Path is the absolute path of the task file with symbolic links evaluated.
	Path string
	// LoadDir is the absolute load-path folder, symbolic links evaluated, that contains Path.
	LoadDir string
	// Constant is the Ruby constant the file must define, such as
	// "Bolt::Tasks::Reports::DailySales". It is empty for executables.
	Constant string
}

// tasksDir is the folder inside each load-path folder that contains task files.
const tasksDir = "bolt/tasks"

// DefaultLoadPath returns the load path used when none is configured: "lib", then the
// application folder itself.
func DefaultLoadPath() []string {
	return []string{"lib", "."}
}

// LoadDirs returns the absolute folders of loadPath, in order, joined to appDir. An
// empty loadPath means DefaultLoadPath. Each entry must be a relative path that stays
// inside appDir, so absolute paths and ".." are rejected with ErrInvalidLoadPath.
// LoadDirs does not check that the folders exist.
func LoadDirs(appDir string, loadPath []string) ([]string, error) {
	_, dirs, err := loadDirs(appDir, loadPath)
	return dirs, err
}

// loadDirs is LoadDirs that also returns the absolute application folder.
func loadDirs(appDir string, loadPath []string) (string, []string, error) {
	if appDir == "" {
		return "", nil, fmt.Errorf("%w: the application folder is not set; set it to the folder that contains "+
			"bolt/tasks or lib/bolt/tasks", ErrInvalidLoadPath)
	}

	absApp, err := filepath.Abs(appDir)
	if err != nil {
		return "", nil, fmt.Errorf("making application folder %q absolute: %w", appDir, err)
	}

	if len(loadPath) == 0 {
		loadPath = DefaultLoadPath()
	}

	dirs := make([]string, 0, len(loadPath))
	for _, entry := range loadPath {
		if entry == "" || !filepath.IsLocal(entry) {
			return "", nil, fmt.Errorf("%w: entry %q must be a relative folder inside the application folder %s, without \"..\"",
				ErrInvalidLoadPath, entry, absApp)
		}
		dirs = append(dirs, filepath.Join(absApp, entry))
	}

	return absApp, dirs, nil
}

// Resolve finds the file for the task name. For each load-path folder in order it looks
// for bolt/tasks/NAME.rb, then for an executable bolt/tasks/NAME; the first file found
// decides. An empty loadPath means DefaultLoadPath.
//
// Errors wrap one of:
//   - ErrInvalidName: a bad name, or a Ruby task whose name cannot become a constant.
//   - ErrNotFound: no file; the message lists every place looked.
//   - ErrNotExecutable: the program has no execute bit.
//   - ErrOutsideLoadPath: a symbolic link leads outside its load-path folder.
//   - ErrInvalidLoadPath: a load-path entry or folder outside appDir.
func Resolve(appDir string, loadPath []string, name string) (Task, error) {
	if err := ValidateName(name); err != nil {
		return Task{}, err
	}

	absApp, dirs, err := loadDirs(appDir, loadPath)
	if err != nil {
		return Task{}, err
	}

	realApp, err := filepath.EvalSymlinks(absApp)
	if err != nil {
		return Task{}, fmt.Errorf("reading application folder %s: %w", absApp, err)
	}

	rel := filepath.FromSlash(tasksDir + "/" + name)

	var looked []string
	for _, dir := range dirs {
		task, found, err := lookIn(realApp, dir, rel, name, &looked)
		if err != nil || found {
			return task, err
		}
	}

	return Task{}, fmt.Errorf("%w: %q: looked for %s; create one of these files",
		ErrNotFound, name, strings.Join(looked, ", "))
}

// lookIn looks for the task in one load-path folder. It appends every path it checked to
// looked, and returns found=false when the folder has no file for the task.
func lookIn(realApp, dir, rel, name string, looked *[]string) (Task, bool, error) {
	rubyPath := filepath.Join(dir, rel+".rb")
	programPath := filepath.Join(dir, rel)

	realDir, err := filepath.EvalSymlinks(dir)
	if isNotExist(err) {
		*looked = append(*looked, rubyPath, programPath)
		return Task{}, false, nil
	}
	if err != nil {
		return Task{}, false, fmt.Errorf("reading load-path folder %s: %w", dir, err)
	}
	if !isWithin(realApp, realDir) {
		return Task{}, false, fmt.Errorf("%w: folder %s resolves to %s, outside the application folder %s; "+
			"replace the link with a folder inside the application",
			ErrInvalidLoadPath, dir, realDir, realApp)
	}

	for _, kind := range []Kind{Ruby, Executable} {
		path := programPath
		if kind == Ruby {
			path = rubyPath
		}

		info, err := os.Stat(path)
		if isNotExist(err) {
			*looked = append(*looked, path)
			continue
		}
		if err != nil {
			return Task{}, false, fmt.Errorf("checking task file %s: %w", path, err)
		}
		if !info.Mode().IsRegular() {
			// A folder such as bolt/tasks/reports holds namespaced tasks and is not a task.
			*looked = append(*looked, path+" (not a regular file)")
			continue
		}

		task, err := checkFile(realDir, path, name, kind, info)
		return task, true, err
	}

	return Task{}, false, nil
}

// checkFile checks a task file that exists and returns the resolved Task.
func checkFile(realDir, path, name string, kind Kind, info fs.FileInfo) (Task, error) {
	realPath, err := filepath.EvalSymlinks(path)
	if err != nil {
		return Task{}, fmt.Errorf("reading task file %s: %w", path, err)
	}
	if !isWithin(realDir, realPath) {
		return Task{}, fmt.Errorf("%w: task %q: %s resolves to %s, which is not inside %s; "+
			"replace the link with a file inside that folder",
			ErrOutsideLoadPath, name, path, realPath, realDir)
	}

	task := Task{Name: name, Kind: kind, Path: realPath, LoadDir: realDir}

	switch kind {
	case Ruby:
		if err := validateConstantParts(name); err != nil {
			return Task{}, err
		}
		task.Constant = Constant(name)
	case Executable:
		if info.Mode().Perm()&0o111 == 0 {
			return Task{}, fmt.Errorf("%w: task %q: %s is not executable: run chmod +x %s",
				ErrNotExecutable, name, path, path)
		}
	}

	return task, nil
}

// isNotExist reports whether err means that a path or one of its parents is missing.
// ENOTDIR covers "bolt/tasks/reports" being a file when looking for "reports/daily".
func isNotExist(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}

// isWithin reports whether path is parent or lies below it. Both must be clean
// absolute paths with symbolic links evaluated.
func isWithin(parent, path string) bool {
	rel, err := filepath.Rel(parent, path)
	return err == nil && filepath.IsLocal(rel)
}
