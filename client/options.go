package client

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// StartPolicy says where the client starts in conversations it holds no
// position for (see Options.Positions) when it first connects.
type StartPolicy int

const (
	// StartLatest places every conversation listed by the first `convs`
	// reply at its last_seq: the application gets what is stored after
	// connecting, nothing from before (read that with History). Pushes that
	// arrive before that reply are held back and released after it.
	StartLatest StartPolicy = iota
	// StartBeginning places every conversation at 0: the application gets
	// each conversation's whole history, then live messages.
	StartBeginning
)

// Options configure a Client. Only the fields for authentication are
// required: a Server with Username and Password, or a Token with a WSURL.
type Options struct {
	// Server is the HTTP base URL, for example "http://127.0.0.1:8080". It
	// is needed for logging in and for ListUsers.
	Server string
	// Username and Password, when set, are used to log in before the first
	// connection and again whenever the server refuses the token (HTTP 401
	// at the handshake or close 4001).
	Username, Password string
	// Token authenticates the WebSocket. If empty, the client logs in with
	// Username and Password.
	Token string
	// WSURL is the WebSocket URL (ws://host:port/ws). The default value is
	// the ws_url returned by login.
	WSURL string
	// Device is the optional device id (1–64 bytes). A newer connection with
	// the same uid and device replaces this one (close 4004), after which the
	// client stays offline. The default value is none.
	Device string
	// AuthFrame sends the token in an `auth` frame instead of the URL query.
	// The default value is false (token in the URL).
	AuthFrame bool
	// HTTPClient is used for the HTTP API. The default value is a client
	// with a 30 s timeout.
	HTTPClient *http.Client
	// NetDial opens the TCP connection for the WebSocket; tests use it to
	// interpose faults. The default value is a net.Dialer.
	NetDial func(ctx context.Context, network, addr string) (net.Conn, error)

	// Backoff configures reconnect delays (PROTOCOL §9).
	Backoff Backoff
	// Grace is how long after a due pong the connection is declared dead:
	// it closes when nothing was received for heartbeat_ms + Grace and a
	// ping went out in that time. It is capped at heartbeat_ms/2, which is
	// also the default value.
	Grace time.Duration
	// HandshakeTimeout bounds dialing, the upgrade and waiting for
	// `welcome`. The default value is 10s.
	HandshakeTimeout time.Duration
	// AckDelay is the longest a delivered push waits for its (coalesced,
	// cumulative) ack. The default value is the server's recommendation,
	// welcome's ack_delay_ms, or 20ms when the server sends none.
	AckDelay time.Duration
	// AckBatch sends acks at once when this many delivered pushes are
	// unacked on the connection. The default value is 64, capped at half
	// of welcome's max_inflight when the server sends it.
	AckBatch int

	// Start is where conversations without a position begin on the first
	// connection. The default value is StartLatest.
	Start StartPolicy
	// Positions gives per-conversation start positions: the application
	// already holds every seq up to Positions[conv] and gets those above.
	// Use it with Client.Positions to resume where a previous run stopped.
	Positions map[string]int64

	// OnMessage receives every message exactly once, in seq order per
	// conversation, the user's own included: messages sent by this client
	// (after their `sent`) and by the user's other connections. Callbacks run one at a time on one goroutine, in the
	// order of events; a message is acked after OnMessage returns (see
	// the package documentation for what a slow handler causes). Callbacks may call any Client
	// method except Close.
	OnMessage func(Message)
	// OnState receives connection state changes.
	OnState func(StateEvent)
	// OnRead receives every `read` frame (read marks set by this or another
	// connection of the user).
	OnRead func(ReadMark)
	// OnGroupEvent receives the group event of every system message of a
	// version 2 server, right after OnMessage got the message (whose Event
	// is the same event).
	OnGroupEvent func(GroupEvent)
	// OnReceipt receives `receipt` frames: another member read up to a seq
	// (version 2).
	OnReceipt func(Receipt)
	// OnTyping receives typing indicators starting and ending (version 2):
	// see Typing, Typers and TypingExpiry.
	OnTyping func(TypingEvent)
	// OnPresence receives the items of every presence reply and push
	// (version 2): see SubscribePresence.
	OnPresence func([]Presence)
	// TypingInterval is the least time between two `typing` frames for one
	// conversation (see Typing). The default value is 2s: the server
	// forwards at most one a second anyway, and receivers show the
	// indicator for 6 s, so one frame per 2 s keeps it lit with room for a
	// lost frame at half the traffic.
	TypingInterval time.Duration
	// Logger gets debug and warning logs. The default value discards them.
	Logger *slog.Logger

	// TestingSuppressAcks stops the client from sending acks. For tests of
	// the server's ACK timeout (close 4005) only.
	TestingSuppressAcks bool
}

func (o *Options) ensureDefaults() {
	o.Backoff.ensureDefaults()
	if o.HTTPClient == nil {
		o.HTTPClient = defaultHTTPClient
	}
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = 10 * time.Second
	}
	// AckDelay 0 follows the server (see ackPacing); AckBatch is capped
	// there too.
	if o.AckBatch <= 0 {
		o.AckBatch = 64
	}
	if o.TypingInterval <= 0 {
		o.TypingInterval = 2 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

func (o *Options) validate() error {
	var errs []error
	if o.Token == "" && (o.Username == "" || o.Password == "") {
		errs = append(errs, errors.New("magpie: Options need Token, or Username and Password"))
	}
	if o.Token == "" && o.Server == "" {
		errs = append(errs, errors.New("magpie: Options.Server is needed to log in"))
	}
	if o.Token != "" && o.WSURL == "" && (o.Server == "" || o.Username == "") {
		errs = append(errs, errors.New("magpie: Options.WSURL is needed with a Token and no credentials"))
	}
	if len(o.Device) > 64 {
		errs = append(errs, errors.New("magpie: Options.Device is longer than 64 bytes"))
	}
	if o.Backoff.Factor < 1 {
		errs = append(errs, errors.New("magpie: Options.Backoff.Factor is below 1"))
	}
	if o.Start != StartLatest && o.Start != StartBeginning {
		errs = append(errs, errors.New("magpie: Options.Start is not a StartPolicy"))
	}
	return errors.Join(errs...)
}

// defaultAckDelay is the ack coalescing delay when neither Options nor the
// server's welcome set one.
const defaultAckDelay = 20 * time.Millisecond

// ackPacing returns the ack delay and batch for a session: Options.AckDelay
// when set, else welcome's ack_delay_ms (an extension: absent from older
// servers), else defaultAckDelay; Options.AckBatch capped at half of
// welcome's max_inflight, so acks go out long before the server's window
// is full.
func (o *Options) ackPacing(w *inFrame) (time.Duration, int) {
	delay := o.AckDelay
	if delay <= 0 {
		delay = defaultAckDelay
		if w.AckDelayMS != nil {
			delay = time.Duration(*w.AckDelayMS) * time.Millisecond
		}
	}
	batch := o.AckBatch
	if w.MaxInflight > 0 {
		batch = max(1, min(batch, w.MaxInflight/2))
	}
	return delay, batch
}
