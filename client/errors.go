package client

import (
	"errors"
	"fmt"
)

// Error is an error frame from the server (PROTOCOL §4) or an error body
// from the HTTP API (§2), turned into a Go error. Code is the protocol's
// error code: "bad_request", "not_found", "not_member", "too_large",
// "rate_limited", "internal", and for HTTP also "unauthorized" and
// "exists". Compare with errors.As:
//
//	var e *client.Error
//	if errors.As(err, &e) && e.Code == client.CodeNotMember { … }
type Error struct {
	Code    string // protocol error code
	Message string // human-readable text from the server, may be empty
	Status  int    // HTTP status for errors from the HTTP API; 0 for frames
}

func (e *Error) Error() string {
	if e.Message == "" {
		return "magpie: " + e.Code
	}
	return "magpie: " + e.Code + ": " + e.Message
}

// Error codes of PROTOCOL §2 and §4.
const (
	CodeBadRequest   = "bad_request"
	CodeNotFound     = "not_found"
	CodeNotMember    = "not_member"
	CodeForbidden    = "forbidden" // version 2: private group, or not the owner (§13)
	CodeTooLarge     = "too_large"
	CodeRateLimited  = "rate_limited"
	CodeInternal     = "internal"
	CodeUnauthorized = "unauthorized"
	CodeExists       = "exists"
)

// CloseError reports why a WebSocket connection ended: the close code the
// server sent (PROTOCOL §11), or 1006 when the connection was lost without a
// close frame (including dead-peer detection, see DeadPeer).
type CloseError struct {
	Code     int    // WebSocket close code; 1006 when there was none
	Text     string // close reason from the server, if any
	DeadPeer bool   // the client closed the connection: nothing received within heartbeat + grace
	Err      error  // the underlying I/O error, if any
}

func (e *CloseError) Error() string {
	switch {
	case e.DeadPeer:
		return "magpie: connection dead (no frame within heartbeat + grace)"
	case e.Text != "":
		return fmt.Sprintf("magpie: connection closed %d (%s): %s", e.Code, CloseCodeName(e.Code), e.Text)
	case e.Err != nil:
		return fmt.Sprintf("magpie: connection closed %d (%s): %v", e.Code, CloseCodeName(e.Code), e.Err)
	}
	return fmt.Sprintf("magpie: connection closed %d (%s)", e.Code, CloseCodeName(e.Code))
}

func (e *CloseError) Unwrap() error { return e.Err }

// Close codes of PROTOCOL §11 that change what the client does.
const (
	CloseNormal       = 1000
	CloseGoingAway    = 1001 // server shutting down
	CloseAbnormal     = 1006 // no close frame: connection lost or dead peer
	CloseUnauthorized = 4001 // bad or expired token: log in again, no reconnect with it
	CloseAuthTimeout  = 4002
	CloseIdleTimeout  = 4003
	CloseReplaced     = 4004 // another connection took this device: no reconnect
	CloseAckTimeout   = 4005
	CloseSlowConsumer = 4008
	CloseRateExceeded = 4029 // reconnect only after the backoff cap
)

// CloseCodeName names a close code for logs and status lines.
func CloseCodeName(code int) string {
	switch code {
	case 0:
		return "none"
	case 1000:
		return "normal"
	case 1001:
		return "going away"
	case 1002:
		return "protocol error"
	case 1003:
		return "unsupported data"
	case 1006:
		return "abnormal"
	case 1007:
		return "invalid utf-8"
	case 1009:
		return "too big"
	case 4001:
		return "unauthorized"
	case 4002:
		return "auth timeout"
	case 4003:
		return "idle timeout"
	case 4004:
		return "replaced"
	case 4005:
		return "ack timeout"
	case 4008:
		return "slow consumer"
	case 4029:
		return "rate exceeded"
	}
	return "unknown"
}

var (
	// ErrClosed is returned by calls on a Client after Close.
	ErrClosed = errors.New("magpie: client closed")
	// ErrDisconnected is returned by a request that is not safe to repeat
	// (group_create) when the connection was lost before its reply: it may or
	// may not have taken effect. Typing returns it while not online.
	ErrDisconnected = errors.New("magpie: connection lost before the reply")
	// ErrNotSupported is returned by calls that need a version 2 server
	// (Typing, SubscribePresence) when the server announced version 1.
	ErrNotSupported = errors.New("magpie: not supported by this server (protocol version 1)")
	// ErrUnauthorized means the token was refused (HTTP 401 at the
	// handshake or close 4001) and no credentials were given to log in
	// again, or the login itself was refused.
	ErrUnauthorized = errors.New("magpie: unauthorized")
	// ErrReplaced means a newer connection with the same device took over
	// (close 4004); the client stays offline.
	ErrReplaced = errors.New("magpie: replaced by a newer connection of the same device")
)
