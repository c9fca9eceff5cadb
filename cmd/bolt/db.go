package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func serveDB(args []string) error {
	f := newCommandFlags("db")
	listen := f.String("listen", "127.0.0.1:27017", "address to listen on; an address other than loopback needs --allow-remote")
	data := f.String("data", "", "folder of the store's data (default: setting db_data)")
	allowRemote := f.Bool("allow-remote", false, "allow a listen address other than loopback; the store has no authentication")
	if _, err := f.parse(args); err != nil {
		return err
	}
	cfg, err := f.load()
	if err != nil {
		return err
	}
	dir := *data
	if dir == "" {
		dir = cfg.Path(cfg.DBData)
	}

	logFile, err := openLogFile(cfg.Path(cfg.LogFile))
	if err != nil {
		return err
	}
	defer logFile.Close()
	log := newLogger(logFile, cfg.LogLevel)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	emb, err := openEmbeddedAt(ctx, dir, *listen, *allowRemote, log)
	if err != nil {
		return err
	}
	defer emb.Close()
	if emb.server == nil {
		return fmt.Errorf("the embedded store in %s is already served by another Bolt process at %s", dir, emb.URI)
	}

	fmt.Fprintln(os.Stdout, emb.URI)
	log.Info().Str("uri", emb.URI).Str("data", dir).Msg("embedded store: serving; stop with Ctrl-C or SIGTERM")
	<-ctx.Done()
	log.Info().Msg("embedded store: stopping")
	return nil
}
