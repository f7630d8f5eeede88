package testserver

import (
	"bufio"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Metric reads one unlabeled series from the /metrics page of the server
// whose HTTP base URL is base (http://host:port).
func Metric(base, name string) (float64, error) {
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == name {
			return strconv.ParseFloat(f[1], 64)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("metric %s not found", name)
}

// Lag measures how late this process's own timers fire while a timing
// check runs: on a loaded machine a server's timers are delayed alike, so
// a test allows "at most 100 ms late" plus its slack plus the lag seen
// here. Stop the monitor with the returned func, which reports the
// largest lag.
func Lag() func() time.Duration {
	stop := make(chan struct{})
	res := make(chan time.Duration, 1)
	go func() {
		var worst time.Duration
		for {
			t0 := time.Now()
			select {
			case <-stop:
				res <- worst
				return
			case <-time.After(5 * time.Millisecond):
				if l := time.Since(t0) - 5*time.Millisecond; l > worst {
					worst = l
				}
			}
		}
	}()
	return func() time.Duration { close(stop); return <-res }
}
