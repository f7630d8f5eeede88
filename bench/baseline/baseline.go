// Package baseline is the comparison server of `magpie bench`: the way
// most people write a WebSocket chat server in Go, a goroutine pair per
// connection on gorilla/websocket (the shape of gorilla's chat example),
// speaking the subset of Magpie's protocol that the connect and fanout
// scenarios use: auth by URL token (Magpie's token format and secret),
// welcome, ping/pong, group_create, group_join, group send → msg push to
// every member, sent to the sender; acks are read and ignored.
//
// With --mode ceiling the group fan-out is instead one pre-encoded
// WebSocket frame written raw to every member's socket from the sender's
// goroutine, with no per-recipient protocol work, queueing or goroutine
// hand-off: the most the machine allows for that fan-out, against which
// Magpie's figure is stated as a fraction.
package baseline

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/magpie-im/magpie/server"
)

// Main is `magpie bench baseline`.
func Main(args []string) int {
	fs := flag.NewFlagSet("magpie bench baseline", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:7071", "address serving /ws, /metrics, /healthz and /debug/pprof/")
	data := fs.String("data", "./data", "data dir of a Magpie server whose secret signs the tokens")
	secret := fs.String("secret", "", "token signing key (default: the --data dir's)")
	mode := fs.String("mode", "proto", "proto: goroutine-per-connection protocol server; ceiling: raw writes of one pre-encoded frame for group fan-out")
	hb := fs.Duration("heartbeat", 30*time.Second, "heartbeat_ms announced in welcome; idle connections are closed after 3×")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *mode != "proto" && *mode != "ceiling" {
		fmt.Fprintln(os.Stderr, "magpie bench baseline: --mode must be proto or ceiling")
		return 2
	}
	key, err := server.LoadSecret(*data, *secret)
	if err != nil {
		fmt.Fprintf(os.Stderr, "magpie bench baseline: %v\n", err)
		return 1
	}
	s := New(server.NewSigner(key, 24*time.Hour), *mode == "ceiling", *hb)
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(os.Stderr, "magpie bench baseline: %v\n", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "baseline (%s) listening on %s\n", *mode, ln.Addr())
	if err := http.Serve(ln, s.Handler()); err != nil {
		fmt.Fprintf(os.Stderr, "magpie bench baseline: %v\n", err)
		return 1
	}
	return 0
}

// Server is the baseline server.
type Server struct {
	signer   *server.Signer
	ceiling  bool
	hb       time.Duration
	upgrader websocket.Upgrader

	mu        sync.RWMutex
	groups    map[uint64]*group
	nextGroup uint64
}

type group struct {
	mu      sync.RWMutex
	name    string
	members map[*conn]struct{}
	seq     uint64
}

type conn struct {
	ws   *websocket.Conn
	uid  uint64
	send chan outbound // proto mode: drained by writePump
	wmu  sync.Mutex    // ceiling mode: serialises raw writes
}

type outbound struct {
	pm *websocket.PreparedMessage
	b  []byte
}

// New returns a baseline server verifying tokens with signer.
func New(signer *server.Signer, ceiling bool, hb time.Duration) *Server {
	return &Server{
		signer: signer, ceiling: ceiling, hb: hb, groups: map[uint64]*group{},
		upgrader: websocket.Upgrader{ReadBufferSize: 1024, WriteBufferSize: 1024, CheckOrigin: func(*http.Request) bool { return true }},
	}
}

// Handler serves /ws, /metrics (Go and process collectors, so the harness
// reads heap and RSS as from Magpie), /healthz and /debug/pprof/.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/ws", s.serveWS)
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, `{"status":"ok"}`) })
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	return mux
}

func (s *Server) serveWS(w http.ResponseWriter, r *http.Request) {
	uid, err := s.signer.Verify(r.URL.Query().Get("token"))
	if err != nil {
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	ws, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	c := &conn{ws: ws, uid: uid}
	if !s.ceiling {
		c.send = make(chan outbound, 256)
		go c.writePump()
	}
	welcome := fmt.Sprintf(`{"type":"welcome","version":1,"uid":%d,"heartbeat_ms":%d,"idle_timeout_ms":%d,"ack_timeout_ms":5000,"send_rate":0,"max_body":16384,"server_time":%d}`,
		uid, s.hb.Milliseconds(), 3*s.hb.Milliseconds(), time.Now().UnixMilli())
	s.write(c, []byte(welcome))
	s.readPump(c)
}

// write queues (proto) or writes (ceiling) one text message to c.
func (s *Server) write(c *conn, b []byte) {
	if s.ceiling {
		c.writeRaw(textFrame(b))
		return
	}
	select {
	case c.send <- outbound{b: b}:
	default:
		c.ws.Close() // slow consumer
	}
}

func (c *conn) writeRaw(frame []byte) {
	c.wmu.Lock()
	_, err := c.ws.NetConn().Write(frame)
	c.wmu.Unlock()
	if err != nil {
		c.ws.Close()
	}
}

func (c *conn) writePump() {
	defer c.ws.Close()
	for o := range c.send {
		var err error
		if o.pm != nil {
			err = c.ws.WritePreparedMessage(o.pm)
		} else {
			err = c.ws.WriteMessage(websocket.TextMessage, o.b)
		}
		if err != nil {
			return
		}
	}
}

type request struct {
	Type  string `json:"type"`
	RID   string `json:"rid,omitempty"`
	CMID  string `json:"cmid,omitempty"`
	Group uint64 `json:"group,omitempty"`
	To    uint64 `json:"to,omitempty"`
	Body  string `json:"body,omitempty"`
	Kind  string `json:"kind,omitempty"`
	Name  string `json:"name,omitempty"`
}

type msgFrame struct {
	Type string `json:"type"`
	Conv string `json:"conv"`
	Seq  uint64 `json:"seq"`
	From uint64 `json:"from"`
	TS   int64  `json:"ts"`
	Kind string `json:"kind"`
	Body string `json:"body"`
	CMID string `json:"cmid"`
}

func (s *Server) readPump(c *conn) {
	// Deferred calls run last-first: leave every group (under the group
	// locks the fan-out holds) before closing the send channel.
	defer func() {
		if c.send != nil {
			close(c.send)
		} else {
			c.ws.Close()
		}
	}()
	defer s.leaveAll(c)
	idle := 3 * s.hb
	for {
		_ = c.ws.SetReadDeadline(time.Now().Add(idle))
		_, p, err := c.ws.ReadMessage()
		if err != nil {
			return
		}
		var req request
		if json.Unmarshal(p, &req) != nil {
			s.errorFrame(c, "", "", "bad_request")
			continue
		}
		switch req.Type {
		case "ping":
			s.write(c, []byte(`{"type":"pong"}`))
		case "ack", "read":
		case "group_create":
			s.mu.Lock()
			s.nextGroup++
			g := &group{name: req.Name, members: map[*conn]struct{}{c: {}}}
			id := s.nextGroup
			s.groups[id] = g
			s.mu.Unlock()
			s.groupReply(c, req.RID, id, g)
		case "group_join":
			s.mu.RLock()
			g := s.groups[req.Group]
			s.mu.RUnlock()
			if g == nil {
				s.errorFrame(c, req.RID, "", "not_found")
				continue
			}
			g.mu.Lock()
			g.members[c] = struct{}{}
			g.mu.Unlock()
			s.groupReply(c, req.RID, req.Group, g)
		case "send":
			s.groupSend(c, &req)
		default:
			s.errorFrame(c, req.RID, "", "bad_request")
		}
	}
}

func (s *Server) groupReply(c *conn, rid string, id uint64, g *group) {
	g.mu.RLock()
	n := len(g.members)
	g.mu.RUnlock()
	b, _ := json.Marshal(struct {
		Type  string `json:"type"`
		RID   string `json:"rid,omitempty"`
		Group uint64 `json:"group"`
		Name  string `json:"name"`
		Count int    `json:"count"`
	}{"group", rid, id, g.name, n})
	s.write(c, b)
}

func (s *Server) errorFrame(c *conn, rid, cmid, code string) {
	b, _ := json.Marshal(struct {
		Type    string `json:"type"`
		RID     string `json:"rid,omitempty"`
		CMID    string `json:"cmid,omitempty"`
		Code    string `json:"code"`
		Message string `json:"message"`
	}{"error", rid, cmid, code, code})
	s.write(c, b)
}

func (s *Server) groupSend(c *conn, req *request) {
	s.mu.RLock()
	g := s.groups[req.Group]
	s.mu.RUnlock()
	if req.Group == 0 || g == nil {
		s.errorFrame(c, req.RID, req.CMID, "not_found")
		return
	}
	if req.Kind == "" {
		req.Kind = "text"
	}
	conv := "g:" + strconv.FormatUint(req.Group, 10)
	ts := time.Now().UnixMilli()
	g.mu.Lock()
	g.seq++
	m := msgFrame{Type: "msg", Conv: conv, Seq: g.seq, From: c.uid, TS: ts, Kind: req.Kind, Body: req.Body, CMID: req.CMID}
	payload, _ := json.Marshal(m) // encoded once per message
	// Fan out under the group lock so that pushes of one group keep seq
	// order on every connection.
	if s.ceiling {
		frame := textFrame(payload)
		for mc := range g.members {
			if mc != c {
				mc.writeRaw(frame)
			}
		}
	} else {
		pm, err := websocket.NewPreparedMessage(websocket.TextMessage, payload)
		if err != nil {
			log.Printf("prepare: %v", err)
		}
		for mc := range g.members {
			if mc == c {
				continue
			}
			select {
			case mc.send <- outbound{pm: pm}:
			default:
				mc.ws.Close() // slow consumer
			}
		}
	}
	seq := g.seq
	g.mu.Unlock()
	b, _ := json.Marshal(struct {
		Type string `json:"type"`
		CMID string `json:"cmid"`
		Conv string `json:"conv"`
		Seq  uint64 `json:"seq"`
		TS   int64  `json:"ts"`
	}{"sent", req.CMID, conv, seq, ts})
	s.write(c, b)
}

func (s *Server) leaveAll(c *conn) {
	s.mu.RLock()
	gs := make([]*group, 0, len(s.groups))
	for _, g := range s.groups {
		gs = append(gs, g)
	}
	s.mu.RUnlock()
	for _, g := range gs {
		g.mu.Lock()
		delete(g.members, c)
		g.mu.Unlock()
	}
}

// textFrame encodes an unmasked server text frame.
func textFrame(p []byte) []byte {
	b := make([]byte, 0, len(p)+10)
	b = append(b, 0x81)
	switch n := len(p); {
	case n < 126:
		b = append(b, byte(n))
	case n <= 0xFFFF:
		b = append(b, 126, byte(n>>8), byte(n))
	default:
		b = append(b, 127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	return append(b, p...)
}
