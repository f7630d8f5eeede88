package wsproto

import (
	"bytes"
	"errors"
	"net/http"
	"strconv"
	"sync"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

var headEnd = []byte("\r\n\r\n")

// RequestEnd returns the length of the HTTP request head at the start of
// buf, through its terminating "\r\n\r\n"; 0 if buf holds no complete head
// yet; -1 if the head is (or, still incomplete, already is) longer than
// MaxRequestHead. Call it again with the longer buffer as bytes arrive and
// hand exactly buf[:n] to Upgrade; bytes after it are the first frames.
// It never allocates and does not modify buf.
func RequestEnd(buf []byte) int {
	b := buf
	if len(b) > MaxRequestHead {
		b = b[:MaxRequestHead]
	}
	if i := bytes.Index(b, headEnd); i >= 0 {
		return i + len(headEnd)
	}
	if len(buf) >= MaxRequestHead {
		return -1
	}
	return 0
}

// Upgrade parses exactly one request head (req must be exactly the bytes
// RequestEnd measured) and returns the response to write and its status.
//
// The checks run in PROTOCOL §1 order and the first failure decides:
//
//  1. path: the request URI up to '?' must equal u.Path, else 404 (for any
//     method, before anything else is looked at; a request line that cannot
//     be split into method, URI and version is 400);
//  2. upgrade: a GET, HTTP/1.1, with Host, "Upgrade: websocket",
//     "Connection: Upgrade", a 16-byte base64 Sec-WebSocket-Key and
//     Sec-WebSocket-Version 13, as checked by gobwas/ws; every failure here
//     is 400 (a wrong version also gets "Sec-WebSocket-Version: 13");
//  3. Origin: 403 when present, non-empty and refused by u.AllowOrigin;
//  4. device: 400 when longer than MaxDevice bytes (or when the token or
//     device parameter is not valid URL encoding);
//  5. token: 401 when non-empty and u.Authorize rejects it.
//
// On success status is 101 and resp is the 101 response; no extension or
// subprotocol is negotiated. Otherwise resp is an HTTP error response with
// "Connection: close" and a JSON body {"error":"…","message":"…"}; the
// caller writes it and closes the connection.
//
// r is reset, then filled as far as the handshake got; it is meaningful
// only when status is 101. resp is newly allocated and owned by the caller.
// req is not modified and not retained.
func (u *Upgrader) Upgrade(req []byte, r *Request) (resp []byte, status int) {
	*r = Request{}
	path, ok := requestPath(req)
	if !ok {
		return appendHTTPError(nil, http.StatusBadRequest, "malformed request line", ""), http.StatusBadRequest
	}
	if string(path) != u.Path {
		return appendHTTPError(nil, http.StatusNotFound, "no such path", ""), http.StatusNotFound
	}

	h := handshakePool.Get().(*handshake)
	h.u, h.r = u, r
	h.in.Reset(req)
	_, err := h.wsu.Upgrade(h)
	switch {
	case err == nil:
		resp, status = bytes.Clone(h.out), http.StatusSwitchingProtocols
	case h.status != 0:
		// One of our hooks rejected the request.
		resp, status = appendHTTPError(nil, h.status, h.msg, ""), h.status
	case errors.Is(err, ws.ErrHandshakeUpgradeRequired):
		// gobwas answers 426; PROTOCOL §1 wants 400 for every request that
		// is not a valid upgrade. RFC 6455 §4.2.2 allows any 4xx here as
		// long as the supported version is named.
		resp = appendHTTPError(nil, http.StatusBadRequest, err.Error(), "Sec-WebSocket-Version: 13\r\n")
		status = http.StatusBadRequest
	default:
		msg := "malformed request"
		var rej *ws.ConnectionRejectedError
		if errors.As(err, &rej) {
			msg = rej.Error()
		}
		resp, status = appendHTTPError(nil, http.StatusBadRequest, msg, ""), http.StatusBadRequest
	}
	h.release()
	return resp, status
}

// requestPath returns the path of the request-target on the first line of
// req: the URI up to '?' (or '#'), with the scheme and authority of an
// absolute-form URI removed. ok is false when the line does not have the
// shape "METHOD SP URI SP VERSION".
func requestPath(req []byte) (path []byte, ok bool) {
	line := req
	if i := bytes.IndexByte(line, '\n'); i >= 0 {
		line = line[:i]
	}
	_, rest, ok1 := bytes.Cut(line, []byte{' '})
	uri, _, ok2 := bytes.Cut(rest, []byte{' '})
	if !ok1 || !ok2 {
		return nil, false
	}
	if i := bytes.IndexAny(uri, "?#"); i >= 0 {
		uri = uri[:i]
	}
	if len(uri) > 0 && uri[0] != '/' {
		// absolute-form, "http://host:port/ws" (RFC 9112 §3.2.2).
		if i := bytes.Index(uri, []byte("://")); i >= 0 {
			uri = uri[i+3:]
			if j := bytes.IndexByte(uri, '/'); j >= 0 {
				uri = uri[j:]
			} else {
				uri = nil
			}
		}
	}
	return uri, true
}

// handshake is the per-call state of Upgrade, pooled so that a handshake
// costs few allocations: it is the io.ReadWriter handed to gobwas (reading
// exactly req, collecting the response) and the receiver of the hooks,
// which are bound once when the handshake is created.
type handshake struct {
	u *Upgrader
	r *Request

	in  bytes.Reader
	out []byte
	wsu ws.Upgrader

	seenOrigin bool
	queryErr   string // a malformed token or device parameter, reported at step 4
	status     int    // set when a hook rejects
	msg        string
}

var handshakePool = sync.Pool{New: func() any {
	h := new(handshake)
	h.wsu = ws.Upgrader{
		// The whole head fits one buffer, so gobwas never has to join
		// line pieces; the buffers themselves come from gobwas's pools.
		ReadBufferSize:  MaxRequestHead,
		WriteBufferSize: 512,
		OnRequest:       h.onRequest,
		OnHeader:        h.onHeader,
		OnBeforeUpgrade: h.onBeforeUpgrade,
	}
	return h
}}

// errRejected is returned by the hooks; the status and message are in the
// handshake.
var errRejected = errors.New("wsproto: handshake rejected")

func (h *handshake) release() {
	h.u, h.r = nil, nil
	h.in.Reset(nil)
	h.out = h.out[:0]
	h.seenOrigin = false
	h.queryErr, h.status, h.msg = "", 0, ""
	handshakePool.Put(h)
}

func (h *handshake) Read(p []byte) (int, error) { return h.in.Read(p) }

func (h *handshake) Write(p []byte) (int, error) {
	h.out = append(h.out, p...)
	return len(p), nil
}

func (h *handshake) reject(status int, msg string) (ws.HandshakeHeader, error) {
	h.status, h.msg = status, msg
	return nil, errRejected
}

// onRequest runs after gobwas accepted the request line of a GET. The path
// was checked before gobwas ran (gobwas rejects other methods before this
// hook, and a wrong path must be 404 for any method); here the query is
// decoded. Problems are only noted: they are reported at step 4, after the
// upgrade and Origin checks.
func (h *handshake) onRequest(uri []byte) error {
	_, q, _ := bytes.Cut(uri, []byte{'?'})
	if i := bytes.IndexByte(q, '#'); i >= 0 {
		q = q[:i]
	}
	var haveToken, haveDevice bool
	for len(q) > 0 {
		var kv []byte
		if i := bytes.IndexByte(q, '&'); i >= 0 {
			kv, q = q[:i], q[i+1:]
		} else {
			kv, q = q, nil
		}
		k, v, _ := bytes.Cut(kv, []byte{'='})
		switch {
		case !haveToken && paramIs(k, "token"):
			haveToken = true
			s, ok := unescapeQuery(v)
			if !ok {
				h.queryErr = "malformed token parameter"
			}
			h.r.Token = s
		case !haveDevice && paramIs(k, "device"):
			haveDevice = true
			s, ok := unescapeQuery(v)
			if !ok {
				h.queryErr = "malformed device parameter"
			}
			h.r.Device = s
		}
	}
	return nil
}

// onHeader sees every header gobwas does not handle itself; the first
// Origin is kept.
func (h *handshake) onHeader(key, value []byte) error {
	if !h.seenOrigin && string(key) == "Origin" {
		h.seenOrigin = true
		h.r.Origin = string(value)
	}
	return nil
}

// onBeforeUpgrade runs once gobwas found a valid upgrade request: steps 3
// to 5.
func (h *handshake) onBeforeUpgrade() (ws.HandshakeHeader, error) {
	u, r := h.u, h.r
	if r.Origin != "" && u.AllowOrigin != nil && !u.AllowOrigin(r.Origin) {
		return h.reject(http.StatusForbidden, "origin not allowed")
	}
	if h.queryErr != "" {
		return h.reject(http.StatusBadRequest, h.queryErr)
	}
	if len(r.Device) > MaxDevice {
		return h.reject(http.StatusBadRequest, "device longer than 64 bytes")
	}
	if r.Token != "" && (u.Authorize == nil || !u.Authorize(r)) {
		r.UID = 0
		return h.reject(http.StatusUnauthorized, "bad or expired token")
	}
	return nil, nil
}

// paramIs reports whether the raw (still URL-encoded) query key k decodes
// to name. Plain keys are compared without allocating.
func paramIs(k []byte, name string) bool {
	if bytes.IndexByte(k, '%') < 0 && bytes.IndexByte(k, '+') < 0 {
		return string(k) == name
	}
	s, ok := unescapeQuery(k)
	return ok && s == name
}

// unescapeQuery decodes one application/x-www-form-urlencoded component
// ('+' is a space, %XX a byte), the way url.QueryUnescape does. ok is false
// for a '%' not followed by two hex digits.
func unescapeQuery(v []byte) (s string, ok bool) {
	if bytes.IndexByte(v, '%') < 0 && bytes.IndexByte(v, '+') < 0 {
		return string(v), true
	}
	b := make([]byte, 0, len(v))
	for i := 0; i < len(v); i++ {
		switch c := v[i]; c {
		case '+':
			b = append(b, ' ')
		case '%':
			if i+2 >= len(v) {
				return "", false
			}
			hi, ok1 := unhex(v[i+1])
			lo, ok2 := unhex(v[i+2])
			if !ok1 || !ok2 {
				return "", false
			}
			b = append(b, hi<<4|lo)
			i += 2
		default:
			b = append(b, c)
		}
	}
	return string(b), true
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// AppendHTTPError appends a complete HTTP/1.1 error response to dst:
// status line, "Content-Type: application/json", Content-Length,
// "Connection: close", and the body {"error":CODE,"message":message}.
// CODE is derived from status: the PROTOCOL §2 codes where they exist
// (bad_request, unauthorized, rate_limited, internal), else the status text
// in snake case (forbidden, not_found, request_header_fields_too_large, …).
// Use it for the 431 after RequestEnd returns -1; Upgrade uses it for its
// own rejections.
func AppendHTTPError(dst []byte, status int, message string) []byte {
	return appendHTTPError(dst, status, message, "")
}

func appendHTTPError(dst []byte, status int, message, extraHeaders string) []byte {
	text := http.StatusText(status)
	var scratch [192]byte
	body := append(scratch[:0], `{"error":"`...)
	body = appendErrorCode(body, status, text)
	body = append(body, `","message":`...)
	body = appendJSONString(body, message)
	body = append(body, '}')

	dst = append(dst, "HTTP/1.1 "...)
	dst = strconv.AppendInt(dst, int64(status), 10)
	dst = append(dst, ' ')
	dst = append(dst, text...)
	dst = append(dst, "\r\nContent-Type: application/json\r\nContent-Length: "...)
	dst = strconv.AppendInt(dst, int64(len(body)), 10)
	dst = append(dst, "\r\nConnection: close\r\n"...)
	dst = append(dst, extraHeaders...)
	dst = append(dst, "\r\n"...)
	return append(dst, body...)
}

func appendErrorCode(dst []byte, status int, text string) []byte {
	switch status {
	case http.StatusTooManyRequests:
		return append(dst, "rate_limited"...)
	case http.StatusInternalServerError:
		return append(dst, "internal"...)
	}
	if text == "" {
		return append(dst, "http_error"...)
	}
	start, under := len(dst), false
	for i := 0; i < len(text); i++ {
		c := text[i]
		switch {
		case 'A' <= c && c <= 'Z':
			c += 'a' - 'A'
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9':
		default:
			under = true
			continue
		}
		if under && len(dst) > start {
			dst = append(dst, '_')
		}
		under = false
		dst = append(dst, c)
	}
	return dst
}

// appendJSONString appends s as a JSON string. Messages are ours or
// gobwas's (ASCII, some with quotes); control characters and invalid
// UTF-8 are escaped or replaced anyway so the body is always valid JSON.
func appendJSONString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			dst = append(dst, '\\', byte(r))
		case r < 0x20:
			dst = append(dst, '\\', 'u', '0', '0', hex[r>>4], hex[r&0xf])
		default:
			dst = utf8.AppendRune(dst, r)
		}
	}
	return append(dst, '"')
}
