package chat

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/magpie-im/magpie/client"
	"github.com/magpie-im/magpie/internal/testserver"
)

type syncBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func waitOutput(t *testing.T, out *syncBuf, want string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(out.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("output never contained %q:\n%s", want, out.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestChatSession drives `magpie chat` as alice against a real server
// while bob uses the SDK.
func TestChatSession(t *testing.T) {
	srv := testserver.Start(t, "--demo")
	var mu sync.Mutex
	var got []client.Message
	bob, err := client.Dial(context.Background(), client.Options{
		Server: srv.HTTPURL(), Username: "bob", Password: "password",
		OnMessage: func(m client.Message) { mu.Lock(); got = append(got, m); mu.Unlock() },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer bob.Close()

	inR, inW := io.Pipe()
	defer inW.Close() // ends Run's input reader
	out := &syncBuf{}
	done := make(chan int, 1)
	go func() {
		done <- Run(context.Background(), []string{"--server", srv.HTTPURL(), "--user", "alice"}, inR, out, "password", false)
	}()
	say := func(line string) { fmt.Fprintln(inW, line) }
	waitOutput(t, out, "logged in as alice")
	waitOutput(t, out, "#lobby")
	say("/open bob")
	waitOutput(t, out, "-- @bob")
	say("hello bob")
	deadline := time.Now().Add(20 * time.Second)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("bob got nothing; chat output:\n%s", out.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got[0].Body != "hello bob" {
		t.Fatalf("bob got %+v", got[0])
	}
	if _, err := bob.SendTo(context.Background(), got[0].From, "hi alice"); err != nil {
		t.Fatal(err)
	}
	waitOutput(t, out, "bob: hi alice")
	say("/convs")
	waitOutput(t, out, "@bob")
	say("/read")
	waitOutput(t, out, "marked read")
	say("/create team bob carol")
	waitOutput(t, out, "created #team")
	say("/users c")
	waitOutput(t, out, "carol (")
	say("/quit")
	waitExit(t, done, out)
}

// waitExit waits for Run to return 0 on done.
func waitExit(t *testing.T, done <-chan int, out *syncBuf) {
	t.Helper()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit %d:\n%s", code, out.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("chat did not quit:\n%s", out.String())
	}
}

func TestChatUsage(t *testing.T) {
	out := &syncBuf{}
	if code := Run(context.Background(), nil, strings.NewReader(""), out, "x", false); code != 2 {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"usage: magpie chat", "/create [+public] NAME", "/add NAME", "/remove NAME", "/rename NEW NAME", "/join #GROUP|ID", "✓✓"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("usage without %q: %s", want, out.String())
		}
	}
}
