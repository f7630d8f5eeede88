package bench

import (
	"bufio"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/magpie-im/magpie/internal/testserver"
)

// serverLogins reads magpie_logins_total{result="ok"} from /metrics.
func serverLogins(t *testing.T, httpURL string) int {
	t.Helper()
	resp, err := http.Get(httpURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), `magpie_logins_total{result="ok"} `); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	return 0
}

// TestUsersThroughHTTP: without --tokens the harness creates its users
// through the HTTP API of the running server, caches their tokens, reuses
// them on a rerun, logs in again when the cached tokens are refused or the
// cache is gone (the users exist: 409, then login), and names the problem
// when an existing user has another password.
func TestUsersThroughHTTP(t *testing.T) {
	s := testserver.Start(t)
	cache := filepath.Join(t.TempDir(), "users.tokens")
	args := func(extra ...string) []string {
		return append([]string{"--url", s.WSURL(), "--http", s.HTTPURL(), "--server-pid", strconv.Itoa(s.PID()), "--users-cache", cache,
			"--procs", "1", "--src", "0", "--members", "3", "--messages", "2", "--rate", "0"}, extra...)
	}
	fanout := func(what string, wantLogins int) *Report {
		t.Helper()
		before := serverLogins(t, s.HTTPURL())
		r := runScenario(t, "fanout", args()...)
		if got := num(t, r, "deliveries"); got != 6 {
			t.Errorf("%s: deliveries = %v, want 3 × 2", what, got)
		}
		if got := serverLogins(t, s.HTTPURL()) - before; got != wantLogins {
			t.Errorf("%s: %d logins, want %d", what, got, wantLogins)
		}
		return r
	}
	r := fanout("first run", 4)
	if r.Params["users"] != cache {
		t.Errorf("report names users %v, want the cache %s", r.Params["users"], cache)
	}
	us, err := readTokens(cache)
	if err != nil || len(us) != 4 || us[0].name != "bench1" || us[0].exp == 0 {
		t.Fatalf("cache %s: %v %+v", cache, err, us)
	}
	if r.Build.Version == "" || r.ServerBuild["version"] == "" || r.ServerBuild["revision"] == "" {
		t.Errorf("report lacks the builds: %+v %v", r.Build, r.ServerBuild)
	}

	fanout("rerun", 0)

	// Tokens the server does not accept (as after a new data dir or
	// secret): every user is logged in again.
	b, _ := os.ReadFile(cache)
	bad := strings.ReplaceAll(string(b), " v1.", " v1.9")
	if err := os.WriteFile(cache, []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	fanout("refused tokens", 4)

	// No cache: the users exist (409) and are logged in.
	if err := os.Remove(cache); err != nil {
		t.Fatal(err)
	}
	fanout("cache removed", 4)

	// An existing user with another password: a clear error.
	if err := os.Remove(cache); err != nil {
		t.Fatal(err)
	}
	o, err := parseOptions("fanout", args("--password", "not-the-bench-one", "--signup-conc", "1"))
	if err != nil {
		t.Fatal(err)
	}
	o.exe = testserver.Binary(t)
	if _, err := run(o); err == nil || !strings.Contains(err.Error(), "another password") {
		t.Fatalf("wrong password: err = %v", err)
	}
}

func TestDefaultCachePath(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", "/c")
	if got, want := defaultCachePath("http://127.0.0.1:8080/", "bench"), "/c/magpie/bench/127.0.0.1_8080-bench.tokens"; got != want {
		t.Errorf("defaultCachePath = %s, want %s", got, want)
	}
}
