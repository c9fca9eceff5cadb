package watchdog

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestShellQuote(t *testing.T) {
	cases := map[string]string{
		"/srv/app/bolt_watchdog": "/srv/app/bolt_watchdog",
		"/srv/my app":            "'/srv/my app'",
		"/srv/it's":              `'/srv/it'\''s'`,
		"":                       "''",
	}
	for in, want := range cases {
		require.Equal(t, want, shellQuote(in), "input %q", in)
	}
}

func TestCrontabLineRunsScript(t *testing.T) {
	require.Equal(t, "* * * * * /bin/bash -l -c 'nice /srv/app/bolt_watchdog'", CrontabLine("/srv/app/bolt_watchdog"))

	// A path with a space, a quote and a percent sign survives cron and two shells.
	dir := filepath.Join(t.TempDir(), "my app's 100%")
	require.NoError(t, os.MkdirAll(dir, 0o755))
	script := filepath.Join(dir, ScriptName)
	require.NoError(t, os.WriteFile(script, []byte("#!/bin/sh\necho ran\n"), 0o755))
	line := CrontabLine(script)
	command := strings.TrimPrefix(line, "* * * * * ")
	require.NotContains(t, strings.ReplaceAll(command, `\%`, ""), "%", "cron reads a bare %% as a line break")
	// cron removes the backslash before %, then runs the rest with sh.
	out, err := exec.Command("/bin/sh", "-c", strings.ReplaceAll(strings.Replace(command, " -l ", " ", 1), `\%`, "%")).CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Equal(t, "ran\n", string(out))
}

func TestWatchdogScriptRunsBinary(t *testing.T) {
	dir := t.TempDir()
	binary := filepath.Join(dir, "fake bolt")
	require.NoError(t, os.WriteFile(binary, []byte("#!/bin/sh\nprintf '%s|' \"$@\"\n"), 0o755))
	script := filepath.Join(dir, ScriptName)
	require.NoError(t, os.WriteFile(script, []byte(WatchdogScript(binary, "/srv/my app", []string{"--env", "production"})), 0o755))

	out, err := exec.Command(script, "--log-level", "debug").CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Equal(t, "watchdog|--app|/srv/my app|--env|production|--log-level|debug|", string(out))
}

func TestSetupIsIdempotent(t *testing.T) {
	dir := t.TempDir()
	opts := SetupOptions{AppDir: dir, Binary: "/usr/local/bin/bolt", Dirs: []string{filepath.Join(dir, "hb")}}

	first, err := Setup(opts)
	require.NoError(t, err)
	require.Contains(t, first.Lines, "created    "+filepath.Join(dir, "bolt.conf"))
	require.Contains(t, first.Lines, "created    "+first.Script)
	require.DirExists(t, filepath.Join(dir, "hb"))

	second, err := Setup(opts)
	require.NoError(t, err)
	for _, line := range second.Lines {
		require.False(t, strings.HasPrefix(line, "created") || strings.HasPrefix(line, "updated"), "second run changed %q", line)
	}

	// A moved binary updates the script, and only the script.
	opts.Binary = "/opt/bolt/bolt"
	third, err := Setup(opts)
	require.NoError(t, err)
	require.Contains(t, third.Lines, "updated    "+third.Script)
	data, err := os.ReadFile(third.Script)
	require.NoError(t, err)
	require.Contains(t, string(data), "exec /opt/bolt/bolt watchdog")
}

func TestSetupRejectsLineBreakInPath(t *testing.T) {
	_, err := Setup(SetupOptions{AppDir: "/srv/a\nb", Binary: "/usr/local/bin/bolt"})
	require.ErrorContains(t, err, "line break")
}

func TestSystemdUnitQuotes(t *testing.T) {
	unit := SystemdUnit(SetupOptions{
		AppDir: "/srv/50% app", Binary: "/usr/local/bin/bolt", Env: "production",
		Args: []string{"--env", "production"}, User: "deploy", StopTimeout: 65500 * time.Millisecond,
	})
	require.Contains(t, unit, `ExecStart=/usr/local/bin/bolt run --app "/srv/50%% app" --env production`+"\n")
	require.Contains(t, unit, "WorkingDirectory=/srv/50%% app\n")
	require.Contains(t, unit, "User=deploy\n")
	require.Contains(t, unit, "TimeoutStopSec=66\n", "rounded up to whole seconds")
}

func TestUnitName(t *testing.T) {
	require.Equal(t, "bolt-shop.service", UnitName("/srv/shop"))
	require.Equal(t, "bolt-my_app.service", UnitName("/srv/my app"))
}
