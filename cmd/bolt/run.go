package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/bolt-runner/bolt/childproc"
	"github.com/bolt-runner/bolt/config"
	"github.com/bolt-runner/bolt/executor"
	"github.com/bolt-runner/bolt/lifecycle"
	"github.com/bolt-runner/bolt/notify"
	"github.com/bolt-runner/bolt/reactor"
	"github.com/bolt-runner/bolt/store"
)

// daemonLockWait is how long a starting daemon retries the daemon lock, which bolt watchdog
// holds for an instant when it checks for a daemon.
const daemonLockWait = time.Second

// Causes of a stop, as context causes, so the log shows why tasks were stopped.
var (
	errStopSignal   = errors.New("stop signal received")
	errSecondSignal = errors.New("second stop signal received")
	errGraceOver    = errors.New("stop grace period over")
	errKillFile     = errors.New("kill file changed")
	errLivenessLost = errors.New("liveness record removed by another daemon")
)

func runDaemon(args []string) error {
	f := newCommandFlags("run")
	drain := f.Bool("drain", false, "exit once no task is due and none is running")
	if _, err := f.parse(args); err != nil {
		return err
	}
	cfg, err := f.load()
	if err != nil {
		return err
	}

	logFile, err := openLogFile(cfg.Path(cfg.LogFile))
	if err != nil {
		return err
	}
	defer logFile.Close()
	log := newLogger(logFile, cfg.LogLevel)

	err = runUntilStopped(cfg, *drain, log, logFile)
	if err != nil {
		log.Error().Err(err).Msg("bolt: stopped on error")
	}
	return err
}

func runUntilStopped(cfg *config.Config, drain bool, log zerolog.Logger, logFile *logFile) (err error) {
	// One daemon per application folder and environment: the lock is held until return.
	lock, err := lifecycle.AcquireDaemonLock(lifecycle.FilesFor(cfg.AppDir, cfg.Env), daemonLockWait)
	if err != nil {
		return err
	}
	defer lock.Release()
	heartbeat, err := lifecycle.NewHeartbeat(cfg.HeartbeatPath(), log)
	if err != nil {
		return err
	}
	heartbeat.Touch()

	// fetchCtx ends claiming, and taskCtx stops running tasks. A first signal ends claiming and
	// gives tasks stop_grace to finish. A second signal, the end of the grace period or a kill
	// file stops them at once.
	fetchCtx, stopFetching := context.WithCancelCause(context.Background())
	defer stopFetching(nil)
	taskCtx, stopTasks := context.WithCancelCause(context.Background())
	defer stopTasks(nil)
	defer func() {
		// A stop asked for during start-up cuts the start short; that is a clean stop too.
		if err != nil && fetchCtx.Err() != nil {
			log.Info().Err(err).Str("cause", context.Cause(fetchCtx).Error()).Msg("bolt: stopped during start-up")
			err = nil
		}
	}()

	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(signals)
	go handleSignals(signals, log, logFile, cfg.StopGrace, stopFetching, stopTasks)

	killFiles := make([]string, len(cfg.KillFiles))
	for i, f := range cfg.KillFiles {
		killFiles[i] = cfg.Path(f)
	}
	kills, err := lifecycle.NewKillWatcher(killFiles, func(path string) {
		log.Warn().Str("path", path).Msg("bolt: kill file changed, stopping; running tasks are stopped and released to run again")
		stopFetching(errKillFile)
		stopTasks(errKillFile)
	}, log)
	if err != nil {
		return err
	}
	watchCtx, stopWatching := context.WithCancel(context.Background())
	defer stopWatching()
	go kills.Run(watchCtx)

	host, _ := os.Hostname()
	started := time.Now()
	owner := store.NewOwnerID(host, os.Getpid(), started)

	uri := cfg.MongoURI
	if uri == "" {
		emb, err := openEmbedded(fetchCtx, cfg, log)
		if err != nil {
			return err
		}
		defer emb.Close()
		uri = emb.URI
		log.Info().Str("uri", uri).Str("data", cfg.Path(cfg.DBData)).
			Msg("bolt: no MongoDB configured, using the embedded store; point the application at this URI")
	}

	st, err := store.Connect(fetchCtx, uri, cfg.Database(), owner)
	if err != nil {
		return err
	}
	defer st.Close(context.Background())
	// The embedded store (FerretDB 1.24) does not use these indexes for Bolt's queries and
	// fails to create them again on a restart, so they are made on MongoDB only.
	if cfg.MongoURI != "" {
		if err := st.EnsureIndexes(fetchCtx); err != nil {
			log.Warn().Err(err).Msg("bolt: creating indexes failed; claims still work but may be slower")
		}
	}

	// run_at is compared with the server's clock, so hosts with wrong clocks agree.
	skew, _ := time.ParseDuration(os.Getenv("BOLT_TEST_CLOCK_SKEW"))
	clock := store.NewClock(st, skew)
	if offset, err := clock.Sync(fetchCtx); err != nil {
		log.Warn().Err(err).Msg("bolt: reading the server's clock failed; using this host's clock")
	} else if offset.Abs() > time.Second {
		log.Warn().Dur("offset", offset).Msg("bolt: this host's clock differs from the database server's; scheduling follows the server")
	}
	go clock.Run(fetchCtx, time.Minute, func(err error) {
		log.Warn().Err(err).Msg("bolt: reading the server's clock failed")
	})

	liveness := &reactor.Liveness{Store: st, Lease: cfg.Lease, Host: host, AppDir: cfg.AppDir, Logger: log,
		OnLost: func() { stopTasks(errLivenessLost) }}
	if err := liveness.Register(fetchCtx); err != nil {
		return err
	}
	defer func() {
		if err := st.Unregister(context.Background()); err != nil {
			log.Error().Err(err).Msg("bolt: removing liveness record failed")
		}
	}()
	// Beats go on while running tasks finish after a stop signal, so that other daemons do
	// not judge this one dead and run its tasks a second time.
	liveCtx, stopLiveness := context.WithCancel(context.Background())
	defer stopLiveness()
	liveness.RecoverNow(fetchCtx)
	go liveness.Run(liveCtx)

	notifier, err := notify.New(st.DB, notify.Config{
		SMTPURL: cfg.SMTPURL, From: cfg.MailFrom, DefaultTo: cfg.DefaultEmail, Env: cfg.Env,
		MailDir: cfg.Path(filepath.Join("tmp", "mail")), Host: host,
	}, log)
	if err != nil {
		return err
	}
	// At a stop the delivery loop finishes the mail it is sending (bounded by the send
	// timeout) before Bolt exits, so no message is cut off halfway.
	mailCtx, stopMail := context.WithCancel(context.Background())
	mailDone := make(chan struct{})
	defer func() {
		stopMail()
		<-mailDone
	}()
	// With --drain, mail goes out once at the end (see below), so a short batch run
	// never stops the delivery loop in the middle of a send.
	if drain {
		close(mailDone)
	} else {
		go func() {
			defer close(mailDone)
			_ = notifier.Run(mailCtx)
		}()
	}

	guard := startGuard(log)
	defer guard.Close()
	rubyRunner, stopRuby := startRubyRunner(cfg, guard, log)
	defer stopRuby()

	exec := executor.New(executor.Config{
		AppDir: cfg.AppDir, LoadPath: cfg.LoadPath, BootFile: cfg.BootFile, Ruby: cfg.Ruby,
		Env: cfg.Env, MongoURI: uri, Database: cfg.Database(),
		DefaultTimeout: cfg.Timeout, MaxTimeout: cfg.MaxTimeout, KillGrace: cfg.KillGrace,
		OutputLimit: cfg.OutputLimit, MaxAttempts: cfg.MaxAttempts, Host: host, Guard: guard,
		RubyRunner: rubyRunner,
	}, st, notifier, log)

	log.Info().Str("daemon", owner).Str("app", cfg.AppDir).Str("env", cfg.Env).
		Str("database", cfg.Database()).Int("throttle", cfg.Throttle).Bool("drain", drain).
		Msg("bolt: started")
	r := reactor.New(st, exec, reactor.Config{
		Throttle: cfg.Throttle, CatchUpLimit: cfg.CatchUpLimit, Drain: drain, Logger: log,
		Poll: cfg.Watch == "poll",
		Now:  clock.Now,
		OnLoop: func() {
			heartbeat.Touch()
			kills.Poll()
		},
	})
	// bolt watchdog waits for the pid file to know that the daemon it started is up.
	if err := lock.WritePidFile(); err != nil {
		return err
	}
	if err := r.Run(fetchCtx, taskCtx); err != nil {
		return fmt.Errorf("reactor: %w", err)
	}
	if drain {
		flushCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := notifier.Flush(flushCtx); err != nil {
			log.Warn().Err(err).Msg("bolt: sending mail before exit failed; it stays queued for the next run")
		}
		cancel()
	}
	ev := log.Info()
	if cause := context.Cause(fetchCtx); cause != nil && !errors.Is(cause, context.Canceled) {
		ev = ev.Str("cause", cause.Error())
	}
	ev.Msg("bolt: stopped")
	return nil
}

// handleSignals reopens the log file on SIGHUP and stops the daemon on SIGTERM and SIGINT:
// the first ends claiming and gives running tasks grace to finish, the second stops them at once.
func handleSignals(signals <-chan os.Signal, log zerolog.Logger, logFile *logFile, grace time.Duration, stopFetching, stopTasks context.CancelCauseFunc) {
	stopping := false
	for sig := range signals {
		switch {
		case sig == syscall.SIGHUP:
			if err := logFile.Reopen(); err != nil {
				log.Error().Err(err).Msg("bolt: reopening log file failed")
			} else {
				log.Info().Msg("bolt: log file reopened")
			}
		case !stopping:
			stopping = true
			log.Info().Str("signal", sig.String()).Dur("grace", grace).
				Msg("bolt: stopping; running tasks may finish within the grace period (setting stop_grace)")
			stopFetching(errStopSignal)
			time.AfterFunc(grace, func() { stopTasks(errGraceOver) })
		default:
			log.Warn().Str("signal", sig.String()).Msg("bolt: second signal, stopping running tasks now")
			stopTasks(errSecondSignal)
		}
	}
}

// startGuard starts the process that kills running tasks' groups if Bolt is killed. Without
// it, Bolt still runs; only a task's grandchildren could then outlive a Bolt killed with
// SIGKILL.
func startGuard(log zerolog.Logger) *childproc.Guard {
	exe, err := os.Executable()
	if err == nil {
		var guard *childproc.Guard
		if guard, err = childproc.StartGuard(exe); err == nil {
			return guard
		}
	}
	log.Warn().Err(err).Msg("bolt: starting the task guard failed; a task's grandchildren may outlive a killed Bolt")
	return nil
}
