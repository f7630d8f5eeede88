package client

import (
	"io"
	"net"
	"testing"
	"time"
)

// startProxy forwards TCP to target. While blackhole() is true it reads
// and discards in both directions without closing anything: a silent peer,
// no FIN, no RST.
func startProxy(t testing.TB, target string, blackhole func() bool) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { close(done); ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				s, err := net.DialTimeout("tcp", target, 5*time.Second)
				if err != nil {
					c.Close()
					return
				}
				pipe := func(dst, src net.Conn) {
					buf := make([]byte, 32*1024)
					for {
						n, err := src.Read(buf)
						if n > 0 && !blackhole() {
							if _, werr := dst.Write(buf[:n]); werr != nil {
								break
							}
						}
						if err != nil {
							break
						}
					}
					dst.Close()
					src.Close()
				}
				go pipe(s, c)
				go pipe(c, s)
				go func() { <-done; c.Close(); s.Close() }()
			}()
		}
	}()
	return ln.Addr().String()
}

var _ = io.EOF
