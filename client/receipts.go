package client

import (
	"context"
	"encoding/json"
	"fmt"
)

// Receipt says that UID has read Conv up to Seq: a `receipt` frame of a
// version 2 server (PROTOCOL §14), sent when another member's read_seq
// grows through a `read` — in direct conversations, and in groups up to
// the server's --receipt-members. Handed to Options.OnReceipt.
type Receipt struct {
	Conv string
	UID  int64 // the reader, never the user themself
	Seq  int64 // the reader's new read_seq
}

// ReadState is one member's read position in a conversation (the items of
// a `receipts` reply).
type ReadState struct {
	UID     int64 `json:"uid"`
	ReadSeq int64 `json:"read_seq"`
}

// Receipts returns the read position of every other member of conv,
// ascending by uid: the peer of a direct conversation (read_seq 0 while it
// has no messages), or the members of a group of at most the server's
// --receipt-members (a larger group: CodeForbidden). Version 2 servers
// only; a version 1 server answers CodeBadRequest.
func (c *Client) Receipts(ctx context.Context, conv string) ([]ReadState, error) {
	f, err := c.request(ctx, true, func(rid string) []byte {
		return mustJSON(reqFrame{Type: "receipts", RID: rid, Conv: conv})
	})
	if err != nil {
		return nil, err
	}
	if err := expect(f, "receipts"); err != nil {
		return nil, err
	}
	var items []ReadState
	if len(f.Items) > 0 {
		if err := json.Unmarshal(f.Items, &items); err != nil {
			return nil, fmt.Errorf("magpie: bad receipts items: %w", err)
		}
	}
	return items, nil
}

// receiptLocked hands a `receipt` frame to Options.OnReceipt, in order with
// messages. REQUIRES: c.mu.
func (c *Client) receiptLocked(f *inFrame) {
	if c.opts.OnReceipt == nil || f.Conv == "" || f.UID <= 0 {
		return
	}
	r := Receipt{Conv: f.Conv, UID: f.UID, Seq: f.Seq}
	c.pushEventLocked(event{call: func() { c.opts.OnReceipt(r) }})
}
