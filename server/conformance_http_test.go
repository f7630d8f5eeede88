package server_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/magpie-im/magpie/internal/testserver"
	"github.com/magpie-im/magpie/server"
)

// PROTOCOL §2: the HTTP API.

func TestConformanceHTTPRegister(t *testing.T) {
	t.Parallel()
	s := cfStart(t)
	cases := []struct {
		name, user, pw string
		status         int
	}{
		{"valid", "reg.ok_1-A", "password1", 201},
		{"username 32 chars", strings.Repeat("u", 32), "password1", 201},
		{"username 1 char", "x", "password1", 201},
		{"password 8 bytes", "pw8", "12345678", 201},
		{"password 128 bytes", "pw128", strings.Repeat("p", 128), 201},
		{"password 8 bytes of 4 two-byte runes", "pwrunes", "éééé", 201},
		{"empty username", "", "password1", 400},
		{"username 33 chars", strings.Repeat("v", 33), "password1", 400},
		{"username with space", "a b", "password1", 400},
		{"username with slash", "a/b", "password1", 400},
		{"username with @", "a@b", "password1", 400},
		{"username non-ASCII", "zoë", "password1", 400},
		{"password 7 bytes", "pw7", "1234567", 400},
		{"password 7 bytes of runes", "pw7r", "ééé1", 400},
		{"password 129 bytes", "pw129", strings.Repeat("p", 129), 400},
		{"empty password", "pw0", "", 400},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, body := s.do(t, "POST", "/api/register", cfJSON(map[string]string{"username": tc.user, "password": tc.pw}), nil)
			if tc.status == 201 {
				var m map[string]any
				if code != 201 || json.Unmarshal(body, &m) != nil || cfNum(m["uid"]) <= 0 {
					t.Fatalf("got %d %s, want 201 {\"uid\":N>0}", code, body)
				}
				return
			}
			cfWantAPIError(t, tc.name, code, body, tc.status, "bad_request")
		})
	}
	t.Run("409 without regard to case", func(t *testing.T) {
		code, m := s.register(t, "CaseUser", "password1")
		if code != 201 {
			t.Fatalf("register: %d %v", code, m)
		}
		for _, n := range []string{"CaseUser", "caseuser", "CASEUSER", "cAsEuSeR"} {
			code, body := s.do(t, "POST", "/api/register", cfJSON(map[string]string{"username": n, "password": "password2"}), nil)
			cfWantAPIError(t, "register "+n, code, body, 409, "exists")
		}
	})
	t.Run("uids distinct and positive", func(t *testing.T) {
		a, _ := s.user(t, "distinct1")
		b, _ := s.user(t, "distinct2")
		if a == b || a <= 0 || b <= 0 {
			t.Fatalf("uids %d %d", a, b)
		}
	})
}

func cfJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func TestConformanceHTTPMalformedBodies(t *testing.T) {
	t.Parallel()
	s := cfStart(t)
	huge := `{"username":"big","password":"` + strings.Repeat("x", 2<<20) + `"}`
	bodies := []struct{ name, body string }{
		{"not JSON", `username=a&password=b`},
		{"truncated JSON", `{"username":"a","password":`},
		{"JSON array", `["a","b"]`},
		{"JSON string", `"x"`},
		{"empty body", ``},
		{"username not a string", `{"username":5,"password":"password1"}`},
		{"password not a string", `{"username":"numpw","password":12345678}`},
		{"missing password", `{"username":"nopw"}`},
		{"missing username", `{"password":"password1"}`},
		{"oversized (2 MiB)", huge},
	}
	for _, path := range []string{"/api/register", "/api/login"} {
		for _, b := range bodies {
			t.Run(path+"/"+b.name, func(t *testing.T) {
				code, body := s.do(t, "POST", path, []byte(b.body), nil)
				cfWantAPIError(t, b.name, code, body, 400, "bad_request")
			})
		}
	}
}

func TestConformanceHTTPLogin(t *testing.T) {
	t.Parallel()
	s := cfStart(t, "--token-ttl", "2h")
	code, m := s.register(t, "Logan", "correct-horse")
	if code != 201 {
		t.Fatalf("register: %d %v", code, m)
	}
	uid := cfNum(m["uid"])
	t.Run("success", func(t *testing.T) {
		for _, name := range []string{"Logan", "logan", "LOGAN"} { // case-insensitive
			before := time.Now()
			code, m := s.login(t, name, "correct-horse")
			if code != 200 {
				t.Fatalf("login %s: %d %v", name, code, m)
			}
			if cfNum(m["uid"]) != uid {
				t.Errorf("login %s: uid %v, want %d", name, m["uid"], uid)
			}
			exp := cfNum(m["expires_at"])
			lo, hi := before.Add(2*time.Hour).UnixMilli()-1000, time.Now().Add(2*time.Hour).UnixMilli()+1000
			if exp < lo || exp > hi {
				t.Errorf("expires_at %d, want now+2h (%d..%d)", exp, lo, hi)
			}
			tok, _ := m["token"].(string)
			if tok == "" {
				t.Fatalf("no token: %v", m)
			}
			want := "ws://127.0.0.1:" + cfPortOf(s.WSAddr) + "/ws"
			if m["ws_url"] != want {
				t.Errorf("ws_url %v, want %s", m["ws_url"], want)
			}
			// The token authenticates the WebSocket as uid.
			c := cfDial(t, s.url("token="+tok))
			if w := c.next(); w["type"] != "welcome" || cfNum(w["uid"]) != uid {
				t.Fatalf("welcome %v", w)
			}
		}
	})
	t.Run("401 alike", func(t *testing.T) {
		for _, tc := range []struct{ name, user, pw string }{
			{"wrong password", "Logan", "wrong-horse"},
			{"unknown user", "nobody-here", "correct-horse"},
		} {
			code, _, body := s.postJSON(t, "/api/login", map[string]string{"username": tc.user, "password": tc.pw})
			cfWantAPIError(t, tc.name, code, body, 401, "unauthorized")
		}
	})
}

func cfPortOf(hostport string) string {
	i := strings.LastIndexByte(hostport, ':')
	return hostport[i+1:]
}

func TestConformanceHTTPLoginThrottle(t *testing.T) {
	t.Parallel()
	s := cfStart(t)
	for _, n := range []string{"Thr1", "thr2"} {
		if code, m := s.register(t, n, "password1"); code != 201 {
			t.Fatalf("register %s: %d %v", n, code, m)
		}
	}
	try := func(t *testing.T, user, pw string, want int) {
		t.Helper()
		code, _, body := s.postJSON(t, "/api/login", map[string]string{"username": user, "password": pw})
		switch want {
		case 200:
			if code != 200 {
				t.Fatalf("login %s/%s: %d %s, want 200", user, pw, code, body)
			}
		case 401:
			cfWantAPIError(t, "login "+user+"/"+pw, code, body, 401, "unauthorized")
		case 429:
			cfWantAPIError(t, "login "+user+"/"+pw, code, body, 429, "rate_limited")
		}
		if t.Failed() {
			t.FailNow()
		}
	}
	cases := []string{"Thr1", "THR1", "thr1", "tHr1", "THr1"}
	t.Run("10 failures then 429 even for the right password, any case", func(t *testing.T) {
		for i := 0; i < 10; i++ {
			try(t, cases[i%len(cases)], "wrong-pass", 401)
		}
		try(t, "Thr1", "password1", 429)
		try(t, "thr1", "password1", 429)
		try(t, "THR1", "wrong-pass", 429)
		// Another username is not affected.
		try(t, "thr2", "password1", 200)
	})
	t.Run("unknown usernames count too", func(t *testing.T) {
		for i := 0; i < 10; i++ {
			try(t, []string{"Ghost", "ghost", "GHOST"}[i%3], "whatever1", 401)
		}
		try(t, "gHoSt", "whatever1", 429)
	})
	t.Run("success resets the count", func(t *testing.T) {
		for i := 0; i < 9; i++ {
			try(t, "thr2", "wrong-pass", 401)
		}
		try(t, "THR2", "password1", 200)
		for i := 0; i < 9; i++ {
			try(t, "Thr2", "wrong-pass", 401)
		}
		try(t, "thr2", "password1", 200)
	})
}

func TestConformanceHTTPUsers(t *testing.T) {
	t.Parallel()
	// 150 users "bulkN" imported with the admin tool (one hash for all),
	// so that the default limit of 100 is observable.
	dir := t.TempDir()
	out, err := exec.Command(testserver.Binary(t), "user", "import", "--data", dir, "--prefix", "bulk", "--count", "150").CombinedOutput()
	if err != nil {
		t.Fatalf("magpie user import: %v\n%s", err, out)
	}
	ts := testserver.StartIn(t, dir, "--secret", cfSecret, "--fsync=false")
	s := &cfServer{Server: ts, t: t, signer: server.NewSigner([]byte(cfSecret), time.Hour)}
	names := []string{"lstAlpha", "LSTbeta", "lstgamma", "Lst_delta", "other"}
	uids := map[string]int64{}
	var tok string
	for _, n := range names {
		uids[n], tok = s.user(t, n)
	}
	auth := map[string]string{"Authorization": "Bearer " + tok}
	get := func(t *testing.T, q string) []map[string]any {
		t.Helper()
		code, body := s.do(t, "GET", "/api/users"+q, nil, auth)
		if code != 200 {
			t.Fatalf("GET /api/users%s: %d %s", q, code, body)
		}
		var list []map[string]any
		if err := json.Unmarshal(body, &list); err != nil || list == nil {
			t.Fatalf("GET /api/users%s: not a JSON array: %s", q, body)
		}
		for i := 1; i < len(list); i++ {
			if cfNum(list[i]["uid"]) <= cfNum(list[i-1]["uid"]) {
				t.Fatalf("not ordered by uid: %s", body)
			}
		}
		return list
	}
	namesOf := func(l []map[string]any) []string {
		var out []string
		for _, u := range l {
			out = append(out, u["username"].(string))
		}
		return out
	}
	t.Run("prefix case-insensitive", func(t *testing.T) {
		for _, q := range []string{"lst", "LST", "Lst"} {
			got := namesOf(get(t, "?q="+q))
			want := []string{"lstAlpha", "LSTbeta", "lstgamma", "Lst_delta"}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("q=%s: %v, want %v", q, got, want)
			}
		}
		if got := namesOf(get(t, "?q=lsta")); fmt.Sprint(got) != "[lstAlpha]" {
			t.Errorf("q=lsta: %v", got)
		}
		if got := get(t, "?q=zzz"); len(got) != 0 {
			t.Errorf("q=zzz: %v", got)
		}
		// A prefix, not a substring.
		if got := namesOf(get(t, "?q=beta")); len(got) != 0 {
			t.Errorf("q=beta: %v", got)
		}
		l := get(t, "?q=other")
		if len(l) != 1 || cfNum(l[0]["uid"]) != uids["other"] || l[0]["username"] != "other" {
			t.Errorf("q=other: %v", l)
		}
	})
	t.Run("limit and after", func(t *testing.T) {
		all := get(t, "?limit=200")
		if len(all) != 155 {
			t.Fatalf("limit=200: %d users, want 155", len(all))
		}
		if d := get(t, ""); len(d) != 100 || cfNum(d[99]["uid"]) != cfNum(all[99]["uid"]) {
			t.Errorf("default limit: %d users, want 100", len(d))
		}
		if l := get(t, "?limit=1"); len(l) != 1 || cfNum(l[0]["uid"]) != cfNum(all[0]["uid"]) {
			t.Errorf("limit=1: %v", l)
		}
		cur := cfNum(all[9]["uid"])
		l := get(t, fmt.Sprintf("?limit=3&after=%d", cur))
		if len(l) != 3 || cfNum(l[0]["uid"]) != cfNum(all[10]["uid"]) || cfNum(l[2]["uid"]) != cfNum(all[12]["uid"]) {
			t.Errorf("after=%d limit=3: %v", cur, l)
		}
		l = get(t, fmt.Sprintf("?q=lst&after=%d", uids["LSTbeta"]))
		if fmt.Sprint(namesOf(l)) != "[lstgamma Lst_delta]" {
			t.Errorf("q=lst after LSTbeta: %v", namesOf(l))
		}
		if l := get(t, fmt.Sprintf("?after=%d", cfNum(all[154]["uid"]))); len(l) != 0 {
			t.Errorf("after the last uid: %v", l)
		}
		if l := get(t, "?after=0&limit=2"); len(l) != 2 || cfNum(l[0]["uid"]) != cfNum(all[0]["uid"]) {
			t.Errorf("after=0: %v", l)
		}
	})
	t.Run("400", func(t *testing.T) {
		for _, q := range []string{"limit=0", "limit=201", "limit=-1", "limit=abc", "limit=1.5", "limit=", "after=abc", "after=-1", "after=1.5", "after=99999999999999999999999"} {
			code, body := s.do(t, "GET", "/api/users?"+q, nil, auth)
			cfWantAPIError(t, q, code, body, 400, "bad_request")
		}
	})
	t.Run("401", func(t *testing.T) {
		expired := s.signer.MintUntil(uint64(uids["other"]), time.Now().Add(-time.Minute).UnixMilli())
		forged, _ := server.NewSigner([]byte("another-secret-entirely-000000000"), time.Hour).Mint(uint64(uids["other"]))
		for name, h := range map[string]map[string]string{
			"no header":    nil,
			"empty bearer": {"Authorization": "Bearer "},
			"garbage":      {"Authorization": "Bearer garbage"},
			"basic":        {"Authorization": "Basic dXNlcjpwYXNz"},
			"expired":      {"Authorization": "Bearer " + expired},
			"other secret": {"Authorization": "Bearer " + forged},
		} {
			code, body := s.do(t, "GET", "/api/users", nil, h)
			cfWantAPIError(t, name, code, body, 401, "unauthorized")
		}
	})
}

func TestConformanceHTTPWSURLAndHealth(t *testing.T) {
	t.Parallel()
	s := cfStart(t)
	if code, m := s.register(t, "wsurl", "password1"); code != 201 {
		t.Fatalf("register: %d %v", code, m)
	}
	port := cfPortOf(s.WSAddr)
	cases := []struct{ host, want string }{
		{"chat.example.com:8443", "ws://chat.example.com:" + port + "/ws"},
		{"chat.example.com", "ws://chat.example.com:" + port + "/ws"},
		{"10.1.2.3:80", "ws://10.1.2.3:" + port + "/ws"},
		{"[::1]:8080", "ws://[::1]:" + port + "/ws"},
		{"[2001:db8::7]", "ws://[2001:db8::7]:" + port + "/ws"},
	}
	for _, tc := range cases {
		t.Run("Host "+tc.host, func(t *testing.T) {
			code, body := s.do(t, "POST", "/api/login", cfJSON(map[string]string{"username": "wsurl", "password": "password1"}), map[string]string{"Host": tc.host})
			var m map[string]any
			_ = json.Unmarshal(body, &m)
			if code != 200 || m["ws_url"] != tc.want {
				t.Fatalf("got %d ws_url %v, want %s", code, m["ws_url"], tc.want)
			}
		})
	}
	t.Run("--ws-url", func(t *testing.T) {
		s2 := cfStart(t, "--ws-url", "wss://chat.example.org/socket")
		if code, m := s2.register(t, "wsurl2", "password1"); code != 201 {
			t.Fatalf("register: %d %v", code, m)
		}
		code, body := s2.do(t, "POST", "/api/login", cfJSON(map[string]string{"username": "wsurl2", "password": "password1"}), map[string]string{"Host": "other.example:1"})
		var m map[string]any
		_ = json.Unmarshal(body, &m)
		if code != 200 || m["ws_url"] != "wss://chat.example.org/socket" {
			t.Fatalf("got %d %s", code, body)
		}
	})
	t.Run("healthz metrics ui", func(t *testing.T) {
		if code, body := s.do(t, "GET", "/healthz", nil, nil); code != 200 {
			t.Errorf("/healthz %d %s", code, body)
		}
		if code, body := s.do(t, "GET", "/metrics", nil, nil); code != 200 || !strings.Contains(string(body), "# TYPE") {
			t.Errorf("/metrics %d %.200s", code, body)
		}
		if code, body := s.do(t, "GET", "/", nil, nil); code != 200 {
			t.Errorf("/ %d %.200s", code, body)
		}
	})
}

var _ = os.Getpid
var _ = filepath.Join
