package signaling

import (
	"errors"
	"net/http"

	"github.com/gin-gonic/gin"
	"github.com/vigil-media/vigil/incidents"
	"github.com/vigil-media/vigil/patterns"
	"github.com/vigil-media/vigil/recordings"
	"github.com/vigil-media/vigil/sfu"
)

// Errors of the signaling layer. Each maps to one HTTP status and one
// stable code in codeFor, the only place that mapping is made.
var (
	ErrUnauthorized = errors.New("missing or wrong admin key")
	ErrInvalidToken = errors.New("invalid join token")
	ErrTokenExpired = errors.New("join token expired")
	ErrTokenRevoked = errors.New("join token revoked")
	ErrForbidden    = errors.New("forbidden")
	// ErrTokenRoomInstance refuses a join token of another instance of
	// the room's name (a room deleted and created again), or one bound
	// to no instance where evidence is read.
	ErrTokenRoomInstance = errors.New("join token is not for this instance of the room")
	ErrInvalidRequest    = errors.New("invalid request")
	ErrBodyTooLarge      = errors.New("request body too large")
	ErrSessionNotFound   = errors.New("session not found")
	ErrNotFound          = errors.New("no such route")
	ErrShuttingDown      = errors.New("server is shutting down")
	ErrUnknownType       = errors.New("unknown message type")
	ErrInvalidMessage    = errors.New("invalid message")
	ErrInvalidCursor     = errors.New("invalid cursor")
)

// errorBody is the JSON shape of every error reply.
type errorBody struct {
	Error errorDetail `json:"error"`
}

type errorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// codeFor maps an error to its HTTP status and stable code.
func codeFor(err error) (int, string) {
	table := []struct {
		target error
		status int
		code   string
	}{
		{ErrUnauthorized, http.StatusUnauthorized, "unauthorized"},
		{ErrTokenExpired, http.StatusUnauthorized, "token_expired"},
		{ErrTokenRevoked, http.StatusUnauthorized, "token_revoked"},
		{ErrInvalidToken, http.StatusUnauthorized, "invalid_token"},
		{ErrTokenRoomInstance, http.StatusForbidden, "token_room_instance"},
		{ErrForbidden, http.StatusForbidden, "forbidden"},
		{sfu.ErrForbidden, http.StatusForbidden, "forbidden"},
		{ErrBodyTooLarge, http.StatusRequestEntityTooLarge, "body_too_large"},
		{ErrInvalidRequest, http.StatusBadRequest, "invalid_request"},
		{sfu.ErrInvalidName, http.StatusBadRequest, "invalid_request"},
		{sfu.ErrInvalidKind, http.StatusBadRequest, "invalid_request"},
		{sfu.ErrInvalidRole, http.StatusBadRequest, "invalid_request"},
		{sfu.ErrRoomNotFound, http.StatusNotFound, "room_not_found"},
		{ErrSessionNotFound, http.StatusNotFound, "session_not_found"},
		{ErrNotFound, http.StatusNotFound, "not_found"},
		{sfu.ErrRoomExists, http.StatusConflict, "room_exists"},
		{sfu.ErrRoomFull, http.StatusConflict, "room_full"},
		{sfu.ErrRoomClosed, http.StatusGone, "room_closed"},
		{ErrShuttingDown, http.StatusServiceUnavailable, "shutting_down"},
		{ErrDraining, http.StatusServiceUnavailable, "draining"},
		{sfu.ErrServerClosed, http.StatusServiceUnavailable, "shutting_down"},
		// Socket-level codes; the status only matters if one reaches HTTP.
		{ErrInvalidMessage, http.StatusBadRequest, "invalid_message"},
		{sfu.ErrInvalidMessage, http.StatusBadRequest, "invalid_message"},
		{patterns.ErrKeyReused, http.StatusUnprocessableEntity, "idempotency_key_reused"},
		{patterns.ErrTooManyWaiters, http.StatusServiceUnavailable, "too_many_waiters"},
		{ErrUnknownType, http.StatusBadRequest, "unknown_type"},
		{ErrInvalidCursor, http.StatusBadRequest, "invalid_cursor"},
		{patterns.ErrCursorTooOld, http.StatusGone, "cursor_too_old"},
		{sfu.ErrInvalidSDP, http.StatusBadRequest, "invalid_sdp"},
		{sfu.ErrGlare, http.StatusConflict, "glare"},
		{sfu.ErrInvalidState, http.StatusConflict, "invalid_state"},
		{sfu.ErrClosed, http.StatusGone, "session_ended"},
		{ErrUnsupportedMediaType, http.StatusUnsupportedMediaType, "unsupported_media_type"},
		{ErrResourceNotFound, http.StatusNotFound, "resource_not_found"},
		{ErrPrecondition, http.StatusPreconditionFailed, "precondition_failed"},
		{sfu.ErrNoCodec, http.StatusUnprocessableEntity, "unsupported_codec"},
		{sfu.ErrParticipantNotFound, http.StatusNotFound, "participant_not_found"},
		{sfu.ErrTrackNotFound, http.StatusNotFound, "track_not_found"},
		{recordings.ErrNotFound, http.StatusNotFound, "recording_not_found"},
		{recordings.ErrFileNotFound, http.StatusNotFound, "file_not_found"},
		{recordings.ErrActive, http.StatusConflict, "recording_active"},
		{recordings.ErrInvalidName, http.StatusBadRequest, "invalid_request"},
		{recordings.ErrClosed, http.StatusServiceUnavailable, "shutting_down"},
		{recordings.ErrDiskFull, http.StatusInsufficientStorage, "disk_full"},
		{ErrRecordingsDisabled, http.StatusServiceUnavailable, "recordings_disabled"},
		{incidents.ErrNotFound, http.StatusNotFound, "incident_not_found"},
		{incidents.ErrSnapshotNotFound, http.StatusNotFound, "snapshot_not_found"},
		{incidents.ErrRateLimited, http.StatusTooManyRequests, "rate_limited"},
		{incidents.ErrInvalidType, http.StatusBadRequest, "invalid_message"},
		{incidents.ErrClosed, http.StatusServiceUnavailable, "shutting_down"},
		{incidents.ErrNotAdmitted, http.StatusForbidden, "not_admitted"},
		{incidents.ErrCapped, http.StatusConflict, "incidents_capped"},
		{ErrIncidentsDisabled, http.StatusServiceUnavailable, "incidents_disabled"},
		{ErrRateLimited, http.StatusTooManyRequests, "rate_limited"},
		{sfu.ErrTooManyRooms, http.StatusConflict, "too_many_rooms"},
		{sfu.ErrTooManyTracks, http.StatusConflict, "too_many_tracks"},
		{ErrClusterUnavailable, http.StatusServiceUnavailable, "cluster_unavailable"},
		{ErrNodeUnavailable, http.StatusServiceUnavailable, "node_unavailable"},
		{ErrRoomMoved, http.StatusServiceUnavailable, "room_moved"},
	}
	for _, e := range table {
		if errors.Is(err, e.target) {
			return e.status, e.code
		}
	}
	return http.StatusInternalServerError, "internal"
}

// writeError replies with the JSON error for err.
func writeError(c *gin.Context, err error) {
	status, code := codeFor(err)
	msg := err.Error()
	if status == http.StatusInternalServerError {
		msg = "internal error"
	}
	c.AbortWithStatusJSON(status, errorBody{Error: errorDetail{Code: code, Message: msg}})
}
