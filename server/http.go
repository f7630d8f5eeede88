package server

import (
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/magpie-im/magpie/storage"
)

// maxAPIBody bounds every /api request body.
const maxAPIBody = 4096

// httpHandler returns the HTTP mux. Run, once.
func (s *Server) httpHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/register", s.handleRegister)
	mux.HandleFunc("POST /api/login", s.handleLogin)
	mux.HandleFunc("GET /api/users", s.handleUsers)
	mux.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		apiError(w, http.StatusNotFound, "not_found", "no such API endpoint")
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if !s.ready.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, `{"status":"unavailable"}`+"\n")
			return
		}
		io.WriteString(w, `{"status":"ok"}`+"\n")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.m.reg, promhttp.HandlerOpts{}))
	if s.cfg.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	ui := s.ui
	if ui == nil {
		ui = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "Magpie is running; this build has no web UI.\n")
		})
	}
	mux.Handle("/", ui)
	return mux
}

// apiError writes a JSON error. An HTTP handler goroutine.
func apiError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": code, "message": msg})
}

// apiJSON writes v as JSON. An HTTP handler goroutine.
func apiJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

type credentials struct {
	Username *string `json:"username"`
	Password *string `json:"password"`
}

// readCredentials decodes {"username","password"}; it answers 400 itself.
// An HTTP handler goroutine.
func readCredentials(w http.ResponseWriter, r *http.Request) (string, string, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxAPIBody))
	if err != nil {
		apiError(w, http.StatusBadRequest, "bad_request", "request body too large or unreadable")
		return "", "", false
	}
	var c credentials
	if err := json.Unmarshal(body, &c); err != nil {
		apiError(w, http.StatusBadRequest, "bad_request", "body must be a JSON object with username and password strings")
		return "", "", false
	}
	if c.Username == nil || c.Password == nil {
		apiError(w, http.StatusBadRequest, "bad_request", "username and password are required")
		return "", "", false
	}
	return *c.Username, *c.Password, true
}

// validUsername checks PROTOCOL §2's username rule. Any goroutine.
func validUsername(u string) bool {
	if len(u) < 1 || len(u) > 32 {
		return false
	}
	for i := 0; i < len(u); i++ {
		c := u[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			return false
		}
	}
	return true
}

// handleRegister is POST /api/register. An HTTP handler goroutine.
func (s *Server) handleRegister(w http.ResponseWriter, r *http.Request) {
	name, pw, ok := readCredentials(w, r)
	if !ok {
		return
	}
	if !validUsername(name) {
		apiError(w, http.StatusBadRequest, "bad_request", "username must be 1-32 characters of A-Z a-z 0-9 _ . -")
		return
	}
	if len(pw) < 8 || len(pw) > 128 {
		apiError(w, http.StatusBadRequest, "bad_request", "password must be 8-128 bytes")
		return
	}
	if _, exists := s.store.UserByName(name); exists {
		apiError(w, http.StatusConflict, "exists", "username taken")
		return
	}
	s.hashSem <- struct{}{}
	hash := HashPassword(pw)
	<-s.hashSem
	uid, err := s.store.CreateUser(name, hash)
	switch {
	case errors.Is(err, storage.ErrExists):
		apiError(w, http.StatusConflict, "exists", "username taken")
	case err != nil:
		s.log.Error("register", "err", err)
		apiError(w, http.StatusInternalServerError, "internal", "could not store the user")
	default:
		apiJSON(w, http.StatusCreated, map[string]uint64{"uid": uid})
	}
}

// dummyHash makes a login for an unknown user cost as much as a real one.
var dummyHash = HashPassword("magpie-dummy-password")

// handleLogin is POST /api/login. An HTTP handler goroutine.
func (s *Server) handleLogin(w http.ResponseWriter, r *http.Request) {
	name, pw, ok := readCredentials(w, r)
	if !ok {
		return
	}
	if !s.throttle.begin(name) {
		s.m.httpLogins.WithLabelValues("throttled").Inc()
		apiError(w, http.StatusTooManyRequests, "rate_limited", "too many failed logins; try again in a minute")
		return
	}
	u, exists := s.store.UserByName(name)
	hash := dummyHash
	if exists {
		hash = u.Hash
	}
	s.hashSem <- struct{}{}
	good := CheckPassword(hash, pw) && exists
	<-s.hashSem
	if !good {
		s.throttle.fail(name)
		s.m.httpLogins.WithLabelValues("failed").Inc()
		apiError(w, http.StatusUnauthorized, "unauthorized", "unknown user or wrong password")
		return
	}
	s.throttle.succeed(name)
	s.m.httpLogins.WithLabelValues("ok").Inc()
	tok, exp := s.signer.Mint(u.UID)
	apiJSON(w, http.StatusOK, map[string]any{"uid": u.UID, "token": tok, "expires_at": exp, "ws_url": s.wsURL(r)})
}

// wsURL is --ws-url, else ws://HOST:PORT/ws with HOST from the request.
// An HTTP handler goroutine.
func (s *Server) wsURL(r *http.Request) string {
	if s.cfg.WSURL != "" {
		return s.cfg.WSURL
	}
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if host == "" {
		host = "localhost"
	}
	return "ws://" + net.JoinHostPort(host, strconv.Itoa(s.wsPort)) + "/ws"
}

// handleUsers is GET /api/users. An HTTP handler goroutine.
func (s *Server) handleUsers(w http.ResponseWriter, r *http.Request) {
	auth := r.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(auth, "Bearer ")
	if !ok {
		apiError(w, http.StatusUnauthorized, "unauthorized", "missing bearer token")
		return
	}
	if _, err := s.signer.Verify(strings.TrimSpace(tok)); err != nil {
		apiError(w, http.StatusUnauthorized, "unauthorized", "bad or expired token")
		return
	}
	q := r.URL.Query()
	limit, after := 100, uint64(0)
	if v, ok := q["limit"]; ok {
		n, err := strconv.Atoi(v[0])
		if err != nil || n < 1 || n > 200 {
			apiError(w, http.StatusBadRequest, "bad_request", "limit must be an integer 1-200")
			return
		}
		limit = n
	}
	if v, ok := q["after"]; ok {
		n, err := strconv.ParseUint(v[0], 10, 63)
		if err != nil {
			apiError(w, http.StatusBadRequest, "bad_request", "after must be a non-negative integer uid")
			return
		}
		after = n
	}
	users := s.store.Users(q.Get("q"), after, limit)
	out := make([]map[string]any, 0, len(users))
	for _, u := range users {
		out = append(out, map[string]any{"uid": u.UID, "username": u.Name})
	}
	apiJSON(w, http.StatusOK, out)
}
