// Package holdsock binds a listening socket for child servers to inherit
// (magpie serve --listen-fd), the way a supervisor such as a systemd
// .socket unit does. The test server and the bench harness use it.
package holdsock

import (
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// Listen binds addr (host:port, port 0 for any) and returns the listening
// socket as a file for exec.Cmd.ExtraFiles, with its address. Closing the
// file (after the last child) closes the socket.
//
// The file is a plain duplicate of the socket, not net's File(): os/exec
// calls Fd on every extra file, and Fd puts a file that Go made
// non-blocking back into blocking mode — on the open file description the
// running server shares, whose acceptor must not block. A duplicate that
// was already non-blocking is left as it is.
func Listen(addr string) (*os.File, net.Addr, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	defer ln.Close()
	rc, err := ln.(*net.TCPListener).SyscallConn()
	if err != nil {
		return nil, nil, err
	}
	nfd, derr := -1, error(nil)
	if err := rc.Control(func(fd uintptr) { nfd, derr = unix.Dup(int(fd)) }); err != nil {
		return nil, nil, err
	}
	if derr != nil {
		return nil, nil, fmt.Errorf("dup: %w", derr)
	}
	unix.CloseOnExec(nfd)
	return os.NewFile(uintptr(nfd), "listener "+ln.Addr().String()), ln.Addr(), nil
}
