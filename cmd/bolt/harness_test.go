package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// boltBinary is the bolt binary built once for the whole test run.
var boltBinary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "bolt-test-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	boltBinary = filepath.Join(dir, "bolt")
	build := exec.Command("go", "build", "-o", boltBinary, ".")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building bolt:", err)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// testApp is an application folder with its own embedded store served by `bolt db`.
type testApp struct {
	t     *testing.T
	dir   string
	uri   string
	tasks *mongo.Collection
}

// newApp creates an application folder, starts `bolt db` for it and connects to it.
func newApp(t *testing.T) *testApp {
	t.Helper()
	dir := t.TempDir()
	app := &testApp{t: t, dir: dir}
	app.uri = startDB(t, filepath.Join(dir, "db"))
	app.writeFile("bolt.conf", fmt.Sprintf("mongo_uri = %s\nkill_grace = 1\nlog_level = debug\ndefault_email = dev@example.com\n", app.uri))

	app.tasks = connect(t, app.uri)
	return app
}

// startDB runs `bolt db` on a free loopback port and returns its URI.
func startDB(t *testing.T, dataDir string) string {
	t.Helper()
	_, uri := startDBAt(t, dataDir, "127.0.0.1:0")
	return uri
}

// startDBAt runs `bolt db` on addr and returns the process and the URI it printed.
func startDBAt(t *testing.T, dataDir, addr string) (*exec.Cmd, string) {
	t.Helper()
	cmd := exec.Command(boltBinary, "db", "--listen", addr, "--data", dataDir, "--app", filepath.Dir(dataDir))
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	cmd.Stderr = os.Stderr
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	require.NoError(t, err, "bolt db printed no URI")
	return cmd, strings.TrimSpace(line)
}

// connect returns the test database's task_queue on the store at uri.
func connect(t *testing.T, uri string) *mongo.Collection {
	t.Helper()
	client, err := mongo.Connect(options.Client().ApplyURI(uri))
	require.NoError(t, err)
	t.Cleanup(func() { _ = client.Disconnect(context.Background()) })
	return client.Database("bolt_test").Collection("task_queue")
}

func (a *testApp) writeFile(name, content string) string {
	a.t.Helper()
	path := filepath.Join(a.dir, name)
	require.NoError(a.t, os.MkdirAll(filepath.Dir(path), 0o755))
	require.NoError(a.t, os.WriteFile(path, []byte(content), 0o644))
	return path
}

// writeExecutable writes an executable task lib/bolt/tasks/<name>.
func (a *testApp) writeExecutable(name, script string) string {
	a.t.Helper()
	path := a.writeFile(filepath.Join("lib", "bolt", "tasks", name), script)
	require.NoError(a.t, os.Chmod(path, 0o755))
	return path
}

// writeRuby writes a Ruby task lib/bolt/tasks/<name>.rb.
func (a *testApp) writeRuby(name, source string) {
	a.t.Helper()
	a.writeFile(filepath.Join("lib", "bolt", "tasks", name+".rb"), source)
}

// insert adds a task document and returns its _id.
func (a *testApp) insert(doc bson.D) bson.ObjectID {
	a.t.Helper()
	id := bson.NewObjectID()
	doc = append(bson.D{{Key: "_id", Value: id}}, doc...)
	_, err := a.tasks.InsertOne(context.Background(), doc)
	require.NoError(a.t, err)
	return id
}

// command returns the bolt binary set to run in the application folder with CURRENT_ENV=test.
func (a *testApp) command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, boltBinary, args...)
	cmd.Dir = a.dir
	cmd.Env = append(os.Environ(), "CURRENT_ENV=test")
	return cmd
}

// drain runs `bolt run --drain` to its end and returns its combined output.
func (a *testApp) drain(extra ...string) string {
	a.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := a.command(ctx, append([]string{"run", "--drain"}, extra...)...).CombinedOutput()
	require.NoError(a.t, err, "bolt run --drain failed:\n%s\nlog:\n%s", out, a.log())
	return string(out)
}

// log returns the daemon's log file.
func (a *testApp) log() string {
	data, _ := os.ReadFile(filepath.Join(a.dir, "log", "flagella.log"))
	return string(data)
}

// logLine returns the log line about the task with id that contains want, or fails.
func (a *testApp) logLine(id bson.ObjectID, want string) string {
	a.t.Helper()
	for _, line := range strings.Split(a.log(), "\n") {
		if strings.Contains(line, id.Hex()) && strings.Contains(line, want) {
			return line
		}
	}
	a.t.Fatalf("no log line about task %s containing %q in:\n%s", id.Hex(), want, a.log())
	return ""
}

// count returns the number of documents left in task_queue.
func (a *testApp) count() int64 {
	a.t.Helper()
	n, err := a.tasks.CountDocuments(context.Background(), bson.D{})
	require.NoError(a.t, err)
	return n
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// processGone reports whether pid has ended: no such process, or a zombie waiting to be reaped.
func processGone(pid int) bool {
	if syscall.Kill(pid, 0) == syscall.ESRCH {
		return true
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// The state follows the command name, which is in parentheses.
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	return len(fields) > 0 && fields[0] == "Z"
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	return string(data)
}
