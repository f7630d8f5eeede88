package wsproto

import (
	"maps"
	"math/rand/v2"
	"slices"
	"testing"
)

// splitStreams are multi-frame client streams, valid unless named
// otherwise, parsed with MaxMessage = splitMax.
const splitMax = 4096

func splitStreams() map[string][]byte {
	return map[string][]byte{
		"texts and controls": stream(text("Hello"), ping("p"), text(""), pong(""), bin("\x00\x01"), closeFrame(1000, "bye")),
		"length forms":       stream(text(rep(125)), text(rep(126)), bin(rep(300)), cframe{op: OpText, payload: []byte("x"), lenForm: 127}),
		"fragments with interleaved controls": stream(
			text("caf\xc3").first(), ping("1"), cont("\xa9").first(), pong("2"), cont("").first(),
			closeFrame(4001, "x"),
		),
		"two fragmented messages": stream(
			bin("ab").first(), cont("cd"), text("é").first(), ping(""), cont(" ok"), text("tail"),
		),
		"exactly the limit in fragments": stream(text(rep(splitMax-100)).first(), ping(rep(125)), cont(rep(100))),
		"close without payload":          stream(text("a"), cframe{op: OpClose}),
		// Invalid streams: the error and the events before it must not
		// depend on the split either.
		"invalid: limit+1 in fragments":   stream(text("ok"), text(rep(splitMax-1)).first(), cont("ab")),
		"invalid: UTF-8 across fragments": stream(ping("z"), text("\xe2").first(), cont("\x82").first(), cont("(")),
		"invalid: unmasked after valid":   stream(text("a"), cframe{op: OpText, payload: []byte("b"), unmask: true}),
		"invalid: interleaved data frame": stream(text("a").first(), ping("x"), bin("b")),
		"invalid: close code":             stream(pong("x"), closeFrame(1015, "")),
		"invalid: reserved opcode":        stream(text("a"), cframe{op: 0xB}),
	}
}

// TestParserSplitInvariance feeds every stream whole, split in two at every
// byte boundary, one byte at a time, and in random pieces, and requires
// identical results.
func TestParserSplitInvariance(t *testing.T) {
	streams := splitStreams()
	for _, name := range slices.Sorted(maps.Keys(streams)) {
		s := streams[name]
		t.Run(name, func(t *testing.T) {
			want := feedT(t, &Parser{MaxMessage: splitMax}, s)
			if want.Rest != 0 {
				t.Fatalf("whole stream left %d bytes unconsumed", want.Rest)
			}
			if len(want.Events) == 0 && want.Err == 0 {
				t.Fatal("stream produced nothing")
			}
			for i := 1; i < len(s); i++ {
				got := feedT(t, &Parser{MaxMessage: splitMax}, s[:i], s[i:])
				if !sameResult(got, want) {
					t.Fatalf("split at %d:\n got %+v\nwant %+v", i, got, want)
				}
			}
			got := feedT(t, &Parser{MaxMessage: splitMax}, bytewise(s)...)
			if !sameResult(got, want) {
				t.Fatalf("byte by byte:\n got %+v\nwant %+v", got, want)
			}
			rng := rand.New(rand.NewPCG(1, uint64(len(s))))
			for range 50 {
				chunks := randomChunks(rng, s)
				got := feedT(t, &Parser{MaxMessage: splitMax}, chunks...)
				if !sameResult(got, want) {
					t.Fatalf("%d random chunks:\n got %+v\nwant %+v", len(chunks), got, want)
				}
			}
		})
	}
}

func bytewise(s []byte) [][]byte {
	out := make([][]byte, len(s))
	for i := range s {
		out[i] = s[i : i+1]
	}
	return out
}

func randomChunks(rng *rand.Rand, s []byte) [][]byte {
	var out [][]byte
	for len(s) > 0 {
		n := 1 + rng.IntN(min(len(s), 64))
		out = append(out, s[:n])
		s = s[n:]
	}
	return out
}
