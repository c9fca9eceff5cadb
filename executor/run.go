package executor

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/bolt-runner/bolt/childproc"
	"github.com/bolt-runner/bolt/rubyrunner"
	"github.com/bolt-runner/bolt/store"
	"github.com/bolt-runner/bolt/taskdoc"
	"github.com/bolt-runner/bolt/taskpath"
)

// backtraceLines is how many of the last lines of stderr become a failed executable's backtrace.
const backtraceLines = 20

// run checks the document, runs the task and returns its outcome.
func (e *Executor) run(ctx context.Context, doc bson.Raw, log zerolog.Logger) result {
	out := result{}
	out.Started = time.Now()
	out.Document = documentMap(doc)
	out.TaskID = out.Document["_id"]

	name, err := taskdoc.Name(doc)
	if err != nil {
		return e.reject(out, err)
	}
	out.Task = name
	if attempts := attemptsOf(doc); attempts > e.cfg.MaxAttempts {
		return e.reject(out, fmt.Errorf("task was interrupted %d times because its daemon died while running it; not run again (setting max_attempts = %d)", attempts-1, e.cfg.MaxAttempts))
	}
	if _, err := taskdoc.RunAt(doc.Lookup(taskdoc.FieldRunAt)); err != nil {
		return e.reject(out, err)
	}
	timeout, err := taskdoc.Timeout(doc.Lookup(taskdoc.FieldTimeout), e.cfg.DefaultTimeout, e.cfg.MaxTimeout)
	if err != nil {
		return e.reject(out, err)
	}
	task, err := taskpath.Resolve(e.cfg.AppDir, e.cfg.LoadPath, name)
	if err != nil {
		return e.reject(out, err)
	}

	spec, err := e.spec(doc, task, timeout)
	if err != nil {
		return e.reject(out, err)
	}
	var res childproc.Result
	if task.Kind == taskpath.Ruby && e.cfg.RubyRunner != nil {
		res = e.cfg.RubyRunner.RunRuby(ctx, task, spec)
	} else {
		res = childproc.Run(ctx, spec)
	}
	out.PID = res.PID
	out.Started = res.Started
	out.Duration = res.Duration
	if ctx.Err() != nil && !res.TimedOut {
		out.interrupted = true
		return out
	}
	log.Debug().Int("pid", res.PID).Str("path", task.Path).Msg("task process ended")

	if task.Kind == taskpath.Ruby {
		e.readRubyResult(&out, res, log)
	} else {
		e.readExecutableResult(&out, res, log)
	}
	if res.TimedOut {
		out.Success = false
		out.TimedOut = true
		out.Ex = fmt.Sprintf("timed out after %s: the task's process group was terminated", timeout)
	}
	return out
}

// spec builds the process to start for a resolved task.
func (e *Executor) spec(doc bson.Raw, task taskpath.Task, timeout time.Duration) (childproc.Spec, error) {
	spec := childproc.Spec{
		Dir:         e.cfg.AppDir,
		Env:         e.environment(doc),
		Timeout:     timeout,
		KillGrace:   e.cfg.KillGrace,
		OutputLimit: e.cfg.OutputLimit,
		Guard:       e.cfg.Guard,
	}
	var err error
	if task.Kind == taskpath.Ruby {
		// Ruby tasks get relaxed Extended JSON, which the runner maps to plain Ruby values.
		spec.Stdin, err = bson.MarshalExtJSON(doc, false, false)
		if err != nil {
			return spec, fmt.Errorf("encoding the document as JSON: %w", err)
		}
		if e.cfg.RubyRunner != nil {
			return spec, nil
		}
		spec.Path, spec.Args, err = rubyrunner.Command(rubyrunner.Options{
			RubyPath: e.cfg.Ruby, AppDir: e.cfg.AppDir, LoadPath: e.cfg.LoadPath, BootFile: e.cfg.BootFile,
		}, task)
		return spec, err
	}

	// Executables get canonical Extended JSON, which keeps every BSON type.
	spec.Stdin, err = bson.MarshalExtJSON(doc, true, false)
	if err != nil {
		return spec, fmt.Errorf("encoding the document as JSON: %w", err)
	}
	spec.Path = task.Path
	return spec, nil
}

func (e *Executor) environment(doc bson.Raw) []string {
	name, _ := doc.Lookup(taskdoc.FieldTask).StringValueOK()
	return append(os.Environ(),
		"BOLT_TASK_ID="+idString(doc.Lookup("_id")),
		"BOLT_TASK="+name,
		"BOLT_ENV="+e.cfg.Env,
		"CURRENT_ENV="+e.cfg.Env,
		"BOLT_MONGO_URI="+e.cfg.MongoURI,
		"BOLT_DATABASE="+e.cfg.Database,
		"BOLT_COLLECTION="+store.TasksCollection,
	)
}

// rubyResult is the outcome the Ruby runner writes to the result file.
type rubyResult struct {
	Success   bool            `json:"success"`
	Ex        string          `json:"ex"`
	Backtrace []string        `json:"backtrace"`
	Fields    json.RawMessage `json:"fields"`
}

func (e *Executor) readRubyResult(out *result, res childproc.Result, log zerolog.Logger) {
	var rr rubyResult
	if len(res.ResultJSON) == 0 || json.Unmarshal(res.ResultJSON, &rr) != nil {
		// The runner died before reporting (killed, crashed interpreter): judge by the process.
		e.readExecutableResult(out, res, log)
		if out.Success {
			out.Success = false
			out.Ex = "the Ruby runner exited without reporting an outcome"
		}
		return
	}
	out.Success = rr.Success && res.ExitCode == 0
	out.Ex = rr.Ex
	out.Backtrace = rr.Backtrace
	out.Stderr = string(res.Stderr)
	out.ExitStatus = exitStatus(res)
	if !out.Success && out.Ex == "" {
		out.Ex = "the Ruby runner failed: " + out.ExitStatus
	}
	e.mergeFields(out, rr.Fields, log)
}

func (e *Executor) readExecutableResult(out *result, res childproc.Result, log zerolog.Logger) {
	out.Stderr = string(res.Stderr)
	out.ExitStatus = exitStatus(res)
	switch {
	case res.StartErr != nil:
		out.Ex = "could not start the task: " + res.StartErr.Error()
	case res.Signal != "":
		out.Ex = "killed by signal " + res.Signal
	case res.ExitCode != 0:
		out.Ex = fmt.Sprintf("exited with status %d", res.ExitCode)
	default:
		out.Success = true
	}
	if !out.Success {
		out.Backtrace = lastLines(string(res.Stderr), backtraceLines)
	}
	if len(res.ResultJSON) > 0 {
		e.mergeFields(out, res.ResultJSON, log)
	}
}

// mergeFields adds the fields a task handed back to the outcome's document. Fields Bolt
// owns are ignored.
func (e *Executor) mergeFields(out *result, raw []byte, log zerolog.Logger) {
	if len(raw) == 0 || string(raw) == "null" {
		return
	}
	var fields bson.M
	if err := bson.UnmarshalExtJSON(raw, false, &fields); err != nil {
		log.Warn().Err(err).Msg("task handed back fields that are not a JSON object; ignored")
		return
	}
	for k, v := range fields {
		if !taskdoc.Reserved[k] {
			out.Document[k] = v
		}
	}
}

func exitStatus(res childproc.Result) string {
	switch {
	case res.StartErr != nil:
		return "not started"
	case res.Signal != "":
		return "signal " + res.Signal
	default:
		return fmt.Sprintf("exit status %d", res.ExitCode)
	}
}

func lastLines(s string, n int) []string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) == 1 && lines[0] == "" {
		return nil
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines
}

func attemptsOf(doc bson.Raw) int {
	v := doc.Lookup(taskdoc.FieldAttempts)
	if n, ok := v.AsInt64OK(); ok {
		return int(n)
	}
	return 1
}

func documentMap(doc bson.Raw) bson.M {
	m := bson.M{}
	_ = bson.Unmarshal(doc, &m)
	return m
}
