// signaling.js — one Vigil session (docs/protocol.md), drained by a
// pluggable transport (transports.js).
//
// The Session owns everything that outlives a connection: the session id,
// the last seq delivered (the cursor every transport resumes from), the
// de-duplication of events by seq, and the queue of client messages. A
// transport only drains the outbox from that cursor: a WebSocket,
// Server-Sent Events, long polling or short polling. Over a WebSocket the
// messages go on the socket; otherwise each goes by POST .../messages, one
// at a time and in order (an answer must reach the server before its
// candidates), with an Idempotency-Key that a retry after a network
// failure reuses. A POST the server refuses comes back to the owner as an
// `error` event with `ref`, as it would on the WebSocket.
//
// Without a forced transport the session tries ws, then sse, longpoll and
// poll: one that cannot deliver the first event (it fails to open, closes
// before any event, or stays silent for PROOF_MS) gives way to the next,
// and the first that delivers one is kept for reconnects and new sessions
// for the life of the page. After a drop the transport reconnects with
// backoff (250 ms doubling to 5 s) from the last seq, well within the
// server's 15 s grace period. When the session is gone (404
// session_not_found, cursor_too_old, invalid_cursor), or its room moved
// to another node of a cluster (`left` with reason room_moved), it opens
// a new session and tells its owner to start over; the owner can ask for
// that too (restart).

import { api, ApiError } from './api.js';
import { TRANSPORTS, FALLBACK_ORDER } from './transports.js';

export { TRANSPORTS, LABELS } from './transports.js';

const BACKOFF_MIN_MS = 250;
const BACKOFF_MAX_MS = 5000;
// An untried transport must deliver the session's first event this soon
// (the server sends `joined` at once) or give way to the next one: a proxy
// may accept a WebSocket or an event stream and never pass anything on.
const PROOF_MS = 8000;

// Session errors that no retry will fix: the join token or the room is bad.
const FATAL_CODES = new Set([
  'invalid_request', 'unauthorized', 'invalid_token', 'token_expired',
  'forbidden', 'room_not_found', 'room_full', 'token_room_instance',
]);

// POST statuses worth sending the same message again for (with its key).
const RETRY_STATUSES = new Set([502, 503, 504]);

// randomKey makes an Idempotency-Key (crypto.randomUUID needs a secure
// context; getRandomValues does not).
function randomKey() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

export class Session {
  // room and token identify the join; transport forces one transport by
  // name (no fallback); handlers:
  //   onEvent(ev)        each outbox event {seq, type, data}, once, in order,
  //                      and {type: 'error', data: {code, message, ref}}
  //                      for a refused POST
  //   onRestart()        the old session is gone; a new one is being opened
  //   onStatus(text)     transport status for the page
  //   onTransport(name)  the transport now in use (or being tried)
  //   onFatal(err)       the session cannot be opened (an ApiError or other)
  constructor({ room, token, transport, onEvent, onRestart, onStatus, onTransport, onFatal }) {
    if (transport && !TRANSPORTS[transport]) {
      throw new Error(`unknown transport "${transport}" (use ${FALLBACK_ORDER.join(', ')})`);
    }
    this.room = room;
    this.token = token;
    this.onEvent = onEvent;
    this.onRestart = onRestart || (() => {});
    this.onStatus = onStatus || (() => {});
    this.onTransport = onTransport || (() => {});
    this.onFatal = onFatal || (() => {});
    this.forced = transport || null;
    this.order = this.forced ? [this.forced] : FALLBACK_ORDER;
    this.index = 0; // in order: the transport in use or being tried
    this.works = null; // the first transport that delivered an event
    this.tried = []; // every transport started, in order (for tests)
    this.conn = null; // the transport instance now
    this.sessionId = null;
    this.lastSeq = 0;
    this.queue = []; // messages not sent yet: {id, type, body, key}
    this.posting = false;
    this.nextId = 1;
    this.backoff = BACKOFF_MIN_MS;
    this.timer = null;
    this.proofTimer = null;
    this.restarting = false;
    this.ended = false; // a left event came, or close() was called
  }

  // transport names the transport in use, or being tried.
  get transport() {
    return this.order[this.index];
  }

  // start opens the session and its transport. It rejects only if the
  // first session cannot be opened (and then the session is over).
  async start() {
    await this.#openSession();
    this.#connect();
  }

  // send queues msg ({type, data}) with a fresh id, to go as soon as the
  // transport allows, and returns that id (it comes back as ref in an
  // error).
  send(msg) {
    const id = `m${this.nextId++}`;
    this.queue.push({ id, type: msg.type, body: JSON.stringify({ id, ...msg }), key: randomKey() });
    this.#flush();
    return id;
  }

  // sendNow sends msg at once if it can, skipping the queue (for pagehide).
  sendNow(msg) {
    const t = this.conn;
    if (!t || this.ended || !this.sessionId) return;
    const body = JSON.stringify({ id: `m${this.nextId++}`, ...msg });
    if (t.carriesMessages) {
      t.send(body);
      return;
    }
    fetch(`${this.#base()}/messages`, {
      method: 'POST',
      keepalive: true, // outlives the page
      headers: { 'Content-Type': 'application/json', 'Idempotency-Key': randomKey() },
      body,
    }).catch(() => {});
  }

  // restart abandons this session (the server replaces its participant
  // when the new one joins) and opens a new one, as after a lost session.
  restart() {
    if (this.ended) return;
    this.#restart();
  }

  // close stops the session for good: no more reconnects or events.
  close() {
    this.ended = true;
    this.#stopTransport();
    this.queue = [];
  }

  #base() {
    return `/v1/sessions/${encodeURIComponent(this.sessionId)}`;
  }

  async #openSession() {
    const res = await api(`/v1/rooms/${encodeURIComponent(this.room)}/sessions`, {
      method: 'POST',
      token: this.token,
      body: {},
    });
    this.sessionId = res.session_id;
    this.lastSeq = res.cursor || 0;
  }

  #stopTransport() {
    clearTimeout(this.timer);
    clearTimeout(this.proofTimer);
    const t = this.conn;
    this.conn = null;
    if (t) t.stop();
  }

  // connect starts the transport at this.index from the last seq.
  #connect() {
    if (this.ended) return;
    const name = this.order[this.index];
    const host = {
      base: this.#base(),
      cursor: () => this.lastSeq,
      deliver: (ev) => this.#deliver(t, ev),
      opened: () => this.#opened(t),
      failed: (why) => this.#failed(t, why),
    };
    const t = new TRANSPORTS[name](host);
    this.conn = t;
    this.tried.push(name);
    this.onTransport(name);
    this.onStatus(`connecting (${name})`);
    clearTimeout(this.proofTimer);
    if (!this.works && !this.forced) {
      this.proofTimer = setTimeout(() => {
        if (this.conn !== t || this.works) return;
        console.warn(`vigil: ${name} delivered nothing in ${PROOF_MS} ms`);
        t.stop();
        this.#failed(t, 'unavailable');
      }, PROOF_MS);
    }
    t.start();
    this.#flush(); // POSTs need no open transport
  }

  #opened(t) {
    if (t !== this.conn || this.ended) return;
    this.backoff = BACKOFF_MIN_MS;
    this.onStatus('connected');
    this.#flush();
  }

  // deliver passes each event on once and in order: a seq at or below
  // the last one delivered is a repeat (a transport resuming from an
  // older point) and is dropped.
  #deliver(t, ev) {
    if (t !== this.conn || this.ended) return;
    if (!this.works) {
      this.works = t.name; // remembered: reconnects and new sessions use it
      clearTimeout(this.proofTimer);
    }
    if (typeof ev.seq === 'number') {
      if (ev.seq <= this.lastSeq) return;
      this.lastSeq = ev.seq;
    }
    if (ev.type === 'left' && ev.data && ev.data.reason === 'room_moved') {
      // The room moved to another node of a cluster: a new session with
      // the same token finds it there (docs/cluster.md).
      this.#restart();
      return;
    }
    if (ev.type === 'left') this.ended = true;
    this.onEvent(ev);
    if (this.ended) this.close();
  }

  #failed(t, why) {
    if (t !== this.conn || this.ended) return;
    this.#stopTransport();
    switch (why) {
      case 'gone':
        this.#restart();
        return;
      case 'replaced':
        this.ended = true;
        this.onFatal(new Error('This session was taken over by another connection.'));
        return;
      case 'unavailable':
        if (!this.works && this.index + 1 < this.order.length) {
          // Fall back at once: the session is waiting for a transport.
          this.index++;
          this.onStatus(`${t.name} unavailable, trying ${this.transport}`);
          this.#connect();
          return;
        }
        // Nothing has worked yet (or this is the one that did): go round
        // again from the first, after a pause.
        if (!this.works) this.index = 0;
        this.#reconnectLater();
        return;
      default: // dropped
        this.#reconnectLater();
    }
  }

  #reconnectLater() {
    if (this.ended) return;
    const delay = this.backoff;
    this.backoff = Math.min(this.backoff * 2, BACKOFF_MAX_MS);
    this.onStatus(`reconnecting in ${delay} ms`);
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.#connect(), delay);
  }

  // flush sends what is queued the way the transport wants it.
  #flush() {
    const t = this.conn;
    if (this.ended || !t || this.queue.length === 0) return;
    if (!t.carriesMessages) {
      this.#pump();
      return;
    }
    // A POST from an earlier transport is still out: the queue waits for
    // it, and the pump flushes again when it is done.
    if (this.posting) return;
    while (this.queue.length > 0 && t.send(this.queue[0].body)) this.queue.shift();
  }

  // pump POSTs queued messages one at a time, in order.
  async #pump() {
    if (this.posting) return;
    this.posting = true;
    let backoff = BACKOFF_MIN_MS;
    try {
      while (!this.ended && this.conn && !this.conn.carriesMessages && this.queue.length > 0) {
        const msg = this.queue[0];
        const sid = this.sessionId;
        const reply = await this.#post(sid, msg);
        if (this.ended) return;
        // A new session meanwhile: its queue is another one.
        if (sid !== this.sessionId || this.queue[0] !== msg) continue;
        if (reply.retry) {
          // Not known to be applied: send it again, same key, after a pause.
          this.onStatus(`sending failed, retrying in ${backoff} ms`);
          await sleep(backoff);
          backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
          continue;
        }
        backoff = BACKOFF_MIN_MS;
        if (reply.code === 'session_not_found') {
          this.#lost(sid);
          return;
        }
        this.queue.shift();
        if (reply.ok) {
          if (msg.type !== 'candidate' && this.conn) this.conn.nudge();
        } else {
          this.onEvent({ type: 'error', data: { code: reply.code, message: reply.message, ref: msg.id } });
        }
      }
    } finally {
      this.posting = false;
    }
    // A transport that carries messages itself may have taken over.
    if (this.conn && this.conn.carriesMessages) this.#flush();
  }

  // post sends one message: {ok}, {retry} when it may not have arrived,
  // or the refusal's {code, message}.
  async #post(sid, msg) {
    let res;
    let text;
    try {
      res = await fetch(`/v1/sessions/${encodeURIComponent(sid)}/messages`, {
        method: 'POST',
        cache: 'no-store',
        headers: {
          'Content-Type': 'application/json',
          Accept: 'application/json',
          'Idempotency-Key': msg.key,
        },
        body: msg.body,
      });
      text = await res.text();
    } catch (err) {
      console.warn('vigil: POST failed:', err);
      return { retry: true };
    }
    if (res.ok) return { ok: true };
    if (RETRY_STATUSES.has(res.status)) return { retry: true };
    let code = `http_${res.status}`;
    let message = text.trim() || res.statusText;
    try {
      const err = JSON.parse(text).error;
      if (err && err.code) code = err.code;
      if (err && err.message) message = err.message;
    } catch { /* not our JSON: keep the status */ }
    return { code, message };
  }

  // lost restarts if session sid is still the current one.
  #lost(sid) {
    if (sid === this.sessionId) this.#restart();
  }

  // restart drops the old session and opens a new one, retrying with
  // backoff while the server is unreachable or unavailable.
  async #restart() {
    if (this.ended || this.restarting) return;
    this.restarting = true;
    try {
      this.#stopTransport();
      this.queue = [];
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
    } finally {
      this.restarting = false;
    }
  }
}
