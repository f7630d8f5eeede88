package holdsock

import (
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The held socket stays non-blocking after Fd (which os/exec calls for
// ExtraFiles) and keeps queueing connections once net's listener is gone.
func TestListen(t *testing.T) {
	f, addr, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd := int(f.Fd())
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		t.Fatal(err)
	}
	if fl&unix.O_NONBLOCK == 0 {
		t.Fatal("Fd put the held socket in blocking mode")
	}
	c, err := net.DialTimeout("tcp", addr.String(), 5*time.Second)
	if err != nil {
		t.Fatalf("connect to the held socket: %v", err)
	}
	defer c.Close()
	if n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 5000); n != 1 || err != nil {
		t.Fatalf("poll the held socket: %d, %v", n, err)
	}
	nfd, _, err := unix.Accept(fd)
	if err != nil {
		t.Fatalf("the connection is not queued in the held socket: %v", err)
	}
	unix.Close(nfd)
}
