// Package config loads Bolt's settings from defaults, the configuration file, BOLT_<NAME>
// environment variables and command-line flags, in that order of precedence (a flag wins).
package config

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// FileName is the configuration file Bolt reads from the application folder.
const FileName = "bolt.conf"

// Environments lists the allowed values of CURRENT_ENV.
var Environments = []string{"production", "development", "test"}

// Config holds every setting after loading and validation.
type Config struct {
	AppDir       string
	Env          string
	MongoURI     string
	DBListen     string
	DBData       string
	LoadPath     []string
	BootFile     string
	Ruby         string
	RubyPreload  bool
	Throttle     int
	Timeout      time.Duration
	MaxTimeout   time.Duration
	KillGrace    time.Duration
	OutputLimit  int
	LogFile      string
	LogLevel     string
	MaxAttempts  int
	Lease        time.Duration
	CatchUpLimit int
	Watch        string
	SMTPURL      string
	MailFrom     string
	DefaultEmail string

	// Stopping and watching over the daemon.
	StopGrace time.Duration
	KillFiles []string
	// HeartbeatDir is the heartbeat folder with a leading ~/ already replaced by $HOME.
	HeartbeatDir  string
	HeartbeatName string
	HeartbeatWarn time.Duration
	HeartbeatKill time.Duration
	StartTimeout  time.Duration

	// Sources records where each setting's value came from: "default", "file", "env" or "flag".
	Sources map[string]string
}

// Setting describes one configurable value.
type Setting struct {
	Name    string // snake_case name used in the file; the variable is BOLT_ + upper case
	Default string
	Help    string
	Secret  bool
	apply   func(c *Config, value string) error
}

// Settings is the table of every setting, in the order `bolt config` prints them.
var Settings = []*Setting{
	{Name: "app", Default: ".", Help: "application folder; relative paths below are taken from it",
		apply: func(c *Config, v string) error { c.AppDir = v; return nil }},
	{Name: "env", Default: "development", Help: "environment: production, development or test (also read from CURRENT_ENV)",
		apply: func(c *Config, v string) error {
			for _, e := range Environments {
				if v == e {
					c.Env = v
					return nil
				}
			}
			return fmt.Errorf("allowed values are %s", strings.Join(Environments, ", "))
		}},
	{Name: "mongo_uri", Default: "", Help: "MongoDB URI; empty starts the embedded store", Secret: true,
		apply: func(c *Config, v string) error {
			if v != "" && !strings.HasPrefix(v, "mongodb://") && !strings.HasPrefix(v, "mongodb+srv://") {
				return errors.New("a MongoDB URI starts with mongodb:// or mongodb+srv://")
			}
			c.MongoURI = v
			return nil
		}},
	{Name: "db_listen", Default: "127.0.0.1:27017", Help: "address of the embedded store when mongo_uri is empty (loopback only; a busy port falls back to a free one)",
		apply: func(c *Config, v string) error { c.DBListen = v; return nil }},
	{Name: "db_data", Default: ".bolt/db", Help: "folder of the embedded store's data",
		apply: func(c *Config, v string) error { c.DBData = v; return nil }},
	{Name: "load_path", Default: "lib,.", Help: "comma-separated folders searched for bolt/tasks/<task>.rb and bolt/tasks/<task>",
		apply: func(c *Config, v string) error {
			var dirs []string
			for _, d := range strings.Split(v, ",") {
				if d = strings.TrimSpace(d); d != "" {
					dirs = append(dirs, d)
				}
			}
			if len(dirs) == 0 {
				return errors.New("give at least one folder")
			}
			c.LoadPath = dirs
			return nil
		}},
	{Name: "boot_file", Default: "config/bolt.rb", Help: "Ruby file loaded before each Ruby task when it exists",
		apply: func(c *Config, v string) error { c.BootFile = v; return nil }},
	{Name: "ruby", Default: "ruby", Help: "Ruby interpreter used for Ruby tasks",
		apply: func(c *Config, v string) error { c.Ruby = v; return nil }},
	{Name: "ruby_preload", Default: "true", Help: "true: fork Ruby tasks from one Ruby process that loaded Bundler and the boot file once; false: start a fresh Ruby per task (for boot code that is not fork-safe)",
		apply: func(c *Config, v string) error {
			preload, err := strconv.ParseBool(v)
			if err != nil {
				return errors.New("want true or false")
			}
			c.RubyPreload = preload
			return nil
		}},
	{Name: "throttle", Default: "5", Help: "maximum number of tasks running at once",
		apply: intSetting(1, 10000, func(c *Config, n int) { c.Throttle = n })},
	{Name: "timeout", Default: "300", Help: "seconds a task may run when its document has no timeout",
		apply: secondsSetting(func(c *Config, d time.Duration) { c.Timeout = d })},
	{Name: "max_timeout", Default: "604800", Help: "largest timeout in seconds a document may ask for; larger ones fail the task",
		apply: secondsSetting(func(c *Config, d time.Duration) { c.MaxTimeout = d })},
	{Name: "kill_grace", Default: "5", Help: "seconds between SIGTERM and SIGKILL when a task is stopped",
		apply: secondsSetting(func(c *Config, d time.Duration) { c.KillGrace = d })},
	{Name: "stop_grace", Default: "30", Help: "seconds running tasks may go on finishing after SIGTERM or SIGINT before they are stopped and released",
		apply: secondsSetting(func(c *Config, d time.Duration) { c.StopGrace = d })},
	{Name: "output_limit", Default: "65536", Help: "bytes of each task's stdout and stderr kept (the tail)",
		apply: intSetting(1024, 64<<20, func(c *Config, n int) { c.OutputLimit = n })},
	{Name: "log_file", Default: "log/flagella.log", Help: "log file",
		apply: func(c *Config, v string) error { c.LogFile = v; return nil }},
	{Name: "log_level", Default: "info", Help: "debug, info, warn or error",
		apply: func(c *Config, v string) error {
			switch v {
			case "debug", "info", "warn", "error":
				c.LogLevel = v
				return nil
			}
			return errors.New("allowed values are debug, info, warn, error")
		}},
	{Name: "kill_files", Default: "tmp/kill.flagella,tmp/kill.bolt", Help: "comma-separated files; creating or touching one after start stops Bolt (empty: none)",
		apply: func(c *Config, v string) error {
			c.KillFiles = nil
			for _, f := range strings.Split(v, ",") {
				if f = strings.TrimSpace(f); f != "" {
					c.KillFiles = append(c.KillFiles, f)
				}
			}
			return nil
		}},
	{Name: "heartbeat_dir", Default: "~/flagella/timestamps", Help: "folder of the heartbeat file, whose modification time Bolt updates while its loop runs",
		apply: func(c *Config, v string) error {
			if strings.TrimSpace(v) == "" {
				return errors.New("give a folder")
			}
			c.HeartbeatDir = v
			return nil
		}},
	{Name: "heartbeat_name", Default: "bolt", Help: "process name in the heartbeat file name <name>__<warn>__<kill>; give each application on a host its own",
		apply: func(c *Config, v string) error {
			if !validHeartbeatName(v) {
				return errors.New("use letters, digits, '.', '-' and single '_' (no '__', no '/')")
			}
			c.HeartbeatName = v
			return nil
		}},
	{Name: "heartbeat_warn", Default: "60", Help: "seconds without a heartbeat after which a monitor should warn (part of the file name)",
		apply: wholeSecondsSetting(1, 86400, func(c *Config, d time.Duration) { c.HeartbeatWarn = d })},
	{Name: "heartbeat_kill", Default: "300", Help: "seconds without a heartbeat after which bolt watchdog kills Bolt and starts a new one (part of the file name)",
		apply: wholeSecondsSetting(minHeartbeatKill, 7*86400, func(c *Config, d time.Duration) { c.HeartbeatKill = d })},
	{Name: "start_timeout", Default: "60", Help: "seconds bolt watchdog waits for a Bolt it started to register before it reports a failure",
		apply: secondsSetting(func(c *Config, d time.Duration) { c.StartTimeout = d })},
	{Name: "max_attempts", Default: "3", Help: "runs of a task interrupted by its daemon's death before it is failed",
		apply: intSetting(1, 1000, func(c *Config, n int) { c.MaxAttempts = n })},
	{Name: "lease", Default: "30", Help: "seconds without a liveness update after which a daemon counts as dead",
		apply: secondsSetting(func(c *Config, d time.Duration) { c.Lease = d })},
	{Name: "catch_up_limit", Default: "20000", Help: "waiting tasks read by one catch-up query",
		apply: intSetting(100, 10_000_000, func(c *Config, n int) { c.CatchUpLimit = n })},
	{Name: "watch", Default: "auto", Help: "how new tasks are found: auto (a change stream where the server has them, else polling) or poll (always poll, for proxies that do not pass change streams)",
		apply: func(c *Config, v string) error {
			if v != "auto" && v != "poll" {
				return errors.New("allowed values are auto, poll")
			}
			c.Watch = v
			return nil
		}},
	{Name: "smtp_url", Default: "", Help: "SMTP server, smtp://user:pass@host:587 (STARTTLS) or smtps://host:465", Secret: true,
		apply: func(c *Config, v string) error { c.SMTPURL = v; return nil }},
	{Name: "mail_from", Default: "bolt@localhost", Help: "From address of Bolt's mails",
		apply: func(c *Config, v string) error { c.MailFrom = v; return nil }},
	{Name: "default_email", Default: "", Help: "recipient of mails for tasks without an email field",
		apply: func(c *Config, v string) error { c.DefaultEmail = v; return nil }},
}

func intSetting(lo, hi int, set func(*Config, int)) func(*Config, string) error {
	return func(c *Config, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < lo || n > hi {
			return fmt.Errorf("want a whole number from %d to %d", lo, hi)
		}
		set(c, n)
		return nil
	}
}

// minHeartbeatKill is the smallest heartbeat_kill allowed. A healthy loop turns at least every
// 2 seconds and touches the heartbeat at most once a second, so a healthy heartbeat can be about
// 3 seconds old; 10 seconds leaves room for a slow store call.
const minHeartbeatKill = 10

func wholeSecondsSetting(lo, hi int, set func(*Config, time.Duration)) func(*Config, string) error {
	return func(c *Config, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < lo || n > hi {
			return fmt.Errorf("want a whole number of seconds from %d to %d", lo, hi)
		}
		set(c, time.Duration(n)*time.Second)
		return nil
	}
}

// validHeartbeatName reports whether name can be the first part of name__warn__kill.
func validHeartbeatName(name string) bool {
	if name == "" || strings.Contains(name, "__") {
		return false
	}
	for _, r := range name {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_'
		if !ok {
			return false
		}
	}
	return true
}

func secondsSetting(set func(*Config, time.Duration)) func(*Config, string) error {
	return func(c *Config, v string) error {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f <= 0 || f > 365*24*3600 {
			return errors.New("want a number of seconds greater than 0 and at most one year")
		}
		set(c, time.Duration(f*float64(time.Second)))
		return nil
	}
}

// EnvName returns the environment variable of a setting, such as BOLT_THROTTLE.
func EnvName(name string) string { return "BOLT_" + strings.ToUpper(name) }

// FlagName returns the command-line flag of a setting, such as --mongo-uri.
func FlagName(name string) string { return strings.ReplaceAll(name, "_", "-") }

// RegisterFlags adds one string flag per setting to fs, except the settings named in skip.
// Load reads only the flags that were set.
func RegisterFlags(fs *flag.FlagSet, skip ...string) map[string]*string {
	values := make(map[string]*string, len(Settings))
	for _, s := range Settings {
		if slices.Contains(skip, s.Name) {
			continue
		}
		values[s.Name] = fs.String(FlagName(s.Name), "", fmt.Sprintf("%s (default %q)", s.Help, s.Default))
	}
	return values
}

// Load builds the configuration. flags holds the values set on the command line, by setting name;
// getenv reads the environment (os.Getenv in production).
func Load(flags map[string]string, getenv func(string) string) (*Config, error) {
	c := &Config{Sources: map[string]string{}}
	values := map[string]string{}
	for _, s := range Settings {
		values[s.Name] = s.Default
		c.Sources[s.Name] = "default"
	}

	// The application folder decides where the file is, so it is resolved first.
	app := firstNonEmpty(flags["app"], getenv(EnvName("app")), ".")
	file := filepath.Join(app, FileName)
	fromFile, err := readFile(file)
	if err != nil {
		return nil, err
	}
	for name, v := range fromFile {
		values[name] = v
		c.Sources[name] = "file"
	}
	if v := getenv("CURRENT_ENV"); v != "" {
		values["env"] = v
		c.Sources["env"] = "env CURRENT_ENV"
	}
	for _, s := range Settings {
		if v, ok := lookup(getenv, EnvName(s.Name)); ok {
			values[s.Name] = v
			c.Sources[s.Name] = "env " + EnvName(s.Name)
		}
		if v, ok := flags[s.Name]; ok {
			values[s.Name] = v
			c.Sources[s.Name] = "flag --" + FlagName(s.Name)
		}
	}

	for _, s := range Settings {
		if err := s.apply(c, values[s.Name]); err != nil {
			return nil, fmt.Errorf("invalid setting %s = %q (from %s): %w", s.Name, mask(s, values[s.Name]), c.Sources[s.Name], err)
		}
	}
	if c.AppDir, err = filepath.Abs(c.AppDir); err != nil {
		return nil, fmt.Errorf("resolving application folder: %w", err)
	}
	if info, err := os.Stat(c.AppDir); err != nil || !info.IsDir() {
		return nil, fmt.Errorf("invalid setting app = %q: not a folder; run Bolt from the application folder or pass --app DIR", c.AppDir)
	}
	if c.Timeout > c.MaxTimeout {
		return nil, fmt.Errorf("invalid setting timeout = %s: larger than max_timeout %s", c.Timeout, c.MaxTimeout)
	}
	home := getenv("HOME")
	if home == "" {
		// A getenv without HOME (as in tests) still expands ~/ the way the process would.
		home, _ = os.UserHomeDir()
	}
	if err := c.checkHeartbeat(home); err != nil {
		return nil, err
	}
	return c, nil
}

// checkHeartbeat expands ~/ in heartbeat_dir and checks the heartbeat thresholds against
// each other and against the stop time.
func (c *Config) checkHeartbeat(home string) error {
	if c.HeartbeatDir == "~" || strings.HasPrefix(c.HeartbeatDir, "~/") {
		if home == "" {
			return fmt.Errorf("invalid setting heartbeat_dir = %q: HOME is not set; set HOME or give an absolute folder", c.HeartbeatDir)
		}
		c.HeartbeatDir = filepath.Join(home, strings.TrimPrefix(c.HeartbeatDir, "~"))
	}
	if c.HeartbeatWarn >= c.HeartbeatKill {
		return fmt.Errorf("invalid setting heartbeat_warn = %s: must be less than heartbeat_kill %s",
			seconds(c.HeartbeatWarn), seconds(c.HeartbeatKill))
	}
	// The loop no longer touches the heartbeat while Bolt waits for running tasks to stop, so
	// a stop must end before the watchdog would judge Bolt stuck.
	if c.StopGrace+c.KillGrace >= c.HeartbeatKill {
		return fmt.Errorf("invalid setting stop_grace = %s: stop_grace plus kill_grace (%s) must be less than heartbeat_kill %s, "+
			"or bolt watchdog would kill Bolt while it stops; lower stop_grace or raise heartbeat_kill",
			seconds(c.StopGrace), seconds(c.KillGrace), seconds(c.HeartbeatKill))
	}
	return nil
}

// HeartbeatPath returns the heartbeat file, <heartbeat_dir>/<name>__<warn>__<kill>, with the
// thresholds in whole seconds as monitors of this file-name convention read them.
func (c *Config) HeartbeatPath() string {
	name := fmt.Sprintf("%s__%d__%d", c.HeartbeatName, int(c.HeartbeatWarn.Seconds()), int(c.HeartbeatKill.Seconds()))
	return filepath.Join(c.Path(c.HeartbeatDir), name)
}

func lookup(getenv func(string) string, name string) (string, bool) {
	v := getenv(name)
	return v, v != ""
}

func firstNonEmpty(values ...string) string {
	for _, v := range values {
		if v != "" {
			return v
		}
	}
	return ""
}

// readFile parses `name = value` lines; `#` starts a comment line. A missing file is no error.
func readFile(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading configuration file: %w", err)
	}
	defer f.Close()

	known := map[string]bool{}
	for _, s := range Settings {
		known[s.Name] = true
	}
	values := map[string]string{}
	scanner := bufio.NewScanner(f)
	for line := 1; scanner.Scan(); line++ {
		text := strings.TrimSpace(scanner.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		name, value, ok := strings.Cut(text, "=")
		name = strings.TrimSpace(name)
		if !ok || !known[name] {
			return nil, fmt.Errorf("%s:%d: expected `name = value` with a known setting name, got %q", path, line, text)
		}
		values[name] = strings.Trim(strings.TrimSpace(value), `"`)
	}
	if err := scanner.Err(); err != nil {
		return nil, fmt.Errorf("reading configuration file: %w", err)
	}
	return values, nil
}

// Path resolves p against the application folder unless it is absolute.
func (c *Config) Path(p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(c.AppDir, p)
}

// Database returns the database name for the environment.
func (c *Config) Database() string { return "bolt_" + c.Env }

// Describe returns `name = value  # source` lines for every setting, with secrets masked.
func (c *Config) Describe() []string {
	var lines []string
	for _, s := range Settings {
		v := c.value(s.Name)
		lines = append(lines, fmt.Sprintf("%s = %s  # %s", s.Name, mask(s, v), c.Sources[s.Name]))
	}
	return lines
}

func (c *Config) value(name string) string {
	switch name {
	case "app":
		return c.AppDir
	case "env":
		return c.Env
	case "mongo_uri":
		return c.MongoURI
	case "db_listen":
		return c.DBListen
	case "db_data":
		return c.DBData
	case "load_path":
		return strings.Join(c.LoadPath, ",")
	case "boot_file":
		return c.BootFile
	case "ruby":
		return c.Ruby
	case "ruby_preload":
		return strconv.FormatBool(c.RubyPreload)
	case "throttle":
		return strconv.Itoa(c.Throttle)
	case "timeout":
		return seconds(c.Timeout)
	case "max_timeout":
		return seconds(c.MaxTimeout)
	case "kill_grace":
		return seconds(c.KillGrace)
	case "stop_grace":
		return seconds(c.StopGrace)
	case "output_limit":
		return strconv.Itoa(c.OutputLimit)
	case "log_file":
		return c.LogFile
	case "log_level":
		return c.LogLevel
	case "kill_files":
		return strings.Join(c.KillFiles, ",")
	case "heartbeat_dir":
		return c.HeartbeatDir
	case "heartbeat_name":
		return c.HeartbeatName
	case "heartbeat_warn":
		return seconds(c.HeartbeatWarn)
	case "heartbeat_kill":
		return seconds(c.HeartbeatKill)
	case "start_timeout":
		return seconds(c.StartTimeout)
	case "max_attempts":
		return strconv.Itoa(c.MaxAttempts)
	case "lease":
		return seconds(c.Lease)
	case "catch_up_limit":
		return strconv.Itoa(c.CatchUpLimit)
	case "watch":
		return c.Watch
	case "smtp_url":
		return c.SMTPURL
	case "mail_from":
		return c.MailFrom
	case "default_email":
		return c.DefaultEmail
	}
	return ""
}

func seconds(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', -1, 64) }

// mask hides the password of a URI-valued secret setting.
func mask(s *Setting, v string) string {
	if !s.Secret || v == "" {
		return v
	}
	u, err := url.Parse(v)
	if err != nil {
		return "(unparsable, hidden)"
	}
	return u.Redacted()
}
