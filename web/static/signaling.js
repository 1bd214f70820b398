// signaling.js — one Vigil session over the WebSocket transport
// (docs/protocol.md). It opens a session with a join token, drains the
// session outbox over a WebSocket from a cursor, and delivers each event
// once and in order. After an unexpected close it reconnects with backoff
// (250 ms doubling to 5 s) from the last seq it saw; when the session is
// gone (close 4410 cursor_too_old, 4400 invalid_cursor, or the session
// answers 404) it opens a new session and tells its owner to start over;
// the owner can ask for that too (restart).
// Messages sent while the socket is down wait in a queue for the next open.

import { api, ApiError } from './api.js';

const BACKOFF_MIN_MS = 250;
const BACKOFF_MAX_MS = 5000;

const CLOSE_REPLACED = 4000;
const CLOSE_INVALID_CURSOR = 4400;
const CLOSE_CURSOR_TOO_OLD = 4410;

// Session errors that no retry will fix: the join token or the room is bad.
const FATAL_CODES = new Set([
  'invalid_request', 'unauthorized', 'invalid_token', 'token_expired',
  'forbidden', 'room_not_found', 'room_full',
]);

export class Session {
  // room and token identify the join; handlers:
  //   onEvent(ev)        each outbox event {seq, type, data}, once, in order
  //   onRestart()        the old session is gone; a new one is being opened
  //   onStatus(text)     transport status for the page
  //   onFatal(err)       the session cannot be opened (an ApiError or other)
  constructor({ room, token, onEvent, onRestart, onStatus, onFatal }) {
    this.room = room;
    this.token = token;
    this.onEvent = onEvent;
    this.onRestart = onRestart || (() => {});
    this.onStatus = onStatus || (() => {});
    this.onFatal = onFatal || (() => {});
    this.sessionId = null;
    this.wsUrl = null;
    this.lastSeq = 0;
    this.ws = null;
    this.pending = [];
    this.nextId = 1;
    this.backoff = BACKOFF_MIN_MS;
    this.timer = null;
    this.ended = false; // a left event came, or close() was called
  }

  // start opens the session and its socket. It rejects only if the first
  // session cannot be opened (and then the session is over).
  async start() {
    await this.#openSession();
    this.#connect();
  }

  // send sends msg ({type, data}) with a fresh id, now or when the socket
  // next opens, and returns that id (it comes back as ref in an error).
  send(msg) {
    const id = `m${this.nextId++}`;
    const frame = JSON.stringify({ id, ...msg });
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(frame);
    } else {
      this.pending.push(frame);
    }
    return id;
  }

  // sendNow sends msg only if the socket is open now (for pagehide).
  sendNow(msg) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify({ id: `m${this.nextId++}`, ...msg }));
    }
  }

  // restart abandons this session (the server replaces its participant
  // when the new one joins) and opens a new one, as after a lost session.
  restart() {
    if (this.ended) return;
    clearTimeout(this.timer);
    const ws = this.ws;
    this.ws = null;
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000, 'restart');
    this.#restart();
  }

  // close stops the session for good: no more reconnects or events.
  close() {
    this.ended = true;
    clearTimeout(this.timer);
    this.pending = [];
    const ws = this.ws;
    this.ws = null;
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000, 'bye');
  }

  async #openSession() {
    const res = await api(`/v1/rooms/${encodeURIComponent(this.room)}/sessions`, {
      method: 'POST',
      token: this.token,
      body: {},
    });
    this.sessionId = res.session_id;
    this.wsUrl = res.ws_url;
    this.lastSeq = res.cursor || 0;
  }

  #connect() {
    if (this.ended) return;
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const sep = this.wsUrl.includes('?') ? '&' : '?';
    const url = `${scheme}://${location.host}${this.wsUrl}${sep}cursor=${this.lastSeq}`;
    const ws = new WebSocket(url);
    let opened = false;
    this.ws = ws;
    ws.onopen = () => {
      if (ws !== this.ws) return;
      opened = true;
      this.backoff = BACKOFF_MIN_MS;
      this.onStatus('connected');
      const queued = this.pending;
      this.pending = [];
      for (const frame of queued) ws.send(frame);
    };
    ws.onmessage = (msg) => {
      if (ws !== this.ws || this.ended) return;
      let ev;
      try {
        ev = JSON.parse(msg.data);
      } catch (err) {
        console.error('vigil: undecodable frame', err);
        return;
      }
      if (typeof ev.seq === 'number') {
        if (ev.seq <= this.lastSeq) return; // already delivered
        this.lastSeq = ev.seq;
      }
      if (ev.type === 'left') {
        this.ended = true;
      }
      this.onEvent(ev);
      if (this.ended) this.close();
    };
    ws.onclose = (ev) => {
      if (ws !== this.ws || this.ended) return;
      this.ws = null;
      if (ev.code === CLOSE_CURSOR_TOO_OLD || ev.code === CLOSE_INVALID_CURSOR) {
        this.#restart();
      } else if (ev.code === CLOSE_REPLACED) {
        this.ended = true;
        this.onFatal(new Error('This session was taken over by another connection.'));
      } else if (!opened) {
        this.#probe();
      } else {
        this.#reconnectLater();
      }
    };
  }

  // probe asks over plain HTTP whether the session still exists after a
  // socket that could not open: a 404 means it is gone.
  async #probe() {
    let gone = false;
    try {
      const res = await fetch(this.wsUrl, { cache: 'no-store' });
      gone = res.status === 404;
    } catch {
      gone = false; // the server is unreachable: keep trying
    }
    if (this.ended) return;
    if (gone) this.#restart();
    else this.#reconnectLater();
  }

  #reconnectLater() {
    if (this.ended) return;
    const delay = this.backoff;
    this.backoff = Math.min(this.backoff * 2, BACKOFF_MAX_MS);
    this.onStatus(`reconnecting in ${delay} ms`);
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.#connect(), delay);
  }

  // restart drops the old session and opens a new one, retrying with
  // backoff while the server is unreachable or unavailable.
  async #restart() {
    if (this.ended) return;
    this.pending = [];
    this.sessionId = null;
    this.lastSeq = 0;
    this.onStatus('starting a new session');
    this.onRestart();
    for (;;) {
      try {
        await this.#openSession();
        if (this.ended) return;
        this.#connect();
        return;
      } catch (err) {
        if (this.ended) return;
        if (err instanceof ApiError && FATAL_CODES.has(err.code)) {
          this.ended = true;
          this.onFatal(err);
          return;
        }
        const delay = this.backoff;
        this.backoff = Math.min(this.backoff * 2, BACKOFF_MAX_MS);
        this.onStatus(`new session failed, retrying in ${delay} ms`);
        await new Promise((resolve) => { this.timer = setTimeout(resolve, delay); });
      }
    }
  }
}
