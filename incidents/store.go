package incidents

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/vigil-media/vigil/sfu"
	_ "modernc.org/sqlite" // the "sqlite" database/sql driver, pure Go
)

// DBName is the database file in the data directory.
const DBName = "vigil.db"

// MaxSnapshotBytes bounds a stored snapshot.
const MaxSnapshotBytes = 1 << 20

// MaxList is the most incidents one List returns.
const MaxList = 1000

// migrations bring the schema from version i to i+1 (PRAGMA
// user_version); they only ever get appended to.
var migrations = []string{
	`CREATE TABLE incidents (
		seq            INTEGER PRIMARY KEY AUTOINCREMENT,
		id             TEXT    NOT NULL UNIQUE,
		room           TEXT    NOT NULL,
		identity       TEXT    NOT NULL,
		type           TEXT    NOT NULL,
		source         TEXT    NOT NULL,
		track          TEXT    NOT NULL DEFAULT '',
		reporter       TEXT    NOT NULL DEFAULT '',
		note           TEXT    NOT NULL DEFAULT '',
		time_ms        INTEGER NOT NULL,
		recording_id   TEXT,
		recording_file TEXT,
		offset_ms      INTEGER,
		snapshot_ms    INTEGER
	);
	CREATE INDEX incidents_by_room ON incidents (room, time_ms, seq);
	CREATE TABLE snapshots (
		incident_id TEXT PRIMARY KEY REFERENCES incidents (id) ON DELETE CASCADE,
		jpeg        BLOB NOT NULL
	);`,
	// 2: one stored snapshot per keyframe, referenced by the incidents
	// that share it (content-addressed by the JPEG's SHA-256) instead of
	// a copy each; an index for retention by time. The table snapshots of
	// version 1 is still read for the incidents stored before.
	`CREATE TABLE keyframe_snapshots (
		sha256   TEXT    PRIMARY KEY,
		jpeg     BLOB    NOT NULL,
		taken_ms INTEGER NOT NULL
	);
	ALTER TABLE incidents ADD COLUMN snapshot_sha256 TEXT REFERENCES keyframe_snapshots (sha256);
	CREATE INDEX incidents_by_snapshot ON incidents (snapshot_sha256);
	CREATE INDEX incidents_by_time ON incidents (time_ms);`,
	// 3: the room instance of each incident; '' for the incidents of
	// before (readable by the admin key only).
	`ALTER TABLE incidents ADD COLUMN instance TEXT NOT NULL DEFAULT '';
	CREATE INDEX incidents_by_instance ON incidents (room, instance, time_ms, seq);`,
	// 4: token revocations (revocations.go): not incidents, but this is
	// the server's one database.
	`CREATE TABLE IF NOT EXISTS revocations (
		room     TEXT    NOT NULL,
		identity TEXT    NOT NULL,
		up_to    INTEGER NOT NULL,
		PRIMARY KEY (room, identity)
	);`,
}

// Store keeps incidents in SQLite (modernc.org/sqlite, WAL), in
// <dir>/vigil.db. It is safe for concurrent use.
type Store struct {
	db   *sql.DB
	path string
}

// Open opens (creating it 0600, in a 0700 directory, if missing) the
// database in dir and brings its schema up to date.
func Open(dir string) (*Store, error) {
	if dir == "" {
		return nil, errors.New("incidents: a data directory is required")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("incidents: data dir: %w", err)
	}
	path := filepath.Join(dir, DBName)
	// Created here with its mode, so SQLite gives the -wal and -shm files
	// the same one.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("incidents: %w", err)
	}
	_ = f.Close()
	if err := os.Chmod(path, 0o600); err != nil {
		return nil, fmt.Errorf("incidents: %w", err)
	}
	q := url.Values{}
	for _, p := range []string{"journal_mode(WAL)", "busy_timeout(5000)", "foreign_keys(1)", "synchronous(NORMAL)"} {
		q.Add("_pragma", p)
	}
	db, err := sql.Open("sqlite", "file:"+(&url.URL{Path: path}).EscapedPath()+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("incidents: open %s: %w", path, err)
	}
	s := &Store{db: db, path: path}
	if err := s.migrate(); err != nil {
		_ = db.Close()
		return nil, err
	}
	return s, nil
}

// Path is the database file.
func (s *Store) Path() string { return s.path }

func (s *Store) migrate() error {
	ctx := context.Background()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("incidents: migrate: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	var version int
	if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil {
		return fmt.Errorf("incidents: schema version: %w", err)
	}
	if version > len(migrations) {
		return fmt.Errorf("incidents: database schema %d is newer than this server's (%d)", version, len(migrations))
	}
	for i := version; i < len(migrations); i++ {
		if _, err := tx.ExecContext(ctx, migrations[i]); err != nil {
			return fmt.Errorf("incidents: migration %d: %w", i+1, err)
		}
	}
	// PRAGMA takes no parameters; the value is an int of ours.
	if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", len(migrations))); err != nil {
		return fmt.Errorf("incidents: schema version: %w", err)
	}
	return tx.Commit()
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// Add stores an incident and its snapshot (nil: none; at most
// MaxSnapshotBytes) in one transaction. A snapshot already stored (the
// same JPEG: incidents on one keyframe) is referenced, not stored again.
func (s *Store) Add(ctx context.Context, inc Incident, snapshot []byte) error {
	if len(snapshot) > MaxSnapshotBytes {
		return fmt.Errorf("incidents: snapshot of %d bytes, over %d", len(snapshot), MaxSnapshotBytes)
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("incidents: add: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	var snapMs *int64
	if snapshot != nil && inc.SnapshotTime != nil {
		v := inc.SnapshotTime.UnixMilli()
		snapMs = &v
	}
	var snapSum *string
	if snapshot != nil {
		h := sha256.Sum256(snapshot)
		sum := hex.EncodeToString(h[:])
		snapSum = &sum
		taken := inc.Time.UnixMilli()
		if snapMs != nil {
			taken = *snapMs
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO keyframe_snapshots (sha256, jpeg, taken_ms) VALUES (?, ?, ?)
			ON CONFLICT (sha256) DO NOTHING`, sum, snapshot, taken); err != nil {
			return fmt.Errorf("incidents: add snapshot: %w", err)
		}
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO incidents
		(id, room, instance, identity, type, source, track, reporter, note, time_ms, recording_id, recording_file, offset_ms, snapshot_ms, snapshot_sha256)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		inc.ID, inc.Room, inc.Instance, inc.Identity, string(inc.Type), string(inc.Source), string(inc.Track), inc.Reporter, inc.Note,
		inc.Time.UnixMilli(), inc.RecordingID, inc.RecordingFile, inc.OffsetMs, snapMs, snapSum)
	if err != nil {
		return fmt.Errorf("incidents: add: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("incidents: add: %w", err)
	}
	return nil
}

// Filter selects incidents of one room; empty fields match everything.
type Filter struct {
	Room string
	// Instance selects one instance of the room (sfu.Room.Instance);
	// empty: every room of that name, past and present.
	Instance string
	Identity string
	Type     Type
	// Limit is the most returned, the newest ones; 0 or more than
	// MaxList means MaxList.
	Limit int
}

const columns = `i.id, i.room, i.instance, i.identity, i.type, i.source, i.track, i.reporter, i.note, i.time_ms,
	i.recording_id, i.recording_file, i.offset_ms, i.snapshot_ms,
	(s.incident_id IS NOT NULL OR i.snapshot_sha256 IS NOT NULL)`

type scanner interface{ Scan(dest ...any) error }

func scanIncident(r scanner) (Incident, error) {
	var inc Incident
	var typ, src, track string
	var t int64
	var recID, recFile sql.NullString
	var off, snap sql.NullInt64
	err := r.Scan(&inc.ID, &inc.Room, &inc.Instance, &inc.Identity, &typ, &src, &track, &inc.Reporter, &inc.Note, &t,
		&recID, &recFile, &off, &snap, &inc.HasSnapshot)
	if err != nil {
		return inc, err
	}
	inc.Type, inc.Source, inc.Track, inc.Time = Type(typ), Source(src), sfu.Source(track), time.UnixMilli(t).UTC()
	if recID.Valid {
		inc.RecordingID = &recID.String
	}
	if recFile.Valid {
		inc.RecordingFile = &recFile.String
	}
	if off.Valid {
		inc.OffsetMs = &off.Int64
	}
	if snap.Valid && inc.HasSnapshot {
		st := time.UnixMilli(snap.Int64).UTC()
		inc.SnapshotTime = &st
	}
	return inc, nil
}

// List returns the incidents of a room matching f, oldest first (the
// newest f.Limit of them).
func (s *Store) List(ctx context.Context, f Filter) ([]Incident, error) {
	limit := f.Limit
	if limit <= 0 || limit > MaxList {
		limit = MaxList
	}
	rows, err := s.db.QueryContext(ctx, `SELECT `+columns+`
		FROM incidents i LEFT JOIN snapshots s ON s.incident_id = i.id
		WHERE i.room = ? AND (? = '' OR i.instance = ?) AND (? = '' OR i.identity = ?) AND (? = '' OR i.type = ?)
		ORDER BY i.time_ms DESC, i.seq DESC LIMIT ?`,
		f.Room, f.Instance, f.Instance, f.Identity, f.Identity, string(f.Type), string(f.Type), limit)
	if err != nil {
		return nil, fmt.Errorf("incidents: list: %w", err)
	}
	defer rows.Close()
	out := []Incident{}
	for rows.Next() {
		inc, err := scanIncident(rows)
		if err != nil {
			return nil, fmt.Errorf("incidents: list: %w", err)
		}
		out = append(out, inc)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("incidents: list: %w", err)
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out, nil
}

// Get returns one incident of a room, of whichever instance: the caller
// compares Incident.Instance with what its reader may see.
func (s *Store) Get(ctx context.Context, room, id string) (Incident, error) {
	if !ValidID(id) {
		return Incident{}, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	row := s.db.QueryRowContext(ctx, `SELECT `+columns+`
		FROM incidents i LEFT JOIN snapshots s ON s.incident_id = i.id
		WHERE i.room = ? AND i.id = ?`, room, id)
	inc, err := scanIncident(row)
	if errors.Is(err, sql.ErrNoRows) {
		return inc, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	if err != nil {
		return inc, fmt.Errorf("incidents: get: %w", err)
	}
	return inc, nil
}

// Snapshot returns the JPEG of an incident of a room: ErrNotFound for an
// unknown incident, ErrSnapshotNotFound for one without a snapshot.
func (s *Store) Snapshot(ctx context.Context, room, id string) ([]byte, error) {
	inc, err := s.Get(ctx, room, id)
	if err != nil {
		return nil, err
	}
	if !inc.HasSnapshot {
		return nil, fmt.Errorf("%w: %q", ErrSnapshotNotFound, id)
	}
	var b []byte
	err = s.db.QueryRowContext(ctx, `SELECT COALESCE(
		(SELECT k.jpeg FROM keyframe_snapshots k WHERE k.sha256 = i.snapshot_sha256),
		(SELECT s.jpeg FROM snapshots s WHERE s.incident_id = i.id))
		FROM incidents i WHERE i.id = ?`, id).Scan(&b)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%w: %q", ErrSnapshotNotFound, id)
	}
	if err != nil {
		return nil, fmt.Errorf("incidents: snapshot: %w", err)
	}
	if b == nil {
		return nil, fmt.Errorf("%w: %q", ErrSnapshotNotFound, id)
	}
	return b, nil
}

// Usage is what the store holds.
type Usage struct {
	Incidents     int64 // rows
	Snapshots     int64 // stored JPEGs (each keyframe's once)
	SnapshotBytes int64 // their sizes
}

// Usage counts what the store holds.
func (s *Store) Usage(ctx context.Context) (Usage, error) {
	var u Usage
	err := s.db.QueryRowContext(ctx, `SELECT
		(SELECT COUNT(*) FROM incidents),
		(SELECT COUNT(*) FROM keyframe_snapshots) + (SELECT COUNT(*) FROM snapshots),
		(SELECT COALESCE(SUM(LENGTH(jpeg)), 0) FROM keyframe_snapshots) + (SELECT COALESCE(SUM(LENGTH(jpeg)), 0) FROM snapshots)`).
		Scan(&u.Incidents, &u.Snapshots, &u.SnapshotBytes)
	if err != nil {
		return u, fmt.Errorf("incidents: usage: %w", err)
	}
	return u, nil
}

// DeleteBefore deletes the incidents that happened before t, and the
// snapshots no incident references any more; it returns how many of
// each it deleted.
func (s *Store) DeleteBefore(ctx context.Context, t time.Time) (incidents, snapshots int64, err error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, 0, fmt.Errorf("incidents: retention: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	// The snapshots of version 1 go with their incidents (ON DELETE CASCADE).
	res, err := tx.ExecContext(ctx, `DELETE FROM incidents WHERE time_ms < ?`, t.UnixMilli())
	if err != nil {
		return 0, 0, fmt.Errorf("incidents: retention: %w", err)
	}
	incidents, _ = res.RowsAffected()
	res, err = tx.ExecContext(ctx, `DELETE FROM keyframe_snapshots
		WHERE NOT EXISTS (SELECT 1 FROM incidents i WHERE i.snapshot_sha256 = keyframe_snapshots.sha256)`)
	if err != nil {
		return 0, 0, fmt.Errorf("incidents: retention: %w", err)
	}
	snapshots, _ = res.RowsAffected()
	if err := tx.Commit(); err != nil {
		return 0, 0, fmt.Errorf("incidents: retention: %w", err)
	}
	return incidents, snapshots, nil
}
