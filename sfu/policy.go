package sfu

// Kind is the kind of a room; it selects the room's policy table.
type Kind string

// The room kinds.
const (
	KindConference Kind = "conference"
	KindBroadcast  Kind = "broadcast"
	KindProctoring Kind = "proctoring"
)

// Role is what a participant is in its room.
type Role string

// The roles, by room kind: participant (conference), host and viewer
// (broadcast), candidate and proctor (proctoring).
const (
	RoleParticipant Role = "participant"
	RoleHost        Role = "host"
	RoleViewer      Role = "viewer"
	RoleCandidate   Role = "candidate"
	RoleProctor     Role = "proctor"
)

// Source is what a published track carries.
type Source string

// The track sources.
const (
	SourceCamera     Source = "camera"
	SourceMicrophone Source = "microphone"
	SourceScreen     Source = "screen"
)

// Valid reports whether s is a known source.
func (s Source) Valid() bool {
	return s == SourceCamera || s == SourceMicrophone || s == SourceScreen
}

// Audio reports whether the source carries audio (otherwise video).
func (s Source) Audio() bool { return s == SourceMicrophone }

// rolePolicy is one row of a room kind's policy table.
type rolePolicy struct {
	publish      []Source      // sources this role may publish
	receivesFrom map[Role]bool // roles whose media this role receives
	sees         map[Role]bool // roles this role sees in its roster
}

// policies is the one policy table per room kind: who may publish which
// source, whose media each role receives, whom it sees. It is enforced
// here when a track is published or subscribed, not only hidden in the
// client (docs/api.md, "Room policies"). It is never mutated.
var policies = map[Kind]map[Role]rolePolicy{
	KindConference: {
		RoleParticipant: {
			publish:      []Source{SourceCamera, SourceMicrophone, SourceScreen},
			receivesFrom: roles(RoleParticipant),
			sees:         roles(RoleParticipant),
		},
	},
	KindBroadcast: {
		RoleHost: {
			publish:      []Source{SourceCamera, SourceMicrophone, SourceScreen},
			receivesFrom: roles(RoleHost),
			sees:         roles(RoleHost),
		},
		// A viewer receives the hosts and sees only them: a broadcast with
		// thousands of viewers does not send each one the whole audience.
		RoleViewer: {
			receivesFrom: roles(RoleHost),
			sees:         roles(RoleHost),
		},
	},
	KindProctoring: {
		// A candidate never receives another candidate's media, identity
		// or presence. Proctors are invisible to candidates.
		RoleCandidate: {
			publish: []Source{SourceCamera, SourceMicrophone, SourceScreen},
		},
		RoleProctor: {
			publish:      []Source{SourceMicrophone},
			receivesFrom: roles(RoleCandidate),
			sees:         roles(RoleCandidate, RoleProctor),
		},
	},
}

func roles(rs ...Role) map[Role]bool {
	m := make(map[Role]bool, len(rs))
	for _, r := range rs {
		m[r] = true
	}
	return m
}

// ValidKind reports whether k is a known room kind.
func ValidKind(k Kind) bool {
	_, ok := policies[k]
	return ok
}

// ValidRole reports whether role exists in rooms of kind k.
func ValidRole(k Kind, role Role) bool {
	_, ok := policies[k][role]
	return ok
}

// Roles lists the roles of kind k.
func Roles(k Kind) []Role {
	var out []Role
	for _, r := range []Role{RoleParticipant, RoleHost, RoleViewer, RoleCandidate, RoleProctor} {
		if ValidRole(k, r) {
			out = append(out, r)
		}
	}
	return out
}

// CanPublish reports whether role may publish src in a room of kind k.
func CanPublish(k Kind, role Role, src Source) bool {
	for _, s := range policies[k][role].publish {
		if s == src {
			return true
		}
	}
	return false
}

// Publishable lists the sources role may publish in a room of kind k.
func Publishable(k Kind, role Role) []Source {
	return append([]Source(nil), policies[k][role].publish...)
}

// CanReceive reports whether a subscriber of role sub receives media
// published by a participant of role pub in a room of kind k.
func CanReceive(k Kind, sub, pub Role) bool {
	return policies[k][sub].receivesFrom[pub]
}

// Receives reports whether role receives anyone's media in kind k.
func Receives(k Kind, role Role) bool { return len(policies[k][role].receivesFrom) > 0 }

// CanSee reports whether a participant of role viewer sees a participant of
// role subject in its roster (joins, leaves) in a room of kind k.
func CanSee(k Kind, viewer, subject Role) bool {
	return policies[k][viewer].sees[subject]
}
