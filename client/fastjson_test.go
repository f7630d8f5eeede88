package client

import (
	"encoding/json"
	"reflect"
	"testing"
)

var msgFrames = []string{
	`{"type":"msg","conv":"d:1:2","seq":17,"from":1,"ts":1764213000000,"kind":"text","body":"hi","cmid":"c-1"}`,
	` { "seq" : 3 , "type" : "msg" , "conv":"g:7", "body":"a \"quoted\" \u00e9 \ud83d\ude00 line\n", "extra": [1,2], "cmid":"x"} `,
	`{"type":"msg","conv":"g:7","seq":2,"body":"a \"q\" \u00e9 \ud83d\ude00 \ud800 \n","cmid":"x\/y"}`,
	`{"type":"msg","conv":"g:7","seq":1,"from":2,"ts":5,"kind":"","body":"é ✓","cmid":"c","unknown":true,"n":null,"f":-1.5e3}`,
	`{"type":"msg","conv":"g:7","seq":1.5}`,
	`{"type":"msg","conv":"g:7","seq":"1"}`,
	`{"type":"msg","conv":"g:7","seq":99999999999999999999}`,
	`{"type":"msg","Conv":"g:7","SEQ":1}`,
	`{"type":"pong"}`,
	`{"type":"sent","cmid":"c-1","conv":"d:1:2","seq":17,"ts":1}`,
	`{"type":"msg","conv":"d:1:2"`,
	`{"type":"msg",}`,
	`{"type":"msg","body":"bad ` + "\xff" + ` utf8"}`,
	`{"type":"msg","body":"raw` + "\x01" + `control"}`,
	`{"type":"msg"} x`,
	`[]`,
	``,
}

// TestDecodeMsgMatchesEncodingJSON: whenever the fast path accepts a frame,
// it decodes exactly what encoding/json decodes.
func TestDecodeMsgMatchesEncodingJSON(t *testing.T) {
	accepted := 0
	for _, s := range msgFrames {
		checkDecode(t, []byte(s))
		var f inFrame
		if decodeMsg([]byte(s), &f, &interner{}) {
			accepted++
		}
	}
	if accepted != 3 {
		t.Fatalf("fast path accepted %d frames, want 3", accepted)
	}
}

func checkDecode(t *testing.T, data []byte) {
	t.Helper()
	var fast inFrame
	if !decodeMsg(data, &fast, &interner{}) {
		return
	}
	var ref inFrame
	if err := json.Unmarshal(data, &ref); err != nil {
		t.Fatalf("fast path accepted %q, encoding/json: %v", data, err)
	}
	if !reflect.DeepEqual(fast, ref) {
		t.Fatalf("%q:\nfast %+v\nref  %+v", data, fast, ref)
	}
}

func FuzzDecodeMsg(f *testing.F) {
	for _, s := range msgFrames {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) { checkDecode(t, data) })
}
