package server

import (
	"strconv"

	"github.com/magpie-im/magpie/storage"
)

// convs paging (docs/PROTOCOL.md, "convs paging"), an extension of
// PROTOCOL §4: a convs request may carry "limit" (1–10000; above acts as
// 10000) and a cursor, "before" (a ts) with "conv": the items that sort
// after (before, conv) in the list's order. A paged reply carries "more"
// and every item its sort key "ts". Without limit and cursor the reply is
// §4's, every item, except for a user with more than 10,000 conversations:
// the first 10,000 and "more":true.

const convsMaxLimit = 10000

// convsQuery reads the paging fields of a convs request; msg is a
// bad_request message when they are malformed.
func convsQuery(r *request) (q storage.ConvsQuery, paged bool, msg string) {
	if r.has&hasLimit != 0 {
		if r.limit < 1 {
			return q, false, "limit must be at least 1"
		}
		q.Limit = int(min(r.limit, convsMaxLimit))
		paged = true
	}
	if r.has&hasBefore != 0 {
		if r.has&hasConv == 0 {
			return q, false, "before needs conv (the cursor is the last item's ts and conv)"
		}
		if _, _, _, ok := storage.ParseConv(string(r.conv)); !ok {
			return q, false, "malformed conv"
		}
		if r.before > 1<<53 {
			return q, false, "before is a ts in Unix ms"
		}
		q.HasBefore, q.BeforeTS, q.BeforeConv = true, int64(r.before), string(r.conv)
		paged = true
	}
	return q, paged, ""
}

// appendConvsPage encodes a convs reply: PROTOCOL §4's, plus "more" and
// each item's "ts" when the request paged (or more items exist).
func appendConvsPage(dst, rid []byte, p *storage.ConvsPage, paged bool) []byte {
	if !paged && !p.More {
		return appendConvs(dst, rid, p.Items, p.TotalUnread)
	}
	dst = append(dst, `{"type":"convs"`...)
	dst = appendRID(dst, rid)
	dst = append(dst, `,"items":[`...)
	for i := range p.Items {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendConvItem(dst, &p.Items[i])
		dst = dst[:len(dst)-1] // reopen the item for its ts
		dst = append(dst, `,"ts":`...)
		dst = strconv.AppendInt(dst, p.Items[i].TS, 10)
		dst = append(dst, '}')
	}
	dst = append(dst, ']')
	dst = appendKeyUint(dst, `,"total_unread":`, p.TotalUnread)
	if p.More {
		dst = append(dst, `,"more":true}`...)
	} else {
		dst = append(dst, `,"more":false}`...)
	}
	return dst
}
