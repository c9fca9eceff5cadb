// Command boltbench is the helper of the benchmark scripts in bench/. It fills a Bolt
// application's queue, measures pickup latency, and samples a process's memory and CPU
// from /proc. It also runs a queue worker until it has finished a number of jobs, and
// prints the result tables. Each subcommand writes one JSON line (or the tables) to
// stdout or to the file given with --out, and its errors to stderr.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
)

const usage = `boltbench helps the scripts in bench/ measure Bolt.

Usage:
  boltbench fill      --app DIR --task NAME --due N [--future N]     queue tasks in an application's embedded store
  boltbench pickup    --app DIR --samples N --record FILE [...]      insert tasks one by one, report the pickup latency
  boltbench footprint --log FILE [--count-commands ADDR] -- CMD...   start a daemon, measure it while it is idle
  boltbench worker    --jobs N --done TEXT [--log FILE] -- CMD...    run a worker until N jobs are done
  boltbench drain     --jobs N --log FILE -- CMD...                  run a draining daemon, check and sample it
  boltbench table     [--results DIR]                                print the results as Markdown tables

Run "boltbench COMMAND -h" for a command's flags.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	commands := map[string]func([]string) error{
		"fill":      fill,
		"pickup":    pickup,
		"footprint": footprint,
		"worker":    worker,
		"drain":     drain,
		"table":     table,
	}
	run, ok := commands[os.Args[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "boltbench: unknown command %q\n\n%s", os.Args[1], usage)
		os.Exit(2)
	}
	err := run(os.Args[2:])
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "boltbench %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}
