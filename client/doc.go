// Package client is the Go SDK for Magpie (PROTOCOL.md, versions 1 and 2). A
// Client keeps one WebSocket to the server and hides the protocol's client
// duties (§8, §9) behind a small API:
//
//	c, err := client.Dial(ctx, client.Options{
//		Server:    "http://127.0.0.1:8080",
//		Username:  "alice",
//		Password:  "password",
//		OnMessage: func(m client.Message) { fmt.Println(m.Conv, m.From, m.Body) },
//		OnState:   func(e client.StateEvent) { log.Println(e.State, e.Code, e.Err) },
//	})
//	if err != nil { … }
//	defer c.Close()
//	sent, err := c.SendTo(ctx, bobUID, "hi")
//
// # Connection
//
// The client logs in over HTTP (POST /api/login) unless given a Token, and
// connects to the ws_url from the login reply (or Options.WSURL) with the
// token in the URL, or in an `auth` frame with Options.AuthFrame. It sends
// a `ping` whenever it has sent nothing for heartbeat_ms (from `welcome`),
// and also once when it has received nothing for heartbeat_ms. When a ping
// is outstanding and nothing at all has arrived for heartbeat_ms + grace
// (grace ≤ heartbeat_ms/2, the default), the peer is declared dead: the
// client drops the TCP connection and reconnects.
//
// After a close it reconnects with exponential backoff and full jitter
// (Options.Backoff: delays uniform in [0, min(Max, First·Factor^n)), by
// default First 1 s, Factor 2, Max 30 s; n counts failures since the last
// `welcome`). Exceptions: after 4001 (or HTTP 401 at the handshake) it logs
// in again if it has Username and Password, else it goes offline with
// ErrUnauthorized; after 4004 it goes offline with ErrReplaced; after 4029
// it waits Backoff.Max. Every change is reported to Options.OnState as a
// StateEvent (connecting, online, reconnecting with the close code and the
// delay, offline with the reason).
//
// # Receiving
//
// Options.OnMessage gets every message of the user's conversations exactly
// once and in seq order per conversation, the user's own messages included
// (those sent by this client are delivered after their `sent`). The client
// drops duplicates by (conv, seq), holds back messages above a gap and
// fills the gap with `history` first, and after every `welcome` asks for
// `convs` and fetches with `history after=held` each conversation whose
// last_seq is above held.
//
// "held" is the highest seq the client has accepted in order for a
// conversation. A new Client has no state, so Options.Start and
// Options.Positions define it at the first connection:
//
//   - StartLatest (default): each conversation listed by the first `convs`
//     reply starts at its last_seq; only messages stored later are
//     delivered. Pushes that arrive before that reply wait for it.
//   - StartBeginning: every conversation starts at 0 (whole history).
//   - Positions[conv] = seq: that conversation starts after seq; pass the
//     map from Client.Positions of a previous run to resume exactly.
//
// Conversations that appear after the first catch-up (a new direct peer, a
// group someone added the user to) start at 0. A group joined with
// JoinGroup starts at its last message at join time.
//
// Acks are sent automatically after the handler returned: cumulative, one
// per conversation per AckDelay (by default the server's ack_delay_ms from
// welcome, else 20 ms) or at once when AckBatch (64, at most half the
// server's max_inflight) delivered pushes are unacked. If OnMessage is slower than the messages
// arrive, the server's in-flight window fills and it closes the connection
// (4008, or 4005); the client reconnects and catches up through history,
// requesting a page only while fewer than 1,024 messages wait for the
// handler, so memory stays bounded.
//
// # Sending and requests
//
// Send returns after `sent`. Unconfirmed sends are sent again after each
// `welcome` with the same cmid, so a message is stored once however often
// the connection drops; rate_limited and internal errors are retried the
// same way. Sends are paced to the server's send_rate so that re-sends
// after a reconnect do not trip 4029. Requests (Convs, History*, MarkRead,
// group calls) carry a rid and are matched to their reply; those safe to
// repeat are re-sent after a reconnect, CreateGroup fails with
// ErrDisconnected instead. Error frames come back as *Error with the
// protocol's Code.
//
// # Version 2: groups, receipts, typing, presence
//
// The client accepts servers of version 1 and 2 (ServerVersion says which
// one answered the last welcome); a version 1 server simply never sends the
// frames below, and Typing and SubscribePresence return ErrNotSupported
// there.
//
//   - Groups: CreateGroupWith(NewGroup{Name, Members, Public}), AddMembers
//     (any member), RemoveMembers and RenameGroup (the owner; others get
//     CodeForbidden), JoinGroup (public groups only). Group replies and
//     convs items carry Public and Owner.
//   - System messages: every membership or name change is a message of
//     kind "system" whose body is a JSON object. From a version 2 server
//     its Message.Event holds the decoded GroupEvent (created, added,
//     joined, left, removed, renamed, or an unknown event with only its
//     name), delivered through OnMessage like any message and then through
//     OnGroupEvent; Body keeps the stored text. From a version 1 server
//     nothing is decoded: there any client could send kind "system".
//   - Receipts: OnReceipt gets every `receipt` frame; Conv.PeerReadSeq is
//     the peer's read_seq in direct conversations; Receipts asks for every
//     member's.
//   - Typing: call Typing on every keystroke; it sends at most one frame
//     per TypingInterval (2 s) per conversation — the first at once, those
//     inside the interval as one frame at its end, dropped by a Send to the
//     conversation. Incoming frames drive Typers and OnTyping (changes
//     only): an indicator ends TypingExpiry (6 s) after the last frame, or
//     when a message from that user in that conversation arrives (before
//     the message is delivered). One timer serves every indicator.
//   - Presence: SubscribePresence replaces the subscription (0–1000 uids);
//     the list belongs to the Client and is sent again after every welcome,
//     so reconnects re-subscribe by themselves. Presence answers from the
//     latest reply or push; OnPresence gets every reply and push.
//
// All methods are safe for concurrent use and honour their context. Close
// stops every goroutine the Client started before it returns.
package client
