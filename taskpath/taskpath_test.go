package taskpath

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestValidateNameAccepts(t *testing.T) {
	t.Parallel()

	for _, name := range []string{
		"x",
		"send_report",
		"reports/daily_sales",
		"a1/b_2/c3",
		"_private",
		"2fa",
		strings.Repeat("a", MaxNameLength),
	} {
		require.NoError(t, ValidateName(name), "name %q", name)
	}
}

func TestValidateNameRejects(t *testing.T) {
	t.Parallel()

	for _, name := range []string{
		"",
		"/x",
		"x/",
		"a//b",
		"Reports",
		"a-b",
		"a.b",
		"x.rb",
		"../x",
		"a/../b",
		"./x",
		" x",
		"x\n",
		"caf\u00e9",
		strings.Repeat("a", MaxNameLength+1),
	} {
		err := ValidateName(name)
		require.ErrorIs(t, err, ErrInvalidName, "name %q", name)
		require.Contains(t, err.Error(), "lower-case letters, digits and underscores", "name %q", name)
		if name != "" && len(name) <= MaxNameLength {
			require.Contains(t, err.Error(), `"`+strings.ReplaceAll(name, "\n", `\n`)+`"`, "message should quote the name")
		}
	}
}

func TestValidateNameTooLongMessage(t *testing.T) {
	t.Parallel()

	err := ValidateName(strings.Repeat("a", 500))
	require.ErrorIs(t, err, ErrInvalidName)
	require.Contains(t, err.Error(), "500 characters")
	require.Contains(t, err.Error(), "maximum of 200")
	require.Less(t, len(err.Error()), 400, "a long name should be shortened in the message")
}

func TestConstant(t *testing.T) {
	t.Parallel()

	cases := map[string]string{
		"x":                   "Bolt::Tasks::X",
		"send_report":         "Bolt::Tasks::SendReport",
		"reports/daily_sales": "Bolt::Tasks::Reports::DailySales",
		"v2_import/step_1":    "Bolt::Tasks::V2Import::Step1",
		"_private":            "Bolt::Tasks::Private",
		"a__b":                "Bolt::Tasks::AB",
	}
	for name, want := range cases {
		require.Equal(t, want, Constant(name), "name %q", name)
	}
}

// writeFile creates path with content and mode, creating parent folders.
func writeFile(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()

	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	require.NoError(t, os.WriteFile(path, []byte(content), mode))
	require.NoError(t, os.Chmod(path, mode))
}

// newApp returns a fresh application folder with symbolic links evaluated, so that
// expected paths compare equal to resolved ones.
func newApp(t *testing.T) string {
	t.Helper()

	dir, err := filepath.EvalSymlinks(t.TempDir())
	require.NoError(t, err)

	return dir
}

func TestResolveRubyTask(t *testing.T) {
	t.Parallel()

	app := newApp(t)
	writeFile(t, filepath.Join(app, "lib/bolt/tasks/reports/daily_sales.rb"), "", 0o644)

	task, err := Resolve(app, nil, "reports/daily_sales")
	require.NoError(t, err)
	require.Equal(t, Task{
		Name:     "reports/daily_sales",
		Kind:     Ruby,
		Path:     filepath.Join(app, "lib/bolt/tasks/reports/daily_sales.rb"),
		LoadDir:  filepath.Join(app, "lib"),
		Constant: "Bolt::Tasks::Reports::DailySales",
	}, task)
}

func TestResolveExecutable(t *testing.T) {
	t.Parallel()

	app := newApp(t)
	writeFile(t, filepath.Join(app, "bolt/tasks/cleanup"), "#!/bin/sh\n", 0o755)

	task, err := Resolve(app, nil, "cleanup")
	require.NoError(t, err)
	require.Equal(t, Executable, task.Kind)
	require.Equal(t, filepath.Join(app, "bolt/tasks/cleanup"), task.Path)
	require.Equal(t, app, task.LoadDir)
	require.Empty(t, task.Constant)
}

func TestResolveRubyBeforeExecutable(t *testing.T) {
	t.Parallel()

	app := newApp(t)
	writeFile(t, filepath.Join(app, "lib/bolt/tasks/x.rb"), "", 0o644)
	writeFile(t, filepath.Join(app, "lib/bolt/tasks/x"), "#!/bin/sh\n", 0o755)

	task, err := Resolve(app, nil, "x")
	require.NoError(t, err)
	require.Equal(t, Ruby, task.Kind)
}

func TestResolveLoadPathOrder(t *testing.T) {
	t.Parallel()

	app := newApp(t)
	writeFile(t, filepath.Join(app, "lib/bolt/tasks/x"), "#!/bin/sh\n", 0o755)
	writeFile(t, filepath.Join(app, "bolt/tasks/x.rb"), "", 0o644)

	task, err := Resolve(app, nil, "x")
	require.NoError(t, err)
	require.Equal(t, Executable, task.Kind, "the first load-path folder should win")
	require.Equal(t, filepath.Join(app, "lib"), task.LoadDir)

	task, err = Resolve(app, []string{".", "lib"}, "x")
	require.NoError(t, err)
	require.Equal(t, Ruby, task.Kind)
	require.Equal(t, app, task.LoadDir)
}

func TestResolveNotExecutable(t *testing.T) {
	t.Parallel()

	app := newApp(t)
	path := filepath.Join(app, "lib/bolt/tasks/cleanup")
	writeFile(t, path, "#!/bin/sh\n", 0o644)

	_, err := Resolve(app, nil, "cleanup")
	require.ErrorIs(t, err, ErrNotExecutable)
	require.Contains(t, err.Error(), "is not executable: run chmod +x "+path)
}

func TestResolveNotFoundListsPlaces(t *testing.T) {
	t.Parallel()

	app := newApp(t)
	require.NoError(t, os.MkdirAll(filepath.Join(app, "lib"), 0o755))

	_, err := Resolve(app, nil, "reports/daily")
	require.ErrorIs(t, err, ErrNotFound)
	for _, path := range []string{
		"lib/bolt/tasks/reports/daily.rb",
		"lib/bolt/tasks/reports/daily",
		"bolt/tasks/reports/daily.rb",
		"bolt/tasks/reports/daily",
	} {
		require.Contains(t, err.Error(), filepath.Join(app, path))
	}
}

func TestResolveDirectoryIsNotTask(t *testing.T) {
	t.Parallel()

	app := newApp(t)
	writeFile(t, filepath.Join(app, "lib/bolt/tasks/reports/daily.rb"), "", 0o644)

	_, err := Resolve(app, nil, "reports")
	require.ErrorIs(t, err, ErrNotFound)
	require.Contains(t, err.Error(), "not a regular file")
}

func TestResolveFileAsNamespace(t *testing.T) {
	t.Parallel()

	app := newApp(t)
	writeFile(t, filepath.Join(app, "lib/bolt/tasks/reports"), "#!/bin/sh\n", 0o755)

	_, err := Resolve(app, nil, "reports/daily")
	require.ErrorIs(t, err, ErrNotFound)
}

func TestResolveSymlinkInsideLoadPath(t *testing.T) {
	t.Parallel()

	app := newApp(t)
	target := filepath.Join(app, "lib/shared/cleanup.rb")
	writeFile(t, target, "", 0o644)
	link := filepath.Join(app, "lib/bolt/tasks/cleanup.rb")
	require.NoError(t, os.MkdirAll(filepath.Dir(link), 0o755))
	require.NoError(t, os.Symlink("../../shared/cleanup.rb", link))

	task, err := Resolve(app, nil, "cleanup")
	require.NoError(t, err)
	require.Equal(t, target, task.Path)
}

func TestResolveSymlinkOutsideLoadPath(t *testing.T) {
	t.Parallel()

	outside := newApp(t)
	for _, target := range []string{
		filepath.Join(outside, "evil.rb"),
		// Inside the application folder but outside the "lib" load-path folder.
		"",
	} {
		app := newApp(t)
		if target == "" {
			target = filepath.Join(app, "scripts/evil.rb")
		}
		writeFile(t, target, "", 0o644)
		link := filepath.Join(app, "lib/bolt/tasks/evil.rb")
		require.NoError(t, os.MkdirAll(filepath.Dir(link), 0o755))
		require.NoError(t, os.Symlink(target, link))

		_, err := Resolve(app, []string{"lib"}, "evil")
		require.ErrorIs(t, err, ErrOutsideLoadPath, "target %s", target)
		require.Contains(t, err.Error(), "resolves to "+target)
	}
}

func TestResolveLoadDirOutsideApp(t *testing.T) {
	t.Parallel()

	outside := newApp(t)
	writeFile(t, filepath.Join(outside, "bolt/tasks/x.rb"), "", 0o644)
	app := newApp(t)
	require.NoError(t, os.Symlink(outside, filepath.Join(app, "lib")))

	_, err := Resolve(app, nil, "x")
	require.ErrorIs(t, err, ErrInvalidLoadPath)
	require.Contains(t, err.Error(), "outside the application folder")
}

func TestResolveRejectsLoadPathEntries(t *testing.T) {
	t.Parallel()

	app := newApp(t)
	for _, entry := range []string{"/etc", "../lib", "lib/../..", ""} {
		_, err := Resolve(app, []string{entry}, "x")
		require.ErrorIs(t, err, ErrInvalidLoadPath, "entry %q", entry)
		require.Contains(t, err.Error(), "must be a relative folder inside the application folder")
	}
}

func TestResolveInvalidNameTouchesNothing(t *testing.T) {
	t.Parallel()

	// The application folder does not exist: an invalid name must be rejected before
	// any file system access.
	_, err := Resolve("/nonexistent/app", nil, "../../etc/passwd")
	require.ErrorIs(t, err, ErrInvalidName)
}

func TestResolveRubyNameNeedsConstant(t *testing.T) {
	t.Parallel()

	app := newApp(t)
	writeFile(t, filepath.Join(app, "lib/bolt/tasks/2fa.rb"), "", 0o644)
	writeFile(t, filepath.Join(app, "lib/bolt/tasks/3fa"), "#!/bin/sh\n", 0o755)

	_, err := Resolve(app, nil, "2fa")
	require.ErrorIs(t, err, ErrInvalidName)
	require.Contains(t, err.Error(), "not a valid Ruby constant")

	task, err := Resolve(app, nil, "3fa")
	require.NoError(t, err, "executables need no constant")
	require.Equal(t, Executable, task.Kind)
}

func TestResolveMissingApp(t *testing.T) {
	t.Parallel()

	_, err := Resolve(filepath.Join(t.TempDir(), "missing"), nil, "x")
	require.Error(t, err)
	require.Contains(t, err.Error(), "reading application folder")
}

func TestKindString(t *testing.T) {
	t.Parallel()

	require.Equal(t, "ruby", Ruby.String())
	require.Equal(t, "executable", Executable.String())
	require.Equal(t, "Kind(0)", Kind(0).String())
}
