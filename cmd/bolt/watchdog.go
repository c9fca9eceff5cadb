package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/bolt-runner/bolt/config"
	"github.com/bolt-runner/bolt/lifecycle"
	"github.com/bolt-runner/bolt/watchdog"
)

func runWatchdog(args []string) error {
	f := newCommandFlags("watchdog")
	positional, err := f.parse(args)
	if err != nil {
		return err
	}
	if len(positional) > 0 {
		return fmt.Errorf("%w: bolt watchdog takes no arguments, got %q", errUsage, positional)
	}
	cfg, err := f.load()
	if err != nil {
		return err
	}
	binary, err := boltExecutable()
	if err != nil {
		return err
	}

	logPath := cfg.Path(cfg.LogFile)
	logFile, err := openLogFile(logPath)
	if err != nil {
		return err
	}
	defer logFile.Close()
	log := newLogger(logFile, cfg.LogLevel)

	// The daemon gets the same settings: the environment is inherited, and the flags given
	// to the watchdog are passed on.
	command := append([]string{binary, "run", "--app", cfg.AppDir}, settingFlags(f, "app")...)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	out, err := watchdog.Run(ctx, watchdog.Config{
		AppDir:       cfg.AppDir,
		Files:        lifecycle.FilesFor(cfg.AppDir, cfg.Env),
		Heartbeat:    cfg.HeartbeatPath(),
		KillAfter:    cfg.HeartbeatKill,
		StartTimeout: cfg.StartTimeout,
		Command:      command,
		Env:          os.Environ(),
		LogFile:      logPath,
		Logger:       log,
	})
	if err != nil {
		log.Error().Err(err).Msg("watchdog: failed")
		return err
	}
	// Cron mails what a job prints, so only a replaced daemon is worth a line.
	if out.Action == watchdog.Replaced {
		fmt.Fprintf(os.Stderr, "bolt watchdog: killed stuck Bolt (pid %d): %s; started pid %d\n", out.OldPID, out.Reason, out.PID)
	}
	return nil
}

// settingFlags returns the setting flags that were set on the command line as --name=value,
// leaving out the settings named in skip.
func settingFlags(f *commandFlags, skip ...string) []string {
	skipped := map[string]bool{}
	for _, name := range skip {
		skipped[config.FlagName(name)] = true
	}
	var out []string
	f.Visit(func(fl *flag.Flag) {
		if _, isSetting := f.settings[settingName(fl.Name)]; isSetting && !skipped[fl.Name] {
			out = append(out, "--"+fl.Name+"="+fl.Value.String())
		}
	})
	return out
}

// settingName returns the setting of a flag name, such as mongo_uri for mongo-uri.
func settingName(flagName string) string {
	for _, s := range config.Settings {
		if config.FlagName(s.Name) == flagName {
			return s.Name
		}
	}
	return ""
}
