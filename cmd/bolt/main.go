// Command bolt runs task documents from a MongoDB collection, each in its own OS process.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/bolt-runner/bolt/childproc"
)

const usage = `bolt runs the tasks in MongoDB collection task_queue of database bolt_<env>,
each in its own OS process.

Usage:
  bolt run [--drain] [settings]       run tasks until stopped (--drain: until none is due)
  bolt enqueue TASK [--json '{...}'] [--run-at TIME] [--timeout SECONDS] [settings]
                                      insert a task and print its id
  bolt db [--listen ADDR] [--data DIR] serve the embedded store on its own
  bolt config [settings]              print every setting, its value and where it came from
  bolt setup [--systemd] [settings]   prepare the application folder: log/, tmp/, bolt.conf and
                                      the bolt_watchdog script for cron (or a systemd unit)
  bolt watchdog [settings]            start Bolt unless it is alive; replace it when its
                                      heartbeat is older than heartbeat_kill
  bolt help                           print this text

Settings come from bolt.conf in the application folder, then BOLT_<NAME> variables, then
flags (a flag wins). Run "bolt config" to list them. Called as bolt_setup, the binary runs
bolt setup.
`

// errUsage marks a command-line mistake; main prints the usage after it.
var errUsage = errors.New("usage")

func main() {
	os.Exit(run(os.Args))
}

func run(args []string) int {
	name := filepath.Base(args[0])
	rest := args[1:]
	command := ""
	switch {
	case name == setupName:
		command = "setup"
	case len(rest) > 0:
		command, rest = rest[0], rest[1:]
	}

	var err error
	switch command {
	case "run":
		err = runDaemon(rest)
	case "enqueue":
		err = enqueue(rest)
	case "db":
		err = serveDB(rest)
	case "config":
		err = printConfig(rest)
	case "setup":
		err = setup(rest)
	case "watchdog":
		err = runWatchdog(rest)
	case childproc.GuardCommand:
		childproc.RunGuard(os.Stdin)
		return 0
	case "help", "-h", "--help":
		fmt.Print(usage)
		return 0
	case "":
		fmt.Fprint(os.Stderr, usage)
		return 2
	default:
		fmt.Fprintf(os.Stderr, "%s: unknown command %q\n\n%s", name, command, usage)
		return 2
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s %s: %v\n", name, command, err)
		if errors.Is(err, errUsage) {
			return 2
		}
		return 1
	}
	return 0
}
