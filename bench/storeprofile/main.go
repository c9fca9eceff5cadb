// Command storeprofile serves Bolt's embedded store on a loopback port, as `bolt db`
// does, and writes a CPU profile of the whole process when it stops. The benchmark runs
// `bolt run --mongo-uri` against it to see where the store spends its time per task.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"

	"github.com/rs/zerolog"

	"github.com/bolt-runner/bolt/embeddedstore"
)

func main() {
	data := flag.String("data", "", "folder of the store's data")
	profile := flag.String("profile", "store.cpu.pprof", "file that gets the CPU profile")
	flag.Parse()
	if err := serve(*data, *profile); err != nil {
		fmt.Fprintln(os.Stderr, "storeprofile:", err)
		os.Exit(1)
	}
}

func serve(data, profile string) error {
	if data == "" {
		return fmt.Errorf("--data is required")
	}
	out, err := os.Create(profile)
	if err != nil {
		return err
	}
	defer out.Close()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	server, err := embeddedstore.Start(ctx, embeddedstore.Options{Listen: "127.0.0.1:0", DataDir: data, Logger: zerolog.Nop()})
	if err != nil {
		return fmt.Errorf("starting the embedded store: %w", err)
	}
	defer server.Close()

	if err := pprof.StartCPUProfile(out); err != nil {
		return err
	}
	defer pprof.StopCPUProfile()
	fmt.Println(server.URI())
	<-ctx.Done()
	return nil
}
