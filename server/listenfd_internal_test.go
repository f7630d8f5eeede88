package server

import (
	"errors"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// releaseListener makes the acceptor's descriptor accept nothing while
// the inherited socket, still open elsewhere, keeps queueing connections.
func TestReleaseListener(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f, err := ln.(*net.TCPListener).File() // the supervisor's copy
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd, err := unix.Dup(int(f.Fd())) // the server's copy, as gnet accepts from it
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	addr, err := checkListenFD(fd)
	if err != nil {
		t.Fatal(err)
	}
	other := &net.TCPAddr{IP: addr.IP, Port: addr.Port + 1}
	if err := releaseListener(fd, other); err == nil {
		t.Fatal("released a descriptor bound elsewhere")
	}
	if err := releaseListener(fd, addr); err != nil {
		t.Fatal(err)
	}
	c, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatalf("connect after release: %v (want it queued)", err)
	}
	defer c.Close()
	if nfd, _, err := unix.Accept(fd); !errors.Is(err, unix.EAGAIN) {
		unix.Close(nfd)
		t.Fatalf("accept on the released descriptor: %v, want EAGAIN", err)
	}
	_ = ln.(*net.TCPListener).SetDeadline(time.Now().Add(5 * time.Second))
	a, err := ln.Accept()
	if err != nil {
		t.Fatalf("the connection is not in the inherited socket's queue: %v", err)
	}
	a.Close()
}
