package incidents

import (
	"context"
	"fmt"
)

// The store also keeps the join-token revocations of a single node
// (signaling.Tokens.Persist), so that a restart does not let revoked
// tokens in again: one row per room and identity, the Unix second up to
// which their tokens are revoked. Rows older than every token they could
// cover are deleted as the revocations are loaded.

// Revocation is one revocation kept: the tokens of Identity in Room
// issued at or before UpTo (Unix seconds) are revoked.
type Revocation struct {
	Room, Identity string
	UpTo           int64
}

// SaveRevocation records a revocation, keeping the later one of a room
// and identity revoked before.
func (s *Store) SaveRevocation(room, identity string, upTo int64) error {
	_, err := s.db.ExecContext(context.Background(),
		`INSERT INTO revocations (room, identity, up_to) VALUES (?, ?, ?)
		 ON CONFLICT (room, identity) DO UPDATE SET up_to = max(up_to, excluded.up_to)`,
		room, identity, upTo)
	if err != nil {
		return fmt.Errorf("incidents: save revocation: %w", err)
	}
	return nil
}

// Revocations deletes the revocations older than since (Unix seconds)
// and returns the others.
func (s *Store) Revocations(since int64) ([]Revocation, error) {
	ctx := context.Background()
	if _, err := s.db.ExecContext(ctx, `DELETE FROM revocations WHERE up_to < ?`, since); err != nil {
		return nil, fmt.Errorf("incidents: prune revocations: %w", err)
	}
	rows, err := s.db.QueryContext(ctx, `SELECT room, identity, up_to FROM revocations`)
	if err != nil {
		return nil, fmt.Errorf("incidents: revocations: %w", err)
	}
	defer rows.Close()
	var out []Revocation
	for rows.Next() {
		var r Revocation
		if err := rows.Scan(&r.Room, &r.Identity, &r.UpTo); err != nil {
			return nil, fmt.Errorf("incidents: revocations: %w", err)
		}
		out = append(out, r)
	}
	return out, rows.Err()
}
