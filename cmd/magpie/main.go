// Command magpie is Magpie's one binary: `serve` runs the server; `chat`
// is the terminal client; `bench` the load harness; `user` and `token` are
// admin tools for the data dir of a stopped server.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/magpie-im/magpie/internal/buildinfo"
	"github.com/magpie-im/magpie/server"
)

const usage = `usage: magpie <command> [flags]

commands:
  serve    run the server (magpie serve -h for its flags)
  chat     terminal chat client
  bench    load and benchmark harness
  user     admin: import users into a stopped server's data dir
  token    admin: mint a token with the server's secret
  version  the build: module version, VCS revision and time, Go version
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	cmd, args := os.Args[1], os.Args[2:]
	var code int
	switch cmd {
	case "serve":
		code = serve(args)
	case "user":
		code = userCmd(args)
	case "token":
		code = tokenCmd(args)
	case "chat":
		code = chatCmd(args)
	case "bench":
		code = benchCmd(args)
	case "version", "--version", "-version":
		fmt.Println(buildinfo.Get())
	case "-h", "--help", "help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "magpie: unknown command %q\n\n%s", cmd, usage)
		code = 2
	}
	os.Exit(code)
}

func serve(args []string) int {
	cfg, err := server.ParseFlags(args, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "magpie serve: %v\n", err)
		return 2
	}
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel))
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := server.Run(ctx, cfg, server.Options{Logger: log, UI: webUI()}); err != nil {
		log.Error("magpie serve", "err", err)
		return 1
	}
	return 0
}
