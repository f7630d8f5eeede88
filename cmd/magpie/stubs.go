package main

import (
	"fmt"
	"net/http"
	"os"
)

// Wired as the client, web and bench packages land.

func webUI() http.Handler { return nil }

func chatCmd(args []string) int {
	fmt.Fprintln(os.Stderr, "magpie chat: not built yet")
	return 2
}

func benchCmd(args []string) int {
	fmt.Fprintln(os.Stderr, "magpie bench: not built yet")
	return 2
}
