package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// RevocationTTL is how long a revocation is kept: longer than any join
// token lives.
const RevocationTTL = 24*time.Hour + time.Second

// Revocation is the Data of a "revoked" Message.
type Revocation struct {
	Room     string    `json:"room"`
	Identity string    `json:"identity"`
	At       time.Time `json:"at"`
}

// revokedMember is a revocation's member in the sorted set (its At is the
// score).
type revokedMember struct {
	Room     string `json:"room"`
	Identity string `json:"identity"`
}

// Revoke records that the tokens of identity in room issued up to at are
// revoked, for RevocationTTL (24 h + 1 s), and tells every node (a
// "revoked" Message whose Data is the Revocation). A zero At means now;
// At is kept to the millisecond. Revoking the same identity in the same
// room again keeps the later At.
func (c *Cluster) Revoke(ctx context.Context, r Revocation) error {
	if r.At.IsZero() {
		r.At = time.Now()
	}
	r.At = time.UnixMilli(r.At.UnixMilli()).UTC()
	member, err := json.Marshal(revokedMember{Room: r.Room, Identity: r.Identity})
	if err != nil {
		return fmt.Errorf("cluster: revoke: %w", err)
	}
	err = c.call(ctx, "revoke", func(ctx context.Context) error {
		_, err := c.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.ZAddGT(ctx, c.keys.revoked(), redis.Z{Score: float64(r.At.UnixMilli()), Member: string(member)})
			p.ZRemRangeByScore(ctx, c.keys.revoked(), "-inf", revokedCutoff())
			return nil
		})
		return err
	})
	if err != nil {
		return err
	}
	data, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("cluster: revoke: %w", err)
	}
	return c.Publish(ctx, Message{Type: "revoked", Room: r.Room, Data: data})
}

// Revocations lists the revocations not yet expired, oldest first, for a
// node that starts (or comes back to Redis) to load.
func (c *Cluster) Revocations(ctx context.Context) ([]Revocation, error) {
	var zs []redis.Z
	err := c.call(ctx, "revocations", func(ctx context.Context) error {
		var rng *redis.ZSliceCmd
		_, err := c.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.ZRemRangeByScore(ctx, c.keys.revoked(), "-inf", revokedCutoff())
			rng = p.ZRangeWithScores(ctx, c.keys.revoked(), 0, -1)
			return nil
		})
		zs = rng.Val()
		return err
	})
	if err != nil {
		return nil, err
	}
	out := make([]Revocation, 0, len(zs))
	for _, z := range zs {
		s, _ := z.Member.(string)
		var m revokedMember
		if err := json.Unmarshal([]byte(s), &m); err != nil {
			c.log.Warn("cluster: skipping a malformed revocation", "member", s, "err", err)
			continue
		}
		out = append(out, Revocation{
			Room:     m.Room,
			Identity: m.Identity,
			At:       time.UnixMilli(int64(z.Score)).UTC(),
		})
	}
	return out, nil
}

// revokedCutoff is the ZREMRANGEBYSCORE bound of the revocations to trim:
// those older than RevocationTTL.
func revokedCutoff() string {
	return "(" + strconv.FormatInt(time.Now().Add(-RevocationTTL).UnixMilli(), 10)
}
