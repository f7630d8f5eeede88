package main

import "github.com/magpie-im/magpie/bench"

// benchCmd is `magpie bench`: the load harness and its baseline server.
func benchCmd(args []string) int { return bench.Main(args) }
