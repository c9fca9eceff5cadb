package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/rs/zerolog"

	"github.com/bolt-runner/bolt/config"
	"github.com/bolt-runner/bolt/embeddedstore"
)

// uriFile holds the URI of the embedded store while a process serves it, so that other
// commands (bolt enqueue) reach the same store instead of opening its files a second time.
const uriFile = "uri"

// embeddedStore is the embedded store opened by this process, or the address of one that
// another process serves.
type embeddedStore struct {
	URI    string
	server *embeddedstore.Server
	lock   *os.File
}

// Close stops the store if this process serves it and releases its lock.
func (e *embeddedStore) Close() {
	if e.server != nil {
		_ = e.server.Close()
		_ = os.Remove(filepath.Join(filepath.Dir(e.lock.Name()), uriFile))
	}
	if e.lock != nil {
		_ = e.lock.Close()
	}
}

// openEmbedded serves the embedded store from the configured data folder, or, when another
// Bolt process already serves that folder, returns that process's URI.
//
// The data folder is locked with flock, which the kernel releases when the holder dies, so a
// crashed daemon never leaves a stale lock.
func openEmbedded(ctx context.Context, cfg *config.Config, log zerolog.Logger) (*embeddedStore, error) {
	return openEmbeddedAt(ctx, cfg.Path(cfg.DBData), cfg.DBListen, false, log)
}

func openEmbeddedAt(ctx context.Context, dir, listen string, allowRemote bool, log zerolog.Logger) (*embeddedStore, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating embedded store folder: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, "bolt.lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening embedded store lock: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = lock.Close()
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("locking embedded store folder %s: %w", dir, err)
		}
		uri, readErr := os.ReadFile(filepath.Join(dir, uriFile))
		if readErr != nil || len(uri) == 0 {
			return nil, fmt.Errorf("the embedded store in %s is in use by another process that has not published its address yet; try again", dir)
		}
		return &embeddedStore{URI: strings.TrimSpace(string(uri))}, nil
	}

	server, err := startEmbedded(ctx, embeddedstore.Options{Listen: listen, DataDir: dir, Logger: log, AllowRemote: allowRemote})
	if err != nil {
		_ = lock.Close()
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, uriFile), []byte(server.URI()+"\n"), 0o644); err != nil {
		_ = server.Close()
		_ = lock.Close()
		return nil, fmt.Errorf("writing embedded store address: %w", err)
	}
	return &embeddedStore{URI: server.URI(), server: server, lock: lock}, nil
}

// startEmbedded listens on addr, or on a free loopback port when addr is busy, so a second
// application on the same host still starts.
func startEmbedded(ctx context.Context, opts embeddedstore.Options) (*embeddedstore.Server, error) {
	server, err := embeddedstore.Start(ctx, opts)
	if errors.Is(err, syscall.EADDRINUSE) && !opts.AllowRemote {
		opts.Logger.Warn().Str("address", opts.Listen).Msg("embedded store: address in use, listening on a free port instead (setting db_listen)")
		opts.Listen = "127.0.0.1:0"
		server, err = embeddedstore.Start(ctx, opts)
	}
	if err != nil {
		return nil, fmt.Errorf("starting embedded store: %w", err)
	}
	return server, nil
}
