// Package rubyrunner builds the command that runs a Ruby task with Bolt's runner script.
//
// The runner script, runner.rb, is embedded in the binary. It sets up the application's
// Bundler environment, load path and boot file, and then loads the task file. It reads
// the task document from stdin as MongoDB Extended JSON and calls the task's run method.
// The outcome goes to the result file named by BOLT_RESULT_FILE. docs/tasks.md describes
// the protocol for task authors.
//
// The script is passed to Ruby with -e rather than written to a cache folder. That needs
// no writable folder, cannot be replaced by another user between writing and running,
// and never runs a stale copy after an upgrade. The script is a few kilobytes, well
// below Linux's limit of 128 KiB for one argument. Backtrace frames of the runner itself
// show as "-e:LINE", and the runner removes them from the backtraces it reports.
package rubyrunner

import (
	_ "embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/bolt-runner/bolt/taskpath"
)

// DefaultBootFile is the boot file, relative to the application folder, that the runner
// loads when Options.BootFile is empty and the file exists.
const DefaultBootFile = "config/bolt.rb"

//go:embed runner.rb
var runnerLibrary string

// runnerScript runs one task in a fresh interpreter: the library and the line that runs it.
var runnerScript = runnerLibrary + "\nexit(BoltTaskRunner.main(ARGV))\n"

// LibrarySource returns the Ruby source of module BoltTaskRunner without the line that
// runs it, for programs that call its boot and run_task steps themselves.
func LibrarySource() string { return runnerLibrary }

// Options configures how Ruby tasks of one application are run.
type Options struct {
	// RubyPath is the Ruby interpreter; empty means "ruby" looked up in Bolt's PATH.
	RubyPath string
	// AppDir is the application folder. When it contains a Gemfile, the task runs
	// with the application's Bundler setup.
	AppDir string
	// LoadPath lists folders relative to AppDir that are added to Ruby's $LOAD_PATH,
	// first first; empty means taskpath.DefaultLoadPath.
	LoadPath []string
	// BootFile is loaded before the task file when it exists, relative to AppDir unless
	// absolute; empty means DefaultBootFile. A missing boot file is skipped, because
	// Bolt's configuration names config/bolt.rb whether or not an application has one.
	BootFile string
}

// Command returns the program and arguments that run the Ruby task. The caller runs
// them with the task document on stdin and BOLT_RESULT_FILE in the environment, as
// childproc.Run does. Command checks the options but does not start anything.
func Command(opts Options, task taskpath.Task) (path string, args []string, err error) {
	if task.Kind != taskpath.Ruby {
		return "", nil, fmt.Errorf("task %q is not a Ruby task (kind %s); run its file directly", task.Name, task.Kind)
	}
	if !filepath.IsAbs(task.Path) || task.Constant == "" {
		return "", nil, fmt.Errorf("task %q has no absolute file path or no constant; resolve it with taskpath.Resolve",
			task.Name)
	}

	paths, err := ResolvePaths(opts)
	if err != nil {
		return "", nil, err
	}

	// "--" ends Ruby's own options, so that a folder name that starts with "-" reaches
	// the script unchanged.
	args = []string{"-e", runnerScript, "--", paths.AppDir, task.Path, task.Constant, paths.BootFile}
	args = append(args, paths.LoadDirs...)

	return paths.Ruby, args, nil
}

// Paths are the absolute paths that running Ruby tasks of one application needs.
type Paths struct {
	// Ruby is the interpreter.
	Ruby string
	// AppDir is the application folder.
	AppDir string
	// BootFile is the boot file, or empty when it does not exist.
	BootFile string
	// LoadDirs are the load-path folders in order.
	LoadDirs []string
}

// ResolvePaths checks opts and returns its paths made absolute. It looks up the
// interpreter and checks whether the boot file exists at the time of the call.
func ResolvePaths(opts Options) (Paths, error) {
	rubyPath, err := findRuby(opts.RubyPath)
	if err != nil {
		return Paths{}, err
	}

	appDir, err := filepath.Abs(opts.AppDir)
	if err != nil {
		return Paths{}, fmt.Errorf("making application folder %q absolute: %w", opts.AppDir, err)
	}

	loadDirs, err := taskpath.LoadDirs(appDir, opts.LoadPath)
	if err != nil {
		return Paths{}, err
	}

	bootFile, err := findBootFile(appDir, opts.BootFile)
	if err != nil {
		return Paths{}, err
	}

	return Paths{Ruby: rubyPath, AppDir: appDir, BootFile: bootFile, LoadDirs: loadDirs}, nil
}

// BootFilePath returns the absolute path of the boot file bootFile (Options.BootFile)
// of the application in appDir, whether or not it exists, so that a watcher can notice
// when it appears.
func BootFilePath(appDir, bootFile string) string {
	if bootFile == "" {
		bootFile = DefaultBootFile
	}
	if filepath.IsAbs(bootFile) {
		return bootFile
	}

	return filepath.Join(appDir, bootFile)
}

// findRuby returns the absolute path of the Ruby interpreter.
func findRuby(rubyPath string) (string, error) {
	if rubyPath == "" {
		rubyPath = "ruby"
	}

	found, err := exec.LookPath(rubyPath)
	if err != nil {
		return "", fmt.Errorf("finding Ruby interpreter %q: %w; install Ruby (for example apt-get install ruby) "+
			"or set the Ruby path", rubyPath, err)
	}

	abs, err := filepath.Abs(found)
	if err != nil {
		return "", fmt.Errorf("making Ruby interpreter path %q absolute: %w", found, err)
	}

	return abs, nil
}

// findBootFile returns the absolute boot file, or "" when it does not exist.
func findBootFile(appDir, bootFile string) (string, error) {
	bootFile = BootFilePath(appDir, bootFile)

	info, err := os.Stat(bootFile)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "", nil
	case err != nil:
		return "", fmt.Errorf("checking boot file: %w", err)
	case info.IsDir():
		return "", fmt.Errorf("boot file %s is a folder; set the boot file to a Ruby file", bootFile)
	}

	return bootFile, nil
}
