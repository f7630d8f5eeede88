package storage

import (
	"fmt"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// Migration from format v1 (releases up to df74be6) to v2. The only
// difference is the group record, which gains the owner, the public flag
// and the member count (keys.go, encodeGroup):
//
//   - owner: the creator while they are a member, else the member with the
//     lowest uid, 0 for an empty group (PROTOCOL §13's rule for an owner
//     who left);
//   - public: false (every v1 group was joinable by anyone, but §13 makes
//     public an explicit choice; the demo lobby is made public by the
//     code that implements §13);
//   - count: the number of memberships (M keys).
//
// It is one pass over the group records and the memberships, both in gid
// order (a merge join, memory independent of the data), committed in
// chunks. Each chunk also records the last gid it rewrote under
// migrateKey, so a migration interrupted by a crash resumes where it
// stopped; the last batch sets the format to v2 and deletes migrateKey.
// Nothing else changes, so a v1 data dir opens with this one-time scan of
// its group records and memberships, logged with its duration.

// migrateChunk is the number of groups per migration batch (a variable
// for tests).
var migrateChunk = 10000

// migrateHook, when set (tests), is called after each committed chunk; an
// error stops the migration there, as a crash would.
var migrateHook func(doneGID uint64) error

func (s *Store) migrateV1(dir string) error {
	t0 := time.Now()
	var done uint64
	if _, err := getValue(s.db, migrateKey, func(v []byte) error {
		if len(v) != 8 {
			return errCorrupt
		}
		done = getU64(v)
		return nil
	}); err != nil {
		return fmt.Errorf("migration progress: %w", err)
	}
	s.log.Info("storage: migrating data dir from format v1 to v2 (group records gain owner, public flag and member count)",
		"dir", dir, "resuming_after_gid", done)
	lo := keyGroup(nil, done+1)
	git, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: []byte{pfxGroup + 1}})
	if err != nil {
		return err
	}
	defer git.Close()
	mit, err := s.db.NewIter(&pebble.IterOptions{LowerBound: keyMember(nil, done+1, 0), UpperBound: []byte{pfxMember + 1}})
	if err != nil {
		return err
	}
	defer mit.Close()
	mok := mit.First()
	b := s.db.NewBatch()
	defer func() { b.Close() }()
	groups, members, inChunk := 0, 0, 0
	for ok := git.First(); ok; ok = git.Next() {
		k := git.Key()
		if len(k) != 9 {
			return fmt.Errorf("group key %x: %w", k, errCorrupt)
		}
		gid := getU64(k[1:])
		v, err := git.ValueAndErr()
		if err != nil {
			return err
		}
		created, creator, name, err := decodeGroupV1(v)
		if err != nil {
			return fmt.Errorf("group %d: %w", gid, err)
		}
		g := &groupRec{id: gid, name: name, created: created, creator: creator}
		var lowest uint64
		creatorMember := false
		for ; mok; mok = mit.Next() {
			mk := mit.Key()
			if len(mk) != 17 {
				return fmt.Errorf("membership key %x: %w", mk, errCorrupt)
			}
			mg, uid := getU64(mk[1:]), getU64(mk[9:])
			if mg < gid {
				return fmt.Errorf("%w: membership of uid %d in unknown group %d", errCorrupt, uid, mg)
			}
			if mg > gid {
				break
			}
			g.count++
			if lowest == 0 {
				lowest = uid
			}
			creatorMember = creatorMember || uid == creator
		}
		if err := mit.Error(); err != nil {
			return err
		}
		switch {
		case creatorMember:
			g.owner = creator
		default:
			g.owner = lowest
		}
		if err := b.Set(k, encodeGroup(nil, g), nil); err != nil {
			return err
		}
		groups++
		members += int(g.count)
		if inChunk++; inChunk == migrateChunk {
			if err := b.Set(migrateKey, appendU64(nil, gid), nil); err != nil {
				return err
			}
			if err := b.Commit(pebble.Sync); err != nil {
				return err
			}
			b.Close()
			b = s.db.NewBatch()
			inChunk = 0
			if migrateHook != nil {
				if err := migrateHook(gid); err != nil {
					return err
				}
			}
		}
	}
	if err := git.Error(); err != nil {
		return err
	}
	if mok {
		mk := mit.Key()
		if len(mk) == 17 {
			return fmt.Errorf("%w: membership of uid %d in unknown group %d", errCorrupt, getU64(mk[9:]), getU64(mk[1:]))
		}
	}
	if err := b.Set(formatKey, []byte(formatValue), nil); err != nil {
		return err
	}
	if err := b.Delete(migrateKey, nil); err != nil {
		return err
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return err
	}
	s.log.Info("storage: migrated data dir to format v2", "dir", dir, "groups", groups, "memberships", members,
		"duration", time.Since(t0).Round(time.Millisecond))
	return nil
}
