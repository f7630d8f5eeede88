package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/term"

	sdk "github.com/magpie-im/magpie/client"
)

// Users of a running server, without --tokens or --spawn: PREFIX1 …
// PREFIXn are registered through POST /api/register (an existing name is
// logged in with the bench password instead) and logged in through POST
// /api/login, a few at a time (the server hashes every password with
// argon2id). Their "uid username token expires_at_ms" lines are cached per
// server and prefix, so a rerun logs in only the users whose token is
// missing or about to expire; a sample of the cached tokens is checked
// against the server first, and a refusal (a new data dir or secret)
// discards the cache.

// BenchPassword is the password of the users the harness creates through
// the HTTP API (--password).
const BenchPassword = "magpie-bench"

// tokenMargin: a cached token is used only if it outlives the run by this.
const tokenMargin = 30 * time.Minute

// verifySample is how many cached tokens are checked against the server.
const verifySample = 8

// provisioner creates and logs in bench users over HTTP.
type provisioner struct {
	base     string // HTTP base URL
	prefix   string
	password string
	conc     int
	cache    string // cache file
	hc       *http.Client
	progress func(done, total int, final bool)
}

// defaultCachePath is the cache file for server base and prefix, under
// the user's cache directory (os.UserCacheDir: $XDG_CACHE_HOME or
// ~/.cache), else the system temp dir.
func defaultCachePath(base, prefix string) string {
	dir, err := os.UserCacheDir()
	if err != nil {
		dir = os.TempDir()
	}
	key := base
	if u, err := url.Parse(base); err == nil && u.Host != "" {
		key = u.Host
	}
	clean := func(s string) string {
		return strings.Map(func(r rune) rune {
			if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_' {
				return r
			}
			return '_'
		}, s)
	}
	return filepath.Join(dir, "magpie", "bench", clean(key)+"-"+clean(prefix)+".tokens")
}

// users returns n users PREFIX1 … PREFIXn with valid tokens.
func (p *provisioner) users(ctx context.Context, n int) ([]user, error) {
	have := p.readCache()
	if len(have) > 0 {
		if err := p.verify(ctx, have, n); err != nil {
			fmt.Fprintf(os.Stderr, "bench: cached tokens in %s not accepted (%v); logging in again\n", p.cache, err)
			have = map[string]user{}
		}
	}
	out := make([]user, n)
	var need []int
	limit := time.Now().Add(tokenMargin).UnixMilli()
	for i := range out {
		name := p.prefix + strconv.Itoa(i+1)
		if u, ok := have[strings.ToLower(name)]; ok && (u.exp == 0 || u.exp > limit) {
			out[i] = u
			continue
		}
		need = append(need, i)
	}
	var err error
	if len(need) > 0 {
		err = p.create(ctx, out, need)
		for _, i := range need {
			if out[i].token != "" {
				have[strings.ToLower(out[i].name)] = out[i]
			}
		}
		if werr := p.writeCache(have); werr != nil && err == nil {
			fmt.Fprintf(os.Stderr, "bench: could not cache the tokens: %v\n", werr)
		}
	}
	if err != nil {
		return nil, err
	}
	return out, nil
}

// verify checks a sample of the cached users among the first n: each token
// must be accepted and name its user's uid.
func (p *provisioner) verify(ctx context.Context, have map[string]user, n int) error {
	idx := []int{1, n}
	for k := 1; k < verifySample-1; k++ {
		idx = append(idx, 1+rand.IntN(n))
	}
	for _, i := range idx {
		u, ok := have[strings.ToLower(p.prefix+strconv.Itoa(i))]
		if !ok || u.exp != 0 && u.exp < time.Now().UnixMilli() {
			continue
		}
		// The first user after uid-1 whose name has the prefix "name" is
		// the user itself if the server still knows it by that uid.
		rows, err := sdk.ListUsers(ctx, p.hc, p.base, u.token, sdk.UsersQuery{Prefix: u.name, After: int64(u.uid) - 1, Limit: 1})
		if err != nil {
			return fmt.Errorf("%s: %w", u.name, err)
		}
		if len(rows) == 0 || uint64(rows[0].UID) != u.uid || !strings.EqualFold(rows[0].Username, u.name) {
			return fmt.Errorf("%s is no longer uid %d", u.name, u.uid)
		}
	}
	return nil
}

// create registers (or finds) and logs in the users at the indexes need,
// filling out; the first error stops the rest.
func (p *provisioner) create(ctx context.Context, out []user, need []int) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		next, done atomic.Int64
		errOnce    sync.Once
		firstErr   error
		wg         sync.WaitGroup
	)
	stop := make(chan struct{})
	var pw sync.WaitGroup
	pw.Add(1)
	go func() {
		defer pw.Done()
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				p.progress(int(done.Load()), len(need), true)
				return
			case <-t.C:
				p.progress(int(done.Load()), len(need), false)
			}
		}
	}()
	for w := 0; w < max(p.conc, 1); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				k := int(next.Add(1)) - 1
				if k >= len(need) {
					return
				}
				i := need[k]
				u, err := p.one(ctx, p.prefix+strconv.Itoa(i+1))
				if err != nil {
					errOnce.Do(func() { firstErr = err; cancel() })
					return
				}
				out[i] = u
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	close(stop)
	pw.Wait()
	return firstErr
}

// one registers name (409: it exists) and logs it in.
func (p *provisioner) one(ctx context.Context, name string) (user, error) {
	_, err := sdk.Register(ctx, p.hc, p.base, name, p.password)
	var ce *sdk.Error
	if err != nil && !(errors.As(err, &ce) && ce.Code == sdk.CodeExists) {
		return user{}, fmt.Errorf("POST %s/api/register %s: %w", p.base, name, explain(err))
	}
	lr, err := sdk.Login(ctx, p.hc, p.base, name, p.password)
	if err != nil {
		if errors.As(err, &ce) && (ce.Code == sdk.CodeUnauthorized || ce.Code == sdk.CodeRateLimited) {
			return user{}, fmt.Errorf("POST %s/api/login %s: %w (the user exists with another password than --password %q? choose another --prefix)", p.base, name, err, p.password)
		}
		return user{}, fmt.Errorf("POST %s/api/login %s: %w", p.base, name, explain(err))
	}
	return user{uid: uint64(lr.UID), name: name, token: lr.Token, exp: lr.ExpiresAt}, nil
}

// explain adds what to do to an error that says the server is not there.
func explain(err error) error {
	var ce *sdk.Error
	if errors.As(err, &ce) {
		if ce.Status == http.StatusNotFound {
			return fmt.Errorf("%w (no user API there: is --http a Magpie server? The baseline server has none; use --tokens)", err)
		}
		return err
	}
	return fmt.Errorf("%w (is the server running? `make run` starts one; or use --tokens FILE, or --spawn --data DIR)", err)
}

func (p *provisioner) readCache() map[string]user {
	have := map[string]user{}
	us, err := readTokens(p.cache)
	if err != nil {
		return have
	}
	for _, u := range us {
		have[strings.ToLower(u.name)] = u
	}
	return have
}

// writeCache replaces the cache file with have, in name order (PREFIX1,
// PREFIX2, …).
func (p *provisioner) writeCache(have map[string]user) error {
	us := make([]user, 0, len(have))
	for _, u := range have {
		us = append(us, u)
	}
	sort.Slice(us, func(i, j int) bool {
		a, b := us[i].name, us[j].name
		return len(a) < len(b) || len(a) == len(b) && a < b
	})
	if err := os.MkdirAll(filepath.Dir(p.cache), 0o700); err != nil {
		return err
	}
	tmp := p.cache + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	fmt.Fprintf(w, "# magpie bench users of %s (password %q): uid username token expires_at_ms\n", p.base, p.password)
	for _, u := range us {
		fmt.Fprintf(w, "%d %s %s %d\n", u.uid, u.name, u.token, u.exp)
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, p.cache)
}

// progressLine prints "bench: users 120/501 ready (37/s)" on stderr: one
// line updated in place on a terminal, else a line every 10 s.
func progressLine(what string) func(done, total int, final bool) {
	tty := term.IsTerminal(int(os.Stderr.Fd()))
	t0 := time.Now()
	var last time.Time
	return func(done, total int, final bool) {
		el := time.Since(t0)
		line := fmt.Sprintf("bench: %s %d/%d (%.0f/s, %v)", what, done, total, float64(done)/max(el.Seconds(), 1e-3), el.Round(time.Second))
		switch {
		case tty && final:
			fmt.Fprintf(os.Stderr, "\r\x1b[K%s\n", line)
		case tty:
			fmt.Fprintf(os.Stderr, "\r\x1b[K%s", line)
		case final || time.Since(last) >= 10*time.Second:
			last = time.Now()
			fmt.Fprintln(os.Stderr, line)
		}
	}
}
