package server

import (
	"testing"
	"time"
)

func TestThrottle(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	th := newThrottle()
	th.now = func() time.Time { return now }
	for i := 0; i < throttleMax; i++ {
		if !th.begin("Eve") {
			t.Fatalf("attempt %d refused", i+1)
		}
		th.fail("eVE") // usernames count without regard to case
		now = now.Add(time.Second)
	}
	if th.begin("eve") {
		t.Fatal("11th attempt within the window allowed")
	}
	now = now.Add(throttleLock - 2*time.Second)
	if th.begin("eve") {
		t.Fatal("allowed within the minute")
	}
	now = now.Add(3 * time.Second)
	if !th.begin("eve") {
		t.Fatal("refused after the minute: the right password must work again")
	}
	th.succeed("eve")

	// A parallel burst: at most throttleMax checks get in before any result.
	in := 0
	for i := 0; i < 3*throttleMax; i++ {
		if th.begin("mallory") {
			in++
		}
	}
	if in != throttleMax {
		t.Fatalf("%d concurrent attempts admitted, want %d", in, throttleMax)
	}
	// A success resets the count for everyone.
	th.succeed("mallory")
	if !th.begin("mallory") {
		t.Fatal("refused after a successful login")
	}
}
