package main

import (
	"net/http"

	"github.com/magpie-im/magpie/client/chat"
	"github.com/magpie-im/magpie/web"
)

// webUI is the embedded browser chat UI served at "/".
func webUI() http.Handler { return web.Handler() }

// chatCmd is `magpie chat`, the terminal client.
func chatCmd(args []string) int { return chat.Main(args) }
