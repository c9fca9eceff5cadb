package watchdog

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/bolt-runner/bolt/config"
)

// ScriptName is the watchdog script that bolt setup writes into the application folder.
const ScriptName = "bolt_watchdog"

// SetupOptions describes the application folder to prepare.
type SetupOptions struct {
	AppDir string
	// Binary is the absolute path of the bolt binary the script and the unit run.
	Binary string
	// Dirs are further folders to create, such as the log file's and the heartbeat's.
	Dirs []string
	// Args are extra arguments for bolt watchdog and bolt run, such as --env production.
	Args []string

	// Systemd writes a systemd unit in place of the watchdog script.
	Systemd bool
	// User runs the systemd unit; empty leaves User= out.
	User string
	// Env is the environment named in the unit's description.
	Env string
	// StopTimeout is how long systemd waits for Bolt to stop before it kills it.
	StopTimeout time.Duration
}

// SetupReport lists what Setup did, one line per file or folder.
type SetupReport struct {
	Lines []string
	// Script is the watchdog script; Unit the systemd unit. One of them is empty.
	Script string
	Unit   string
}

// Setup creates the application's folders, a commented bolt.conf, and the watchdog script or
// the systemd unit. It is idempotent: an existing bolt.conf is never changed, and a script or
// unit is rewritten only when its content would differ.
func Setup(opts SetupOptions) (SetupReport, error) {
	var report SetupReport
	for _, p := range []string{opts.AppDir, opts.Binary} {
		if strings.ContainsAny(p, "\n\r") {
			return report, fmt.Errorf("the path %q contains a line break, which no crontab line or systemd unit can hold; rename it", p)
		}
	}
	dirs := append([]string{filepath.Join(opts.AppDir, "log"), filepath.Join(opts.AppDir, "tmp")}, opts.Dirs...)
	seen := map[string]bool{}
	for _, dir := range dirs {
		if dir = filepath.Clean(dir); seen[dir] {
			continue
		}
		seen[dir] = true
		line, err := ensureDir(dir)
		if err != nil {
			return report, err
		}
		report.Lines = append(report.Lines, line)
	}

	line, err := ensureConfig(filepath.Join(opts.AppDir, config.FileName))
	if err != nil {
		return report, err
	}
	report.Lines = append(report.Lines, line)

	if opts.Systemd {
		report.Unit = filepath.Join(opts.AppDir, UnitName(opts.AppDir))
		line, err = writeIfChanged(report.Unit, []byte(SystemdUnit(opts)), 0o644)
	} else {
		report.Script = filepath.Join(opts.AppDir, ScriptName)
		line, err = writeIfChanged(report.Script, []byte(WatchdogScript(opts.Binary, opts.AppDir, opts.Args)), 0o755)
	}
	if err != nil {
		return report, err
	}
	report.Lines = append(report.Lines, line)
	return report, nil
}

func ensureDir(dir string) (string, error) {
	if info, err := os.Stat(dir); err == nil && info.IsDir() {
		return "exists     " + dir, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("creating %s: %w", dir, err)
	}
	return "created    " + dir, nil
}

// ensureConfig writes the configuration template unless the file exists: a file that exists
// may hold the user's settings, so it is never rewritten.
func ensureConfig(path string) (string, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if errors.Is(err, os.ErrExist) {
		return "kept       " + path, nil
	}
	if err != nil {
		return "", fmt.Errorf("creating %s: %w", path, err)
	}
	_, err = f.WriteString(ConfigTemplate())
	if closeErr := f.Close(); err == nil {
		err = closeErr
	}
	if err != nil {
		return "", fmt.Errorf("writing %s: %w", path, err)
	}
	return "created    " + path, nil
}

// writeIfChanged writes content to path through a rename unless the file already has that
// content and mode, so a second run changes nothing, not even the modification time.
func writeIfChanged(path string, content []byte, mode os.FileMode) (string, error) {
	old, err := os.ReadFile(path)
	if err == nil && bytes.Equal(old, content) {
		if info, err := os.Stat(path); err == nil && info.Mode().Perm() == mode {
			return "unchanged  " + path, nil
		}
	}
	verb := "created    "
	if err == nil {
		verb = "updated    "
	}
	tmp := path + ".new"
	if err := os.WriteFile(tmp, content, mode); err != nil {
		return "", fmt.Errorf("writing %s: %w", path, err)
	}
	// WriteFile applies the umask; the script must be executable whatever it is.
	if err := os.Chmod(tmp, mode); err != nil {
		return "", fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", fmt.Errorf("writing %s: %w", path, err)
	}
	return verb + path, nil
}

// ConfigTemplate returns a bolt.conf that lists every setting with its help and its default,
// all commented out.
func ConfigTemplate() string {
	var b strings.Builder
	b.WriteString(`# Bolt settings for this application, one "name = value" per line.
# Every setting below is commented out and shows its default: remove the "#" and change the
# value to set it. BOLT_<NAME> variables override this file, and --name flags override both.
# "bolt config" prints each value and where it came from.
`)
	for _, s := range config.Settings {
		fmt.Fprintf(&b, "\n# %s\n%s\n", s.Help, strings.TrimSpace("# "+s.Name+" = "+s.Default))
	}
	return b.String()
}

// WatchdogScript returns the script that runs bolt watchdog for appDir with binary.
func WatchdogScript(binary, appDir string, args []string) string {
	command := []string{shellQuote(binary), "watchdog", "--app", shellQuote(appDir)}
	for _, a := range args {
		command = append(command, shellQuote(a))
	}
	return fmt.Sprintf(`#!/bin/sh
# Starts Bolt for %s when no Bolt is alive there, and replaces a
# Bolt whose heartbeat is too old. Written by "bolt setup"; run it from cron every minute.
# It prints nothing while Bolt is alive; the log is in the application's log folder.
exec %s "$@"
`, appDir, strings.Join(command, " "))
}

// CrontabLine returns the crontab entry that runs the watchdog script every minute. bash -l
// reads the login profile, so the script gets the same environment as a login shell.
func CrontabLine(script string) string {
	inner := "nice " + shellQuote(script)
	// cron turns an unescaped % into a newline.
	return "* * * * * /bin/bash -l -c " + strings.ReplaceAll(shellQuote(inner), "%", `\%`)
}

// UnitName returns the systemd unit's file name for appDir, such as bolt-shop.service.
func UnitName(appDir string) string {
	base := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.' {
			return r
		}
		return '_'
	}, filepath.Base(appDir))
	return "bolt-" + base + ".service"
}

// SystemdUnit returns a service unit that runs bolt run for the application and restarts it
// whenever it exits, including the clean exit after a kill file was touched.
func SystemdUnit(opts SetupOptions) string {
	command := []string{systemdQuote(opts.Binary), "run", "--app", systemdQuote(opts.AppDir)}
	for _, a := range opts.Args {
		command = append(command, systemdQuote(a))
	}
	var user string
	if opts.User != "" {
		user = "User=" + opts.User + "\n"
	}
	return fmt.Sprintf(`# Written by "bolt setup --systemd".
[Unit]
Description=Bolt task runner for %s (%s)
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
%sWorkingDirectory=%s
ExecStart=%s
ExecReload=/bin/kill -HUP $MAINPID
# SIGTERM goes to Bolt alone, which gives running tasks stop_grace to finish; systemd
# kills what is left only after TimeoutStopSec.
KillMode=mixed
KillSignal=SIGTERM
TimeoutStopSec=%d
# A kill file makes Bolt exit 0, so restart on every exit.
Restart=always
RestartSec=5

[Install]
WantedBy=multi-user.target
`, escapePercent(opts.AppDir), opts.Env, user, escapePercent(opts.AppDir), strings.Join(command, " "), int(math.Ceil(opts.StopTimeout.Seconds())))
}

// escapePercent keeps systemd from reading % in a setting as a specifier.
func escapePercent(s string) string { return strings.ReplaceAll(s, "%", "%%") }

// shellQuote quotes s for sh unless it consists of characters that need no quoting.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./-+,:=@") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// systemdQuote quotes s for a systemd command line or setting when it contains a space, a
// quote, a backslash or a specifier character.
func systemdQuote(s string) string {
	if !strings.ContainsAny(s, " \t\"'\\%$") {
		return s
	}
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "%", "%%", "$", "$$")
	return `"` + r.Replace(s) + `"`
}
