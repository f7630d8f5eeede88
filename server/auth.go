package server

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/argon2"
)

// Tokens are "v1.<uid>.<expires unix ms>.<base64url HMAC-SHA256 of the
// first three parts>". They are opaque to clients.

// Signer mints and verifies tokens. Safe for concurrent use.
type Signer struct {
	key []byte
	ttl time.Duration
	now func() time.Time
}

// NewSigner returns a Signer with key and token lifetime ttl.
// Any goroutine.
func NewSigner(key []byte, ttl time.Duration) *Signer {
	return &Signer{key: key, ttl: ttl, now: time.Now}
}

// Mint returns a token for uid and its expiry (Unix ms).
// Any goroutine.
func (s *Signer) Mint(uid uint64) (string, int64) {
	exp := s.now().Add(s.ttl).UnixMilli()
	return s.MintUntil(uid, exp), exp
}

// MintUntil returns a token for uid that expires at exp (Unix ms).
// Any goroutine.
func (s *Signer) MintUntil(uid uint64, exp int64) string {
	b := make([]byte, 0, 96)
	b = append(b, "v1."...)
	b = strconv.AppendUint(b, uid, 10)
	b = append(b, '.')
	b = strconv.AppendInt(b, exp, 10)
	sig := s.sign(b)
	b = append(b, '.')
	b = base64.RawURLEncoding.AppendEncode(b, sig[:])
	return string(b)
}

// sign returns the HMAC of msg. Any goroutine.
func (s *Signer) sign(msg []byte) [sha256.Size]byte {
	m := hmac.New(sha256.New, s.key)
	m.Write(msg)
	var out [sha256.Size]byte
	m.Sum(out[:0])
	return out
}

// Errors of Verify.
var (
	ErrBadToken     = errors.New("malformed or forged token")
	ErrExpiredToken = errors.New("expired token")
)

// Verify checks the signature in constant time and the expiry, and returns
// the uid.
// Any goroutine (event loops call it: about 1 µs).
func (s *Signer) Verify(tok string) (uint64, error) {
	if len(tok) > 256 || !strings.HasPrefix(tok, "v1.") {
		return 0, ErrBadToken
	}
	dot := strings.LastIndexByte(tok, '.')
	if dot <= 3 {
		return 0, ErrBadToken
	}
	// Check the length before decoding: Decode writes past a too-small
	// destination (found by FuzzVerifyToken).
	if base64.RawURLEncoding.EncodedLen(sha256.Size) != len(tok)-dot-1 {
		return 0, ErrBadToken
	}
	var sig [sha256.Size + 2]byte
	n, err := base64.RawURLEncoding.Decode(sig[:], []byte(tok[dot+1:]))
	if err != nil || n != sha256.Size {
		return 0, ErrBadToken
	}
	want := s.sign([]byte(tok[:dot]))
	if subtle.ConstantTimeCompare(sig[:sha256.Size], want[:]) != 1 {
		return 0, ErrBadToken
	}
	parts := strings.Split(tok[3:dot], ".")
	if len(parts) != 2 {
		return 0, ErrBadToken
	}
	uid, err1 := strconv.ParseUint(parts[0], 10, 64)
	exp, err2 := strconv.ParseInt(parts[1], 10, 64)
	if err1 != nil || err2 != nil || uid == 0 {
		return 0, ErrBadToken
	}
	if s.now().UnixMilli() >= exp {
		return 0, ErrExpiredToken
	}
	return uid, nil
}

// LoadSecret returns the signing key: flagSecret when set, else the key in
// dir/secret, generated (32 random bytes, hex, mode 0600) on first use.
// Run, before the listeners start.
func LoadSecret(dir, flagSecret string) ([]byte, error) {
	if flagSecret != "" {
		return []byte(flagSecret), nil
	}
	path := filepath.Join(dir, "secret")
	if b, err := os.ReadFile(path); err == nil {
		key := strings.TrimSpace(string(b))
		if len(key) < 32 {
			return nil, fmt.Errorf("secret file %s is too short", path)
		}
		return []byte(key), nil
	} else if !os.IsNotExist(err) {
		return nil, fmt.Errorf("read secret: %w", err)
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return nil, err
	}
	key := hex.EncodeToString(raw[:])
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("write secret: %w", err)
	}
	if _, err := f.WriteString(key + "\n"); err != nil {
		f.Close()
		return nil, fmt.Errorf("write secret: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return nil, fmt.Errorf("write secret: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	return []byte(key), nil
}

// Password hashes are argon2id, "argon2id$<t>$<m KiB>$<p>$<salt hex>$<hash hex>".
// Parameters follow OWASP's minimum (19 MiB, 2 passes). Hashing runs on
// HTTP goroutines under a semaphore (hashSem), never on an event loop.
const (
	argonTime    = 2
	argonMemory  = 19 * 1024
	argonThreads = 1
	argonKeyLen  = 32
)

// HashPassword returns an encoded argon2id hash of pw.
// Any goroutine but an event loop (argon2id takes tens of ms); the HTTP handlers call it under hashSem.
func HashPassword(pw string) []byte {
	var salt [16]byte
	if _, err := rand.Read(salt[:]); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	key := argon2.IDKey([]byte(pw), salt[:], argonTime, argonMemory, argonThreads, argonKeyLen)
	return []byte(fmt.Sprintf("argon2id$%d$%d$%d$%x$%x", argonTime, argonMemory, argonThreads, salt, key))
}

// CheckPassword reports whether pw matches the encoded hash, in constant time.
// Any goroutine but an event loop, like HashPassword.
func CheckPassword(hash []byte, pw string) bool {
	parts := strings.Split(string(hash), "$")
	if len(parts) != 6 || parts[0] != "argon2id" {
		return false
	}
	t, e1 := strconv.ParseUint(parts[1], 10, 32)
	m, e2 := strconv.ParseUint(parts[2], 10, 32)
	p, e3 := strconv.ParseUint(parts[3], 10, 8)
	salt, e4 := hex.DecodeString(parts[4])
	want, e5 := hex.DecodeString(parts[5])
	if e1 != nil || e2 != nil || e3 != nil || e4 != nil || e5 != nil || t == 0 || p == 0 || m > 1<<20 || len(want) == 0 {
		return false
	}
	got := argon2.IDKey([]byte(pw), salt, uint32(t), uint32(m), uint8(p), uint32(len(want)))
	return subtle.ConstantTimeCompare(got, want) == 1
}

// throttle implements the login throttle of PROTOCOL §2: 10 failures for
// one username (any case) within 15 minutes lock it for 1 minute; a success
// resets the count. Memory is bounded: stale entries are pruned.
type throttle struct {
	mu      sync.Mutex
	entries map[string]*throttleEntry
	now     func() time.Time
}

type throttleEntry struct {
	fails       []time.Time // within the window, oldest first; at most throttleMax
	lockedUntil time.Time
	pending     int // attempts between begin and fail/succeed
}

const (
	throttleMax     = 10
	throttleWindow  = 15 * time.Minute
	throttleLock    = time.Minute
	throttleEntries = 200000
)

// newThrottle returns an empty throttle. Any goroutine.
func newThrottle() *throttle {
	return &throttle{entries: make(map[string]*throttleEntry), now: time.Now}
}

// begin reports whether a login for name may be checked now. It also
// counts the attempt as pending until fail or succeed, and refuses while
// recorded plus pending failures could reach the limit, so a parallel burst
// of wrong passwords cannot get more than throttleMax checks in.
// Every begin that returns true must be followed by fail or succeed.
// Any goroutine (HTTP handlers); takes t.mu.
func (t *throttle) begin(name string) bool {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.entryLocked(name, now)
	if now.Before(e.lockedUntil) {
		return false
	}
	recent := 0
	for _, f := range e.fails {
		if now.Sub(f) < throttleWindow {
			recent++
		}
	}
	if recent+e.pending >= throttleMax {
		return false
	}
	e.pending++
	return true
}

// entryLocked returns name's entry, creating it. REQUIRES: t.mu.
func (t *throttle) entryLocked(name string, now time.Time) *throttleEntry {
	key := strings.ToLower(name)
	e := t.entries[key]
	if e == nil {
		if len(t.entries) >= throttleEntries {
			t.pruneLocked(now)
		}
		e = &throttleEntry{}
		t.entries[key] = e
	}
	return e
}

// fail records a failed login.
// Any goroutine; takes t.mu.
func (t *throttle) fail(name string) {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.entryLocked(name, now)
	if e.pending > 0 {
		e.pending--
	}
	keep := e.fails[:0]
	for _, f := range e.fails {
		if now.Sub(f) < throttleWindow {
			keep = append(keep, f)
		}
	}
	e.fails = append(keep, now)
	if len(e.fails) > throttleMax {
		e.fails = e.fails[len(e.fails)-throttleMax:]
	}
	if len(e.fails) >= throttleMax {
		// Locked for a minute; the failures that caused it are spent, so
		// the right password works once the minute is over (PROTOCOL §2).
		e.lockedUntil = now.Add(throttleLock)
		e.fails = e.fails[:0]
	}
}

// succeed resets the count for name.
// Any goroutine; takes t.mu.
func (t *throttle) succeed(name string) {
	t.mu.Lock()
	delete(t.entries, strings.ToLower(name))
	t.mu.Unlock()
}

// pruneLocked drops entries with no failure in the window and no lock.
// REQUIRES: t.mu.
func (t *throttle) pruneLocked(now time.Time) {
	for k, e := range t.entries {
		if e.pending == 0 && now.After(e.lockedUntil) && (len(e.fails) == 0 || now.Sub(e.fails[len(e.fails)-1]) >= throttleWindow) {
			delete(t.entries, k)
		}
	}
	if len(t.entries) >= throttleEntries { // still full of live entries: drop arbitrary ones
		for k := range t.entries {
			delete(t.entries, k)
			if len(t.entries) < throttleEntries/2 {
				break
			}
		}
	}
}
