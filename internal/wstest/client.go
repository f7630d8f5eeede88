package wstest

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// Client is the well-behaved test client of every Magpie suite
// (gorilla/websocket) with a reader goroutine that decodes the server's
// JSON frames. The server's in-package, conformance and fault tests wrap
// it with their own assertion helpers.
//
// In receives the frames in arrival order; Done is closed when the reader
// stops, after the last frame was queued. Writes are serialised; any
// goroutine may read In.
type Client struct {
	Conn *websocket.Conn
	In   chan Frame
	Done chan struct{}

	wmu  sync.Mutex
	mu   sync.Mutex
	code int   // close code of the server's close frame; 0: none
	err  error // the reader's final error
}

// Frame is one server text message: its bytes and its JSON object.
type Frame struct {
	Raw []byte
	M   map[string]any
}

// ClientOptions configure Dial. The zero value is usable.
type ClientOptions struct {
	// Header is sent with the upgrade request.
	Header http.Header
	// HandshakeTimeout bounds the upgrade. The default value is 10s.
	HandshakeTimeout time.Duration
	// EchoClose answers the server's close frame with a close frame
	// carrying the same code, as RFC 6455 asks of a client. Without it the
	// client only records the code.
	EchoClose bool
	// OnBad is called (on the reader goroutine) with a message that is
	// not a JSON object; the reader goes on. Nil: such messages are
	// dropped.
	OnBad func(typ int, p []byte)
	// Buffer is the capacity of In. The default value is 16384.
	Buffer int
}

// ErrClosed is returned by Next once the connection is closed and every
// frame before the close was taken.
var ErrClosed = errors.New("connection closed")

// Dial opens a WebSocket to url. On a failed handshake it returns the HTTP
// status (0 without a response).
func Dial(url string, o ClientOptions) (*Client, int, error) {
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = 10 * time.Second
	}
	if o.Buffer <= 0 {
		o.Buffer = 1 << 14
	}
	d := websocket.Dialer{HandshakeTimeout: o.HandshakeTimeout}
	conn, resp, err := d.Dial(url, o.Header)
	if err != nil {
		st := 0
		if resp != nil {
			st = resp.StatusCode
		}
		return nil, st, err
	}
	c := &Client{Conn: conn, In: make(chan Frame, o.Buffer), Done: make(chan struct{})}
	conn.SetCloseHandler(func(code int, _ string) error {
		c.mu.Lock()
		c.code = code
		c.mu.Unlock()
		if o.EchoClose {
			c.wmu.Lock()
			_ = conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, ""), time.Now().Add(time.Second))
			c.wmu.Unlock()
		}
		return nil
	})
	go c.read(o.OnBad)
	return c, 101, nil
}

func (c *Client) read(onBad func(int, []byte)) {
	defer close(c.Done)
	for {
		typ, p, err := c.Conn.ReadMessage()
		if err != nil {
			c.mu.Lock()
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				c.code = ce.Code
			}
			c.err = err
			c.mu.Unlock()
			return
		}
		var m map[string]any
		if typ != websocket.TextMessage || json.Unmarshal(p, &m) != nil || m == nil {
			if onBad != nil {
				onBad(typ, p)
			}
			continue
		}
		c.In <- Frame{Raw: p, M: m}
	}
}

// Write writes one message of type typ.
func (c *Client) Write(typ int, b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.Conn.WriteMessage(typ, b)
}

// WriteClose writes a close frame with code and reason.
func (c *Client) WriteClose(code int, reason string) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.Conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason), time.Now().Add(time.Second))
}

// Payload returns v as a message body: a string or []byte verbatim,
// anything else as JSON.
func Payload(v any) ([]byte, error) {
	switch x := v.(type) {
	case string:
		return []byte(x), nil
	case []byte:
		return x, nil
	}
	return json.Marshal(v)
}

// Send writes v (see Payload) as a text message.
func (c *Client) Send(v any) error {
	b, err := Payload(v)
	if err != nil {
		return err
	}
	return c.Write(websocket.TextMessage, b)
}

// Next returns the next frame, ErrClosed once the connection is closed and
// every frame before the close was taken, or a timeout error.
func (c *Client) Next(within time.Duration) (Frame, error) {
	tm := time.NewTimer(within)
	defer tm.Stop()
	select {
	case f := <-c.In:
		return f, nil
	case <-c.Done:
		select {
		case f := <-c.In:
			return f, nil
		default:
			return Frame{}, ErrClosed
		}
	case <-tm.C:
		return Frame{}, fmt.Errorf("no frame within %v", within)
	}
}

// Closed reports whether the reader has stopped.
func (c *Client) Closed() bool {
	select {
	case <-c.Done:
		return true
	default:
		return false
	}
}

// WaitClosed waits up to within for the reader to stop.
func (c *Client) WaitClosed(within time.Duration) bool {
	select {
	case <-c.Done:
		return true
	case <-time.After(within):
		return false
	}
}

// CloseCode returns the code of the server's close frame (0: none yet)
// and the reader's final error (nil while it runs).
func (c *Client) CloseCode() (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.code, c.err
}

// Quiet reports the first frame that arrives within d, if any (for tests
// that check that something does NOT happen; never to wait for something).
func (c *Client) Quiet(d time.Duration) (Frame, bool) {
	select {
	case f := <-c.In:
		return f, true
	case <-time.After(d):
		return Frame{}, false
	}
}
