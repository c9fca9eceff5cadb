package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/bolt-runner/bolt/config"
	"github.com/bolt-runner/bolt/executor"
	"github.com/bolt-runner/bolt/notify"
	"github.com/bolt-runner/bolt/reactor"
	"github.com/bolt-runner/bolt/store"
)

// stopGrace is how long running tasks may go on after SIGTERM or SIGINT before they are
// stopped and released.
const stopGrace = 30 * time.Second

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

	err = daemon(cfg, *drain, log, logFile)
	if err != nil {
		log.Error().Err(err).Msg("bolt: stopped on error")
	}
	return err
}

func daemon(cfg *config.Config, drain bool, log zerolog.Logger, logFile *logFile) error {
	// fetchCtx ends claiming; taskCtx stops running tasks. A first signal ends claiming and
	// gives tasks stopGrace to finish; a second signal, or the grace running out, stops them.
	fetchCtx, stopFetching := context.WithCancel(context.Background())
	defer stopFetching()
	taskCtx, stopTasks := context.WithCancel(context.Background())
	defer stopTasks()
	go handleSignals(log, logFile, stopFetching, stopTasks)

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
	if err := st.EnsureIndexes(fetchCtx); err != nil {
		log.Warn().Err(err).Msg("bolt: creating indexes failed; claims still work but may be slower")
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

	liveness := &reactor.Liveness{Store: st, Lease: cfg.Lease, Host: host, AppDir: cfg.AppDir, Logger: log, OnLost: stopTasks}
	if err := liveness.Register(fetchCtx); err != nil {
		return err
	}
	defer func() {
		if err := st.Unregister(context.Background()); err != nil {
			log.Error().Err(err).Msg("bolt: removing liveness record failed")
		}
	}()
	go liveness.Run(fetchCtx)

	notifier, err := notify.New(st.DB, notify.Config{
		SMTPURL: cfg.SMTPURL, From: cfg.MailFrom, DefaultTo: cfg.DefaultEmail, Env: cfg.Env,
		MailDir: cfg.Path(filepath.Join("tmp", "mail")), Host: host,
	}, log)
	if err != nil {
		return err
	}
	mailCtx, stopMail := context.WithCancel(context.Background())
	defer stopMail()
	go func() { _ = notifier.Run(mailCtx) }()

	exec := executor.New(executor.Config{
		AppDir: cfg.AppDir, LoadPath: cfg.LoadPath, BootFile: cfg.BootFile, Ruby: cfg.Ruby,
		Env: cfg.Env, MongoURI: uri, Database: cfg.Database(),
		DefaultTimeout: cfg.Timeout, MaxTimeout: cfg.MaxTimeout, KillGrace: cfg.KillGrace,
		OutputLimit: cfg.OutputLimit, MaxAttempts: cfg.MaxAttempts, Host: host,
	}, st, notifier, log)

	log.Info().Str("daemon", owner).Str("app", cfg.AppDir).Str("env", cfg.Env).
		Str("database", cfg.Database()).Int("throttle", cfg.Throttle).Bool("drain", drain).
		Msg("bolt: started")
	r := reactor.New(st, exec, reactor.Config{
		Throttle: cfg.Throttle, CatchUpLimit: cfg.CatchUpLimit, Drain: drain, Logger: log,
		Now: clock.Now,
	})
	if err := r.Run(fetchCtx, taskCtx); err != nil {
		return fmt.Errorf("reactor: %w", err)
	}
	log.Info().Msg("bolt: stopped")
	return nil
}

func handleSignals(log zerolog.Logger, logFile *logFile, stopFetching, stopTasks context.CancelFunc) {
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
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
			log.Info().Str("signal", sig.String()).Dur("grace", stopGrace).
				Msg("bolt: stopping; running tasks may finish within the grace period")
			stopFetching()
			time.AfterFunc(stopGrace, stopTasks)
		default:
			log.Warn().Str("signal", sig.String()).Msg("bolt: second signal, stopping running tasks now")
			stopTasks()
		}
	}
}
