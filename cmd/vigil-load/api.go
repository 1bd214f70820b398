package main

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

// api is the admin and session REST API of one Vigil, over a client
// that is not metered: setting up and tearing down is not what we
// measure.
type api struct {
	base     string // http://127.0.0.1:port
	adminKey string
	hc       *http.Client
}

func (a *api) do(ctx context.Context, method, path, bearer string, body any, want int, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := a.hc.Do(req)
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

func (a *api) createRoom(ctx context.Context, name, kind string) error {
	return a.do(ctx, http.MethodPost, "/v1/rooms", a.adminKey,
		map[string]any{"name": name, "kind": kind}, http.StatusCreated, nil)
}

func (a *api) mintToken(ctx context.Context, room, identity, role string) (string, error) {
	var out struct {
		Token string `json:"token"`
	}
	err := a.do(ctx, http.MethodPost, "/v1/rooms/"+url.PathEscape(room)+"/tokens", a.adminKey,
		map[string]any{"identity": identity, "role": role, "ttl_seconds": 3600}, http.StatusCreated, &out)
	return out.Token, err
}

func (a *api) openSession(ctx context.Context, room, token string) (string, error) {
	var out struct {
		SessionID string `json:"session_id"`
	}
	err := a.do(ctx, http.MethodPost, "/v1/rooms/"+url.PathEscape(room)+"/sessions", token, nil, http.StatusCreated, &out)
	return out.SessionID, err
}

// closeSession ends a session; one already gone is fine.
func (a *api) closeSession(ctx context.Context, id string) error {
	err := a.do(ctx, http.MethodDelete, "/v1/sessions/"+url.PathEscape(id), "", nil, http.StatusNoContent, nil)
	if err != nil && strings.Contains(err.Error(), "session_not_found") {
		return nil
	}
	return err
}

// participants counts the participants in room.
func (a *api) participants(ctx context.Context, room string) (int, error) {
	var out struct {
		Participants []json.RawMessage `json:"participants"`
	}
	err := a.do(ctx, http.MethodGet, "/v1/rooms/"+url.PathEscape(room), a.adminKey, nil, http.StatusOK, &out)
	return len(out.Participants), err
}

// ready reports whether the server answers.
func (a *api) ready(ctx context.Context) bool {
	return a.do(ctx, http.MethodGet, "/v1/rooms", a.adminKey, nil, http.StatusOK, nil) == nil
}
