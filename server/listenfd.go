package server

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// An inherited listening socket (--listen-fd): socket activation.
//
// A supervisor (a systemd .socket unit, or `magpie bench --spawn
// --hold-listener`) binds the WebSocket port once and hands the socket to
// every server it starts. When the server dies, even by SIGKILL, the
// socket stays open in the supervisor: clients that reconnect meanwhile
// are not refused but wait in its accept queue, and the next server
// accepts them as soon as it runs. Without it, every connect during the
// restart fails and the client's backoff (PROTOCOL §9: doubling, full
// jitter) pushes its next try out by seconds; with 19,000 clients a few
// fail three or four times in a row and come back 10–15 s after the kill
// (docs/BENCHMARKS.md, storm).
//
// gnet binds its own listener from an address and has no way to take a
// descriptor, so the server runs gnet on a placeholder (127.0.0.1:0) and,
// in OnBoot (before any reactor polls it), moves the inherited socket
// onto the placeholder's descriptor number with dup3: gnet then accepts
// from the inherited socket without knowing it.

// placeholderAddr is where gnet binds when --listen-fd is set; the
// inherited socket replaces that listener before it accepts anything.
const placeholderAddr = "127.0.0.1:0"

// checkListenFD verifies that fd is a listening TCP socket and readies it
// for gnet: non-blocking (gnet accepts until EAGAIN) and TCP_NODELAY
// (accepted sockets inherit it). It returns the socket's address.
// Any goroutine, before gnet starts.
func checkListenFD(fd int) (*net.TCPAddr, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("not an open descriptor: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return nil, errors.New("not a socket")
	}
	if t, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil || t != unix.SOCK_STREAM {
		return nil, errors.New("not a stream socket")
	}
	if l, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil || l != 1 {
		return nil, errors.New("not listening (the supervisor must bind and listen)")
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return nil, fmt.Errorf("getsockname: %w", err)
	}
	addr := sockaddrTCP(sa)
	if addr == nil {
		return nil, errors.New("not a TCP (IPv4 or IPv6) socket")
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		return nil, fmt.Errorf("set non-blocking: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
		return nil, fmt.Errorf("set TCP_NODELAY: %w", err)
	}
	return addr, nil
}

// adoptListener moves inherited listening socket fd onto the descriptor
// of gnet's placeholder listener, of which dup is a duplicate (from
// Engine.Dup), closes fd, and returns the descriptor gnet accepts from.
// REQUIRES: OnBoot (no reactor polls yet).
func adoptListener(dup, fd int) (int, error) {
	want, err := unix.Getsockname(dup)
	if err != nil {
		return -1, fmt.Errorf("placeholder: %w", err)
	}
	wantAddr := sockaddrTCP(want)
	if wantAddr == nil {
		return -1, errors.New("placeholder: not a TCP socket")
	}
	// The placeholder's own descriptor is the one other open descriptor
	// bound to that ephemeral address.
	target := -1
	for _, x := range openFDs() {
		if x == dup || x == fd {
			continue
		}
		sa, err := unix.Getsockname(x)
		if err != nil {
			continue
		}
		if a := sockaddrTCP(sa); a != nil && a.Port == wantAddr.Port && a.IP.Equal(wantAddr.IP) {
			if l, err := unix.GetsockoptInt(x, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err == nil && l == 1 {
				target = x
				break
			}
		}
	}
	if target < 0 {
		return -1, errors.New("placeholder listener not found among open descriptors")
	}
	if err := unix.Dup3(fd, target, unix.O_CLOEXEC); err != nil {
		return -1, fmt.Errorf("dup3: %w", err)
	}
	unix.Close(fd)
	return target, nil
}

// releaseListener stops accepting from the inherited socket at descriptor
// fd without closing or shutting it down (the supervisor's copy must keep
// queueing): a fresh listener that nobody connects to takes the descriptor
// number, so gnet's next accepts find nothing, and connections that
// arrive during a graceful shutdown wait for the next server instead of
// being accepted and closed. gnet's epoll registration still names the
// inherited socket: a new arrival wakes the acceptor, whose accept on fd
// returns EAGAIN. It first checks that fd is still the listener bound to
// addr (gnet may have closed it and the number been reused).
// Any goroutine.
func releaseListener(fd int, addr *net.TCPAddr) error {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return fmt.Errorf("descriptor %d: %w", fd, err)
	}
	if a := sockaddrTCP(sa); a == nil || a.Port != addr.Port || !a.IP.Equal(addr.IP) {
		return fmt.Errorf("descriptor %d is no longer the inherited socket %s", fd, addr)
	}
	d, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(d)
	if err := unix.Bind(d, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		return err
	}
	if err := unix.Listen(d, 1); err != nil {
		return err
	}
	return unix.Dup3(d, fd, unix.O_CLOEXEC)
}

// openFDs lists this process's open descriptors from /proc/self/fd, or
// the numbers 3–4095 where there is no /proc.
func openFDs() []int {
	ents, err := os.ReadDir("/proc/self/fd")
	var out []int
	if err != nil {
		for x := 3; x < 4096; x++ {
			out = append(out, x)
		}
		return out
	}
	for _, e := range ents {
		if x, err := strconv.Atoi(e.Name()); err == nil {
			out = append(out, x)
		}
	}
	return out
}

// sockaddrTCP converts an IPv4 or IPv6 socket address; nil otherwise.
func sockaddrTCP(sa unix.Sockaddr) *net.TCPAddr {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return &net.TCPAddr{IP: net.IP(a.Addr[:]).To16(), Port: a.Port}
	case *unix.SockaddrInet6:
		return &net.TCPAddr{IP: net.IP(a.Addr[:]), Port: a.Port}
	}
	return nil
}
