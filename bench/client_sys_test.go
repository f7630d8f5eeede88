package bench

import (
	"encoding/json"
	"testing"
)

// sysFields reads what onSystem needs from a system msg frame as the
// server encodes it (PROTOCOL §13: the body is JSON inside a JSON string).
func TestSysFields(t *testing.T) {
	frame := func(from uint64, body string) []byte {
		b, _ := json.Marshal(body)
		return []byte(`{"type":"msg","conv":"g:7","seq":3,"from":` + jsonU(from) + `,"ts":1,"kind":"system","cmid":"sys:7:3","body":` + string(b) + `}`)
	}
	cases := []struct {
		m     []byte
		uid   uint64
		event string
		from  uint64
		names bool
	}{
		{frame(1, `{"event":"added","members":[2,30,4]}`), 30, "added", 1, true},
		{frame(1, `{"event":"added","members":[2,30,4]}`), 3, "added", 1, false},
		{frame(1, `{"event":"added","members":[2,30,4]}`), 4, "added", 1, true},
		{frame(9, `{"event":"joined"}`), 9, "joined", 9, false},
		{frame(1, `{"event":"removed","members":[300]}`), 30, "removed", 1, false},
		{frame(1, `{"event":"created","name":"a \"q\" [1]","public":false,"count":3}`), 1, "created", 1, false},
	}
	for _, tc := range cases {
		ev, from, names := sysFields(tc.m, tc.uid)
		if string(ev) != tc.event || from != tc.from || names != tc.names {
			t.Errorf("%s uid %d: %q %d %v, want %q %d %v", tc.m, tc.uid, ev, from, names, tc.event, tc.from, tc.names)
		}
	}
}

func jsonU(v uint64) string { b, _ := json.Marshal(v); return string(b) }
