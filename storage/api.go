// Package storage is Magpie's persistence on Pebble (cockroachdb/pebble/v2)
// and the domain rules that must be decided where the data is: users,
// groups and memberships, messages with gapless per-conversation seqs, the
// (from, cmid) idempotency index, read marks and unread counts. One
// committer goroutine batches every write and fsyncs once per batch (group
// commit). Every method may block: never call one from an event loop.
//
// CONTRACT (the server is written against these names; keep them). Errors
// that a client must see are *Error with a PROTOCOL §4 code.
package storage

import (
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// Code is an error code of PROTOCOL §4.
type Code string

const (
	BadRequest  Code = "bad_request"
	NotFound    Code = "not_found"
	NotMember   Code = "not_member"
	Forbidden   Code = "forbidden" // PROTOCOL §13 (and §14)
	TooLarge    Code = "too_large"
	RateLimited Code = "rate_limited"
	Internal    Code = "internal"
)

// Error is a client-visible failure.
type Error struct {
	Code Code
	Msg  string
}

func (e *Error) Error() string { return string(e.Code) + ": " + e.Msg }

// ErrExists is returned by CreateUser for a taken username (any case).
var ErrExists = errors.New("storage: username exists")

// Options configure a Store.
type Options struct {
	// Fsync makes every commit batch durable (WAL fsync) before OnSent and
	// before a blocking write returns. The zero value false only survives a
	// process crash; the server's default is true.
	Fsync bool
	// QueueSize bounds the committer queue (operations). When it is full,
	// Submit fails with RateLimited. The default value is 65536.
	QueueSize int
	// MaxBatch bounds the operations committed in one batch. The default
	// value is 4096.
	MaxBatch int
	// MaxBody is the send body limit in bytes (TooLarge). The default value
	// is 16384.
	MaxBody int
	// OnSent is called on the committer goroutine with each batch of sends
	// after it is durable, in commit order (so per conversation in seq
	// order). It must not block for long and must not keep the slice (the
	// *Send values may be kept). Every submitted *Send arrives exactly
	// once: stored ones, Dup ones, and refused ones (Err set; Internal for
	// every send of a batch whose commit failed). The system messages of
	// group changes (PROTOCOL §13) arrive here too, as stored Sends that
	// nobody submitted: Tag nil, Kind KindSystem, Recipients every member
	// after the change plus the users it removed or who left (see
	// CreateGroupWith). It must not call a
	// blocking write (CreateUser, MarkRead, groups…): the committer would
	// wait for itself. Submit and the read methods are fine.
	OnSent func(batch []*Send)
	// OnCommit, when set, is called on the committer goroutine after every
	// commit, before OnSent: batchSize is the number of operations in the
	// batch (sends, read marks, or 1 for any other write), commitDur the
	// time from taking the batch's first operation off the queue to the
	// commit being durable, syncDur the part of it Pebble spent waiting for
	// the WAL write and fsync. It must not block. Meant for histograms
	// (commit batch size, commit and fsync latency). The default is nil.
	OnCommit func(batchSize int, commitDur, syncDur time.Duration)
	// Logger; the default is slog.Default().
	Logger *slog.Logger
	// CacheSize bounds the metadata cache in bytes (docs/STORAGE.md, "The
	// cache"): conversation heads with their last message, group records
	// and member lists, memberships and read marks, users' conversation
	// sets, users and names. The default is 64 MiB (DefaultCacheSize).
	CacheSize int64

	// Test hooks.
	fs       vfs.FS       // the filesystem under Pebble; nil means the OS
	clock    func() int64 // Unix ms; nil means time.Now
	noCommit bool         // don't start the committer (benchmarks drive it)
	memTable uint64       // Pebble MemTableSize; 0 means the default below
}

// DefaultCacheSize is the default Options.CacheSize: 64 MiB, about
// 200,000 conversation heads with a typical last message, or the
// conversation sets, heads and read marks of some 20,000 active users
// with ten conversations each (docs/STORAGE.md explains the choice).
const DefaultCacheSize = 64 << 20

// Store is the open database. Its methods are safe for concurrent use.
type Store struct {
	o   Options
	log *slog.Logger
	db  *pebble.DB

	// cache holds the hot metadata (cache.go); snap is the readers'
	// snapshot of the published state (snap.go).
	cache *cache
	snap  atomic.Pointer[snapRef]
	// Users and groups are numbered 1, 2, 3, … and never deleted: uid
	// exists iff 0 < uid < nextUID. The committer's next ids include what
	// it committed; the published ones only what readers may see.
	nextUID, nextGID       uint64 // committer only
	demoGID                uint64 // committer only
	pubNextUID, pubNextGID atomic.Uint64

	// qmu orders Submit against Close: Close flips closed while holding it
	// exclusively, so no Submit can queue after the committer's final drain.
	qmu    sync.RWMutex
	closed bool
	// snapClosed is set by Close before it releases the last snapshot:
	// readers then get errClosing instead of waiting for a new one.
	snapClosed atomic.Bool
	q          chan *Send
	ctl        chan *request // blocking operations
	quit       chan struct{} // closed by Close
	stopped    chan struct{} // closed when the committer has drained and exited
	closeOnce  sync.Once
	closeErr   error

	c         committer       // the batch in preparation; committer only
	unflushed *unflushedCMIDs // committed cmids not yet in sstables; committer only
	// maxBatchBytes caps the bytes the committer stages for one batch at a
	// quarter of the memtable: a batch of half a memtable or more becomes a
	// Pebble "flushable batch", which has no seqnum to track in unflushed.
	maxBatchBytes int
	broken        atomic.Bool // a commit hit a Pebble fatal error
	st            counters
}

// Open opens (creating if needed) the Pebble database in dir. It reads no
// metadata beyond the format and the highest uid and gid (everything else
// is loaded on demand), and migrates a data dir of format v1 (written by
// releases up to df74be6) to v2, logging it. Errors (for example a
// read-only dir or an unknown format) are returned, never half-opened.
func Open(dir string, o Options) (*Store, error) { return open(dir, o) }

// Close stops taking new work, commits everything already submitted (OnSent
// is still called for it), and closes the database. Blocking calls that
// race with Close get *Error RateLimited, like Submit. Close is idempotent.
func (s *Store) Close() error { return s.close() }

// Stats is a snapshot of the committer's counters, for /metrics.
type Stats struct {
	QueueLen     int    // sends waiting for the committer
	QueueCap     int    // Options.QueueSize
	CtlLen       int    // blocking operations waiting for the committer
	Batches      uint64 // commits (sends/read-mark batches and other writes)
	Stored       uint64 // messages stored
	Dups         uint64 // sends answered with the original (Dup)
	Rejected     uint64 // sends answered with an error by the committer
	RateLimited  uint64 // Submit calls refused (queue full or closing)
	CommitErrors uint64 // failed commits

	// The metadata cache (Options.CacheSize).
	CacheBytes     int64  // bytes held (approximate, by the entries' real sizes)
	CacheCap       int64  // its budget
	CacheEntries   int64  // entries held
	CacheHits      uint64 // lookups answered from the cache
	CacheMisses    uint64 // lookups that went to Pebble
	CacheEvictions uint64 // entries evicted to stay within the budget
	CacheRefusals  uint64 // values a reader loaded that a concurrent write made stale (not cached)
	// The cmid index (unflushed.go).
	CMIDLookups    uint64 // lookups in the cmid index (Pebble)
	UnflushedCMIDs int64  // committed cmids not yet flushed to sstables: the recent-cmid set
}

// Stats returns the current counters. Safe for concurrent use; cheap.
func (s *Store) Stats() Stats {
	cs := s.cache.stats()
	return Stats{
		QueueLen:     len(s.q),
		QueueCap:     cap(s.q),
		CtlLen:       len(s.ctl),
		Batches:      s.st.batches.Load(),
		Stored:       s.st.stored.Load(),
		Dups:         s.st.dups.Load(),
		Rejected:     s.st.failed.Load(),
		RateLimited:  s.st.rateLimited.Load(),
		CommitErrors: s.st.commitErrors.Load(),

		CacheBytes:     cs.bytes,
		CacheCap:       cs.budget,
		CacheEntries:   cs.entries,
		CacheHits:      cs.hits,
		CacheMisses:    cs.misses,
		CacheEvictions: cs.evictions,
		CacheRefusals:  cs.refusals,
		CMIDLookups:    s.st.cmidLookups.Load(),
		UnflushedCMIDs: s.unflushed.n.Load(),
	}
}

type counters struct {
	batches, stored, dups, failed, rateLimited, commitErrors, cmidLookups atomic.Uint64
}

// User is an account.
type User struct {
	UID  uint64
	Name string // as registered (case preserved)
	Hash []byte // password hash, opaque to storage; shared with the store: never modify
}

// CreateUser stores a new user. Names are unique without regard to case.
func (s *Store) CreateUser(name string, hash []byte) (uint64, error) {
	r := &request{kind: reqCreateUser, name: name, hash: hash}
	if err := s.do(r); err != nil {
		return 0, err
	}
	return r.id, nil
}

// ImportUsers creates every user of us that does not exist yet (by name,
// any case) in few large batches, and returns the uid of each, in order.
// It exists for `magpie user import` (bench set-up of 19,000 users).
func (s *Store) ImportUsers(us []User) ([]uint64, error) {
	r := &request{kind: reqImportUsers, users: us}
	if err := s.do(r); err != nil {
		return nil, err
	}
	return r.ids, nil
}

// UserByName looks a user up without regard to case.
func (s *Store) UserByName(name string) (User, bool) { return s.userByName(name) }

// UserByID looks a user up by uid.
func (s *Store) UserByID(uid uint64) (User, bool) { return s.userByID(uid) }

// Users lists users with uid > after whose name starts with prefix (any
// case), ordered by uid, at most limit.
func (s *Store) Users(prefix string, after uint64, limit int) []User {
	return s.userList(prefix, after, limit)
}

// Message is a stored message.
type Message struct {
	Conv string // "d:a:b" or "g:gid"
	Seq  uint64
	From uint64
	TS   int64 // Unix ms, set once when stored
	Kind string
	Body string
	CMID string
}

// Send is one send request and, after commit, its result. The server has
// already checked the fields (cmid 1–64 bytes, exactly one of To/Group,
// body non-empty valid UTF-8, kind ≤ 32 bytes, "" replaced by "text").
// The committer applies, in order: a stored (From, CMID) returns the
// original (Dup, Msg = original, whatever the body or recipient), then
// body size (TooLarge), then recipient (NotFound, NotMember, BadRequest for
// oneself); then it assigns the next seq of the conversation, sets the
// sender's read mark to it, and stores the message.
type Send struct {
	From  uint64
	CMID  string
	To    uint64
	Group uint64
	Kind  string
	Body  string
	Tag   any // the submitter's; storage never reads it

	// Results, set before OnSent.
	Err        *Error
	Dup        bool     // the cmid was already stored; Msg is the original, nothing new to push
	Msg        Message  // the stored message
	Recipients []uint64 // every member uid of the conversation (the sender too); shared and immutable: never modify
}

// KindSystem is the kind of the messages that record group changes
// (PROTOCOL §13); their cmids begin with SystemCMIDPrefix. A client may
// send neither (the server refuses them at its fields check).
const (
	KindSystem       = "system"
	SystemCMIDPrefix = "sys:"
)

// Submit queues m for the committer without blocking. It returns an *Error
// with RateLimited when the queue is full or the store is closing; then
// nothing is stored and OnSent is never called for m.
func (s *Store) Submit(m *Send) error { return s.submit(m) }

// HistoryQuery selects a page of one conversation.
type HistoryQuery struct {
	Conv      string
	After     uint64
	HasAfter  bool
	Before    uint64
	HasBefore bool
	Limit     int // 1..200 (the server clamps)
}

// History returns messages in ascending seq order and whether more exist in
// the requested direction (for the newest page: older ones). Errors:
// BadRequest (malformed conv), NotFound, NotMember (PROTOCOL §4, §5).
func (s *Store) History(uid uint64, q HistoryQuery) ([]Message, bool, error) {
	return s.history(uid, q)
}

// ConvItem is one entry of the conversation list.
type ConvItem struct {
	Conv        string
	Peer        uint64 // direct conversations
	PeerReadSeq uint64 // direct conversations: the peer's read_seq (PROTOCOL §14)
	Group       uint64 // group conversations
	Name        string // group name
	Owner       uint64 // group owner, 0 when the group is empty (PROTOCOL §13)
	Public      bool   // group is public (PROTOCOL §13)
	LastSeq     uint64
	ReadSeq     uint64
	Unread      uint64
	Last        *Message // nil while the conversation has no messages
	TS          int64    // the sort key: Last.TS, or a group's creation time
}

// Convs lists every group uid is a member of and every direct conversation
// with at least one message, sorted per PROTOCOL §4, and total_unread.
// For a user with more than 10,000 conversations it returns the first
// 10,000 (use ConvsPaged for the rest).
func (s *Store) Convs(uid uint64) ([]ConvItem, uint64, error) {
	p, err := s.convList(uid, ConvsQuery{})
	return p.Items, p.TotalUnread, err
}

// ConvsQuery selects a page of the conversation list (docs/PROTOCOL.md,
// "convs paging"). The zero value is the first page of up to 10,000 items.
type ConvsQuery struct {
	Limit int // items per page; 0 or above 10,000 means 10,000
	// HasBefore selects the items that sort after (BeforeTS, BeforeConv)
	// in the list's order (newest first, ties by conv): the cursor is the
	// last item of the previous page (its TS and Conv).
	HasBefore  bool
	BeforeTS   int64
	BeforeConv string
}

// ConvsPage is one page of the conversation list.
type ConvsPage struct {
	Items       []ConvItem
	TotalUnread uint64 // over every conversation, not only the page
	More        bool   // items follow this page
}

// ConvsPaged returns one page of uid's conversation list. Memory is
// bounded by the page, not by the number of conversations; the time is
// proportional to the number of conversations (each is looked at).
func (s *Store) ConvsPaged(uid uint64, q ConvsQuery) (ConvsPage, error) { return s.convList(uid, q) }

// MarkRead sets read_seq = max(read_seq, min(seq, last_seq)) and returns the
// resulting read_seq, the conversation's unread and the user's total_unread.
func (s *Store) MarkRead(uid uint64, conv string, seq uint64) (readSeq, unread, total uint64, err error) {
	readSeq, unread, total, _, err = s.markRead(uid, conv, seq)
	return readSeq, unread, total, err
}

// MarkReadGrew is MarkRead that also reports whether this call moved the
// read mark: grewTo is the read_seq it set, 0 when it left it as it was
// (the seq of a receipt, PROTOCOL §14; a send moves the sender's mark
// without one). readSeq, unread and total are MarkRead's.
func (s *Store) MarkReadGrew(uid uint64, conv string, seq uint64) (readSeq, unread, total, grewTo uint64, err error) {
	return s.markRead(uid, conv, seq)
}

// GroupInfo answers every group request.
type GroupInfo struct {
	ID      uint64
	Name    string
	Count   int
	Owner   uint64   // the creator; after the owner leaves, the member with the lowest uid; 0 when empty
	Public  bool     // anyone may join (PROTOCOL §13)
	Members []uint64 // only for CreateGroup and GroupMembers
	More    bool
}

// Group changes (PROTOCOL §13). Each one that changes something stores,
// in the same Pebble batch as the change, a system message in the group's
// conversation (Kind KindSystem, From the acting uid, CMID
// "sys:<gid>:<seq>", Body the event's JSON) and hands it to OnSent with
// Recipients = the members after the change, plus the users it removed
// or who left. The acting user's read_seq moves to that message's seq;
// users put in by someone else start at seq − 1. A request that changes
// nothing stores nothing and is answered as usual.

// CreateGroup creates a private group of creator plus members (duplicates
// ignored; an unknown uid: NotFound, nothing created). The creator owns it.
func (s *Store) CreateGroup(creator uint64, name string, members []uint64) (GroupInfo, error) {
	return s.CreateGroupWith(creator, name, members, false)
}

// CreateGroupWith is CreateGroup with the group's visibility: a public
// group may be joined by anyone.
func (s *Store) CreateGroupWith(creator uint64, name string, members []uint64, public bool) (GroupInfo, error) {
	if e := validGroupName(name); e != nil {
		return GroupInfo{}, e
	}
	r := &request{kind: reqCreateGroup, uid: creator, name: name, members: members, public: public}
	if err := s.do(r); err != nil {
		return GroupInfo{}, err
	}
	return r.info, nil
}

// JoinGroup adds uid to a public group (idempotent: a member is answered
// as usual); a private group: Forbidden for a non-member. The joiner's
// read_seq starts at the seq of the "joined" message; whoever joins an
// empty group owns it.
func (s *Store) JoinGroup(uid, gid uint64) (GroupInfo, error) {
	r := &request{kind: reqJoinGroup, uid: uid, gid: gid}
	if err := s.do(r); err != nil {
		return GroupInfo{}, err
	}
	return r.info, nil
}

// LeaveGroup removes uid (NotMember if not a member). When the owner
// leaves, the remaining member with the lowest uid owns the group (0 when
// it is empty).
func (s *Store) LeaveGroup(uid, gid uint64) (GroupInfo, error) {
	r := &request{kind: reqLeaveGroup, uid: uid, gid: gid}
	if err := s.do(r); err != nil {
		return GroupInfo{}, err
	}
	return r.info, nil
}

// AddMembers adds members (1–1000 positive uids, repeats allowed) to gid
// on uid's request. Checks, in order: the list (BadRequest), the group
// (NotFound), uid is a member (NotMember), every uid exists (NotFound,
// nothing added). Uids already members are ignored.
func (s *Store) AddMembers(uid, gid uint64, members []uint64) (GroupInfo, error) {
	if e := validMemberList(members); e != nil {
		return GroupInfo{}, e
	}
	r := &request{kind: reqAddMembers, uid: uid, gid: gid, members: members}
	if err := s.do(r); err != nil {
		return GroupInfo{}, err
	}
	return r.info, nil
}

// RemoveMembers removes members (1–1000 positive uids) from gid on the
// owner uid's request. Checks, in order: the list (BadRequest), the group
// (NotFound), uid is a member (NotMember), uid owns the group
// (Forbidden), the owner's own uid is not in the list (BadRequest). Uids
// that are not members are ignored.
func (s *Store) RemoveMembers(uid, gid uint64, members []uint64) (GroupInfo, error) {
	if e := validMemberList(members); e != nil {
		return GroupInfo{}, e
	}
	r := &request{kind: reqRemoveMembers, uid: uid, gid: gid, members: members}
	if err := s.do(r); err != nil {
		return GroupInfo{}, err
	}
	return r.info, nil
}

// RenameGroup renames gid on the owner uid's request. Checks, in order:
// the name (BadRequest, 1–64 bytes), the group (NotFound), member
// (NotMember), owner (Forbidden). The current name stores nothing.
func (s *Store) RenameGroup(uid, gid uint64, name string) (GroupInfo, error) {
	if e := validGroupName(name); e != nil {
		return GroupInfo{}, e
	}
	r := &request{kind: reqRenameGroup, uid: uid, gid: gid, name: name}
	if err := s.do(r); err != nil {
		return GroupInfo{}, err
	}
	return r.info, nil
}

// GroupMembers lists members with uid > after, ascending, at most limit.
func (s *Store) GroupMembers(uid, gid, after uint64, limit int) (GroupInfo, error) {
	return s.groupMembers(uid, gid, after, limit)
}

// EnsureDemo creates what is missing of users alice, bob, carol (password
// hash from hash("password")) and a public group "lobby" with all three,
// owned by alice. A lobby created before groups could be public is made
// public. A demo user who left the lobby is put back (a "joined" message
// from that user). Idempotent.
func (s *Store) EnsureDemo(hash func(password string) []byte) error {
	// Hash outside the committer (bcrypt is slow), only for missing users.
	r := &request{kind: reqDemo, demo: make(map[string][]byte)}
	for _, name := range demoNames {
		if _, ok := s.UserByName(name); !ok {
			r.demo[name] = hash("password")
		}
	}
	return s.do(r)
}

// ParseConv, DirectConv and GroupConv are in keys.go.
