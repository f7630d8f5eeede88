package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// LoginResult is the answer to POST /api/login.
type LoginResult struct {
	UID       int64  `json:"uid"`
	Token     string `json:"token"`
	ExpiresAt int64  `json:"expires_at"` // Unix milliseconds
	WSURL     string `json:"ws_url"`     // where to connect the WebSocket
}

// User is one row of GET /api/users.
type User struct {
	UID      int64  `json:"uid"`
	Username string `json:"username"`
}

// Register creates a user through POST /api/register on the HTTP base URL
// server (for example "http://127.0.0.1:8080") and returns its uid. A taken
// name fails with *Error{Code: "exists"}. hc may be nil for
// http.DefaultClient.
func Register(ctx context.Context, hc *http.Client, server, username, password string) (int64, error) {
	var res struct {
		UID int64 `json:"uid"`
	}
	body := map[string]string{"username": username, "password": password}
	if err := doJSON(ctx, hc, "POST", apiURL(server, "/api/register", nil), "", body, &res); err != nil {
		return 0, err
	}
	return res.UID, nil
}

// Login authenticates through POST /api/login and returns the token and the
// WebSocket URL to use. A wrong name or password fails with
// *Error{Code: "unauthorized"}; throttling with *Error{Code: "rate_limited"}.
func Login(ctx context.Context, hc *http.Client, server, username, password string) (*LoginResult, error) {
	var res LoginResult
	body := map[string]string{"username": username, "password": password}
	if err := doJSON(ctx, hc, "POST", apiURL(server, "/api/login", nil), "", body, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// UsersQuery selects users for ListUsers. Zero values are omitted.
type UsersQuery struct {
	Prefix string // username prefix, case-insensitive
	After  int64  // uid cursor: users with a greater uid
	Limit  int    // 1–200; the server's default is 100
}

// ListUsers calls GET /api/users with a bearer token. Users come ordered by
// uid; page with After set to the last uid returned.
func ListUsers(ctx context.Context, hc *http.Client, server, token string, q UsersQuery) ([]User, error) {
	v := url.Values{}
	if q.Prefix != "" {
		v.Set("q", q.Prefix)
	}
	if q.After > 0 {
		v.Set("after", strconv.FormatInt(q.After, 10))
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	var res []User
	if err := doJSON(ctx, hc, "GET", apiURL(server, "/api/users", v), token, nil, &res); err != nil {
		return nil, err
	}
	return res, nil
}

func apiURL(server, path string, q url.Values) string {
	u := strings.TrimRight(server, "/") + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	return u
}

func doJSON(ctx context.Context, hc *http.Client, method, u, token string, in, out any) error {
	if hc == nil {
		hc = http.DefaultClient
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		e := &Error{Status: resp.StatusCode}
		var eb struct {
			Error   string `json:"error"`
			Message string `json:"message"`
		}
		if json.Unmarshal(data, &eb) == nil && eb.Error != "" {
			e.Code, e.Message = eb.Error, eb.Message
		} else {
			e.Code = httpCode(resp.StatusCode)
			e.Message = strings.TrimSpace(string(data))
		}
		return e
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("magpie: decoding %s %s: %w", method, u, err)
		}
	}
	return nil
}

func httpCode(status int) string {
	switch status {
	case 400:
		return CodeBadRequest
	case 401:
		return CodeUnauthorized
	case 409:
		return CodeExists
	case 429:
		return CodeRateLimited
	}
	return CodeInternal
}

// defaultHTTPClient bounds API calls that have no deadline of their own.
var defaultHTTPClient = &http.Client{Timeout: 30 * time.Second}
