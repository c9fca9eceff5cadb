package main

import (
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"time"

	"github.com/bolt-runner/bolt/watchdog"
)

// setupName is the binary's other name: called as bolt_setup, it runs bolt setup.
const setupName = "bolt_setup"

// stopMargin is added to stop_grace and kill_grace for systemd's stop timeout, for releasing
// the stopped tasks and closing the store.
const stopMargin = 30 * time.Second

func setup(args []string) error {
	f := newCommandFlags("setup")
	systemd := f.Bool("systemd", false, "write a systemd unit instead of the watchdog script for cron")
	positional, err := f.parse(args)
	if err != nil {
		return err
	}
	if len(positional) > 0 {
		return fmt.Errorf("%w: bolt setup takes no arguments, got %q; run it from the application folder or pass --app DIR", errUsage, positional)
	}
	cfg, err := f.load()
	if err != nil {
		return err
	}
	binary, err := boltExecutable()
	if err != nil {
		return err
	}

	// The environment is bound into the script or unit only when it was chosen outside
	// bolt.conf, because cron and systemd do not see this shell's variables.
	var extra []string
	if src := cfg.Sources["env"]; src != "default" && src != "file" {
		extra = append(extra, "--env", cfg.Env)
	}
	opts := watchdog.SetupOptions{
		AppDir:      cfg.AppDir,
		Binary:      binary,
		Dirs:        []string{filepath.Dir(cfg.Path(cfg.LogFile)), cfg.Path(cfg.HeartbeatDir)},
		Args:        extra,
		Systemd:     *systemd,
		Env:         cfg.Env,
		StopTimeout: cfg.StopGrace + cfg.KillGrace + stopMargin,
	}
	if u, err := user.Current(); err == nil {
		opts.User = u.Username
	}
	report, err := watchdog.Setup(opts)
	if err != nil {
		return err
	}

	for _, line := range report.Lines {
		fmt.Println(line)
	}
	fmt.Println()
	if *systemd {
		unit := filepath.Base(report.Unit)
		fmt.Printf(`Install and start the service (as root):
  systemctl link %s
  systemctl enable --now %s
Reload the log file after rotation with: systemctl reload %s
`, report.Unit, unit, unit)
		return nil
	}
	fmt.Printf(`Add this line to the crontab of the user that runs the application (crontab -e):
%s
`, watchdog.CrontabLine(report.Script))
	return nil
}

// boltExecutable returns the absolute path of the bolt binary, with symbolic links resolved.
// A copy or hard link named bolt_setup would run setup again from the watchdog script, so a
// bolt beside it is used instead.
func boltExecutable() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("finding the bolt binary: %w", err)
	}
	if resolved, err := filepath.EvalSymlinks(exe); err == nil {
		exe = resolved
	}
	if !strings.HasPrefix(filepath.Base(exe), setupName) {
		return exe, nil
	}
	sibling := filepath.Join(filepath.Dir(exe), "bolt")
	if info, err := os.Stat(sibling); err == nil && !info.IsDir() {
		return sibling, nil
	}
	return "", fmt.Errorf("the binary %s is named %s, and no bolt is beside it; install the binary as bolt and make bolt_setup a link to it", exe, setupName)
}
