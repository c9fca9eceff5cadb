package main

import (
	"github.com/rs/zerolog"

	"github.com/bolt-runner/bolt/childproc"
	"github.com/bolt-runner/bolt/config"
	"github.com/bolt-runner/bolt/executor"
	"github.com/bolt-runner/bolt/rubypreload"
	"github.com/bolt-runner/bolt/rubyrunner"
)

// startRubyRunner returns how Ruby tasks run and the function that stops it: a
// preloader that forks each task from a booted Ruby process when the setting
// ruby_preload is on, or nil (a fresh Ruby per task) when it is off.
func startRubyRunner(cfg *config.Config, guard *childproc.Guard, log zerolog.Logger) (executor.RubyRunner, func()) {
	if !cfg.RubyPreload {
		log.Info().Msg("bolt: Ruby preloading is off (setting ruby_preload); each Ruby task starts a fresh Ruby")
		return nil, func() {}
	}

	preloader, err := rubypreload.New(rubypreload.Options{
		Ruby:   rubyrunner.Options{RubyPath: cfg.Ruby, AppDir: cfg.AppDir, LoadPath: cfg.LoadPath, BootFile: cfg.BootFile},
		Guard:  guard,
		Logger: log,
	})
	if err != nil {
		log.Warn().Err(err).Msg("bolt: starting the Ruby preloader failed; each Ruby task starts a fresh Ruby")
		return nil, func() {}
	}

	return preloader, func() { _ = preloader.Close() }
}
