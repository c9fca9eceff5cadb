package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// appStore is a connection to the embedded store of a Bolt application folder.
type appStore struct {
	client *mongo.Client
	db     *mongo.Database
	tasks  *mongo.Collection
	// server is the `bolt db` process started for this connection, or nil when a running
	// daemon serves the folder's store.
	server *exec.Cmd
}

// openAppStore connects to the embedded store in app/.bolt/db. When a Bolt process
// serves it, the URI comes from the address file that process wrote. Otherwise
// openAppStore starts a `bolt db` on a free loopback port, which serves it until Close.
func openAppStore(ctx context.Context, app, boltBinary, database string) (*appStore, error) {
	dataDir := filepath.Join(app, ".bolt", "db")
	s := &appStore{}

	served, err := storeServed(dataDir)
	if err != nil {
		return nil, err
	}
	var uri string
	if served {
		uri, err = readStoreURI(ctx, dataDir)
	} else {
		s.server, uri, err = startStore(app, boltBinary)
	}
	if err != nil {
		return nil, err
	}

	s.client, err = mongo.Connect(options.Client().ApplyURI(uri).SetAppName("boltbench"))
	if err == nil {
		err = s.client.Ping(ctx, nil)
	}
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("connecting to the embedded store at %s: %w", uri, err)
	}
	s.db = s.client.Database(database)
	s.tasks = s.db.Collection("task_queue")
	return s, nil
}

// Close disconnects and stops the `bolt db` that openAppStore started.
func (s *appStore) Close() {
	if s.client != nil {
		_ = s.client.Disconnect(context.Background())
	}
	if s.server != nil {
		_ = s.server.Process.Signal(syscall.SIGTERM)
		_ = s.server.Wait()
	}
}

// storeServed reports whether a process holds the store's lock, which Bolt takes with
// flock for as long as it serves the folder.
func storeServed(dataDir string) (bool, error) {
	lock, err := os.OpenFile(filepath.Join(dataDir, "bolt.lock"), os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("opening the store lock: %w", err)
	}
	defer lock.Close()

	err = syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("checking the store lock: %w", err)
	}
	return false, syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
}

// readStoreURI waits up to 30 seconds for the serving process to publish its address.
func readStoreURI(ctx context.Context, dataDir string) (string, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		data, err := os.ReadFile(filepath.Join(dataDir, "uri"))
		if uri := strings.TrimSpace(string(data)); err == nil && uri != "" {
			return uri, nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("the store in %s is locked but its address file is missing after 30 s", dataDir)
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// startStore runs `bolt db` for app on a free loopback port and returns it with the URI
// it printed.
func startStore(app, boltBinary string) (*exec.Cmd, string, error) {
	cmd := exec.Command(boltBinary, "db", "--app", app, "--listen", "127.0.0.1:0")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, "", err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, "", fmt.Errorf("starting %s db: %w", boltBinary, err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, "", fmt.Errorf("%s db printed no URI: %w", boltBinary, err)
	}
	return cmd, strings.TrimSpace(line), nil
}
