// Package api is the load lab's client of a Vigil: its admin and
// session REST API, and HTTP clients that may count what they cost on
// the wire.
package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// API is the admin and session REST API of one Vigil, over a client
// that is not metered: setting up and tearing down is not what we
// measure.
type API struct {
	Base     string // http://127.0.0.1:port
	AdminKey string
	HC       *http.Client
}

func (a *API) Do(ctx context.Context, method, path, bearer string, body any, want int, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.Base+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := a.HC.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != want {
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(b)))
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

func (a *API) CreateRoom(ctx context.Context, name, kind string) error {
	return a.Do(ctx, http.MethodPost, "/v1/rooms", a.AdminKey,
		map[string]any{"name": name, "kind": kind}, http.StatusCreated, nil)
}

func (a *API) MintToken(ctx context.Context, room, identity, role string) (string, error) {
	var out struct {
		Token string `json:"token"`
	}
	err := a.Do(ctx, http.MethodPost, "/v1/rooms/"+url.PathEscape(room)+"/tokens", a.AdminKey,
		map[string]any{"identity": identity, "role": role, "ttl_seconds": 3600}, http.StatusCreated, &out)
	return out.Token, err
}

func (a *API) OpenSession(ctx context.Context, room, token string) (string, error) {
	var out struct {
		SessionID string `json:"session_id"`
	}
	err := a.Do(ctx, http.MethodPost, "/v1/rooms/"+url.PathEscape(room)+"/sessions", token, nil, http.StatusCreated, &out)
	return out.SessionID, err
}

// CloseSession ends a session; one already gone is fine.
func (a *API) CloseSession(ctx context.Context, id string) error {
	err := a.Do(ctx, http.MethodDelete, "/v1/sessions/"+url.PathEscape(id), "", nil, http.StatusNoContent, nil)
	if err != nil && strings.Contains(err.Error(), "session_not_found") {
		return nil
	}
	return err
}

// Participants counts the participants in room.
func (a *API) Participants(ctx context.Context, room string) (int, error) {
	var out struct {
		Participants []json.RawMessage `json:"participants"`
	}
	err := a.Do(ctx, http.MethodGet, "/v1/rooms/"+url.PathEscape(room), a.AdminKey, nil, http.StatusOK, &out)
	return len(out.Participants), err
}

// Ready reports whether the server answers.
func (a *API) Ready(ctx context.Context) bool {
	return a.Do(ctx, http.MethodGet, "/v1/rooms", a.AdminKey, nil, http.StatusOK, nil) == nil
}
