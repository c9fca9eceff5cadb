package main

import (
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/bolt-runner/bolt/config"
)

// commandFlags is a flag set with one flag per setting plus a command's own flags.
type commandFlags struct {
	*flag.FlagSet
	settings map[string]*string
}

// newCommandFlags registers every setting as a flag except those in own, which the command
// defines itself with another meaning (enqueue's --timeout is the task's, not the default).
func newCommandFlags(name string, own ...string) *commandFlags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return &commandFlags{FlagSet: fs, settings: config.RegisterFlags(fs, own...)}
}

// parse reads flags placed before or after positional arguments and returns the positional
// ones.
func (f *commandFlags) parse(args []string) ([]string, error) {
	var positional []string
	for {
		if err := f.Parse(args); err != nil {
			if err == flag.ErrHelp {
				f.SetOutput(os.Stdout)
				f.PrintDefaults()
				return nil, err
			}
			return nil, fmt.Errorf("%w (run bolt help)", err)
		}
		args = f.Args()
		if len(args) == 0 {
			return positional, nil
		}
		positional = append(positional, args[0])
		args = args[1:]
	}
}

// load builds the configuration from the file, the environment and the flags that were set.
func (f *commandFlags) load() (*config.Config, error) {
	set := map[string]string{}
	f.Visit(func(fl *flag.Flag) {
		for name, v := range f.settings {
			if config.FlagName(name) == fl.Name {
				set[name] = *v
			}
		}
	})
	return config.Load(set, os.Getenv)
}

func printConfig(args []string) error {
	f := newCommandFlags("config")
	if _, err := f.parse(args); err != nil {
		return err
	}
	cfg, err := f.load()
	if err != nil {
		return err
	}
	for _, line := range cfg.Describe() {
		fmt.Println(line)
	}
	return nil
}
