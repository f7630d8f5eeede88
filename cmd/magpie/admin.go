package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/magpie-im/magpie/server"
	"github.com/magpie-im/magpie/storage"
)

// userCmd: `magpie user import` creates many users in the data dir of a
// stopped server in a few batches (one password hash for all), and can
// write a token for each: bench set-up in seconds, not minutes.
func userCmd(args []string) int {
	if len(args) < 1 || args[0] != "import" {
		fmt.Fprintln(os.Stderr, "usage: magpie user import --data DIR --prefix NAME --count N [--password PW] [--tokens FILE]")
		return 2
	}
	fs := flag.NewFlagSet("magpie user import", flag.ContinueOnError)
	data := fs.String("data", "./data", "data directory of a stopped server")
	prefix := fs.String("prefix", "user", "usernames are PREFIX1 … PREFIXN")
	count := fs.Int("count", 0, "number of users")
	start := fs.Int("start", 1, "first number")
	password := fs.String("password", "password", "password of every imported user")
	tokens := fs.String("tokens", "", `write "uid username token" lines to this file ("-": stdout)`)
	ttl := fs.Duration("token-ttl", 24*time.Hour, "lifetime of the written tokens")
	secret := fs.String("secret", "", "token signing key, as the server's --secret (default: the data dir's)")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	if *count < 1 {
		fmt.Fprintln(os.Stderr, "magpie user import: --count must be at least 1")
		return 2
	}
	if len(*prefix)+len(strconv.Itoa(*start+*count)) > 32 || !validName(*prefix) {
		fmt.Fprintln(os.Stderr, "magpie user import: --prefix must be short and of [A-Za-z0-9_.-]")
		return 2
	}
	st, err := storage.Open(filepath.Join(*data, "db"), storage.Options{Fsync: true})
	if err != nil {
		fmt.Fprintf(os.Stderr, "magpie user import: open store (is the server stopped?): %v\n", err)
		return 1
	}
	defer st.Close()
	hash := server.HashPassword(*password)
	us := make([]storage.User, *count)
	for i := range us {
		us[i] = storage.User{Name: *prefix + strconv.Itoa(*start+i), Hash: hash}
	}
	t0 := time.Now()
	uids, err := st.ImportUsers(us)
	if err != nil {
		fmt.Fprintf(os.Stderr, "magpie user import: %v\n", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "imported %d users in %v\n", len(uids), time.Since(t0).Round(time.Millisecond))
	if *tokens == "" {
		return 0
	}
	key, err := server.LoadSecret(*data, *secret)
	if err != nil {
		fmt.Fprintf(os.Stderr, "magpie user import: %v\n", err)
		return 1
	}
	signer := server.NewSigner(key, *ttl)
	var out io.Writer = os.Stdout
	if *tokens != "-" {
		f, err := os.Create(*tokens)
		if err != nil {
			fmt.Fprintf(os.Stderr, "magpie user import: --tokens: %v\n", err)
			return 1
		}
		defer f.Close()
		out = f
	}
	w := bufio.NewWriter(out)
	for i, uid := range uids {
		tok, _ := signer.Mint(uid)
		fmt.Fprintf(w, "%d %s %s\n", uid, us[i].Name, tok)
	}
	if err := w.Flush(); err != nil {
		fmt.Fprintf(os.Stderr, "magpie user import: --tokens: %v\n", err)
		return 1
	}
	return 0
}

func validName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			return false
		}
	}
	return s != ""
}

// tokenCmd: `magpie token --data DIR --uid N` mints a token with the
// server's secret (no store access: works while the server runs).
func tokenCmd(args []string) int {
	fs := flag.NewFlagSet("magpie token", flag.ContinueOnError)
	data := fs.String("data", "./data", "data directory holding the secret")
	secret := fs.String("secret", "", "token signing key, as the server's --secret")
	uid := fs.Uint64("uid", 0, "user id")
	ttl := fs.Duration("ttl", 24*time.Hour, "token lifetime")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *uid == 0 {
		fmt.Fprintln(os.Stderr, "magpie token: --uid must be a positive uid")
		return 2
	}
	if *ttl <= 0 {
		fmt.Fprintln(os.Stderr, "magpie token: --ttl must be positive")
		return 2
	}
	if *secret == "" {
		if _, err := os.Stat(filepath.Join(*data, "secret")); err != nil {
			fmt.Fprintf(os.Stderr, "magpie token: no secret in --data %s: %v\n", *data, err)
			return 1
		}
	}
	key, err := server.LoadSecret(*data, *secret)
	if err != nil {
		fmt.Fprintf(os.Stderr, "magpie token: %v\n", err)
		return 1
	}
	tok, _ := server.NewSigner(key, *ttl).Mint(*uid)
	fmt.Println(tok)
	return 0
}
