package server

import (
	"fmt"
	"testing"
)

// TestConvsPaging: a convs request with limit and a cursor (before, conv)
// pages the list (docs/PROTOCOL.md, "convs paging"); without them the
// reply is PROTOCOL §4's, with no more and no ts.
func TestConvsPaging(t *testing.T) {
	ts := startServer(t, nil)
	me, tok := ts.user("pager")
	c := login(t, ts, tok)
	const n = 7
	for i := range n {
		peer, _ := ts.user(fmt.Sprint("peer", i))
		c.send(map[string]any{"type": "send", "cmid": fmt.Sprint("m", i), "to": peer, "body": "hi"})
		if r := c.nextType("sent"); r["conv"] != fmt.Sprintf("d:%d:%d", me, peer) {
			t.Fatalf("sent %v", r)
		}
	}
	c.send(map[string]any{"type": "convs", "rid": "all"})
	all := c.nextType("convs")
	items := all["items"].([]any)
	if len(items) != n || all["more"] != nil || items[0].(map[string]any)["ts"] != nil {
		t.Fatalf("unpaged convs: %v", all)
	}
	var got []any
	req := map[string]any{"type": "convs", "rid": "p", "limit": 3}
	for pages := 1; ; pages++ {
		c.send(req)
		p := c.nextType("convs")
		page := p["items"].([]any)
		got = append(got, page...)
		if p["more"] == false {
			if pages != 3 || len(got) != n {
				t.Fatalf("%d items in %d pages", len(got), pages)
			}
			break
		}
		if p["more"] != true || len(page) != 3 || pages > 3 {
			t.Fatalf("page %d: %v", pages, p)
		}
		last := page[len(page)-1].(map[string]any)
		req["before"], req["conv"] = last["ts"], last["conv"]
	}
	for i := range items {
		if items[i].(map[string]any)["conv"] != got[i].(map[string]any)["conv"] {
			t.Fatalf("pages in another order than the list: %v vs %v", items, got)
		}
	}
	for _, bad := range []map[string]any{
		{"type": "convs", "rid": "b1", "limit": 0},
		{"type": "convs", "rid": "b2", "before": 5},
		{"type": "convs", "rid": "b3", "before": 5, "conv": "d:2:1"},
	} {
		c.send(bad)
		if e := c.nextType("error"); e["code"] != "bad_request" || e["rid"] != bad["rid"] {
			t.Fatalf("%v: %v", bad, e)
		}
	}
}
