// transports.js — the four ways to drain a Vigil session outbox
// (docs/protocol.md, "Transports"). Each is a small class that
// signaling.js's Session drives through one interface:
//
//   new Transport(host)  host = {base, cursor(), deliver(ev), opened(), failed(why)}
//                        base is "/v1/sessions/{id}"; cursor() the last seq
//                        the session has delivered
//   t.name               'ws' | 'sse' | 'longpoll' | 'poll'
//   t.carriesMessages    true when client messages go over the transport
//                        itself (ws); otherwise the session POSTs them
//   t.start()            connect, resuming from host.cursor()
//   t.send(frame)        (ws) send one frame now; false if it cannot
//   t.nudge()            a POSTed message was applied: look for what it
//                        caused soon (short polling stops waiting)
//   t.stop()             stop for good; no callback follows
//
// host.opened() says the transport is attached (again). host.failed(why)
// says it has stopped by itself, and why:
//   'unavailable'  it never delivered anything (did not open, or closed
//                  before the first event): maybe it cannot work here
//   'dropped'      it worked, then broke: reconnect from the cursor
//   'gone'         the session is gone, or its cursor is refused
//                  (session_not_found, cursor_too_old, invalid_cursor)
//   'replaced'     another connection took the session over (ws 4000)
// host.deliver(ev) gets each event as the server sent it; the session
// de-duplicates by seq, so a transport that resumes from an older point
// (an EventSource's own reconnect) cannot deliver anything twice.

const CLOSE_REPLACED = 4000;
const CLOSE_INVALID_CURSOR = 4400;
const CLOSE_CURSOR_TOO_OLD = 4410;

const LONG_POLL_WAIT_S = 25; // under the server's 30 s cap
const SHORT_POLL_MS = 1000; // when the server gives no Retry-After

// Error codes that mean this session cannot be resumed any more.
const GONE_CODES = new Set(['session_not_found', 'cursor_too_old', 'invalid_cursor']);

function parseEvent(text) {
  try {
    const ev = JSON.parse(text);
    if (ev && typeof ev.type === 'string') return ev;
  } catch (err) {
    console.error('vigil: undecodable event', err);
  }
  return null;
}

// isCursorError tells an error about the cursor itself (sent without a
// seq, outside the outbox) from an error event about a client message.
function isCursorError(ev) {
  return ev.type === 'error' && typeof ev.seq !== 'number' && ev.data && GONE_CODES.has(ev.data.code);
}

// errorCode reads the stable code of an HTTP error reply ('' if none).
async function errorCode(res) {
  try {
    const body = await res.json();
    return (body && body.error && body.error.code) || '';
  } catch {
    return '';
  }
}

// retryAfterMs reads a Retry-After header in seconds.
function retryAfterMs(res, fallback) {
  const s = Number(res.headers.get('Retry-After'));
  return Number.isFinite(s) && s >= 0 && res.headers.has('Retry-After') ? s * 1000 : fallback;
}

// Base holds what every transport shares: the host and the stop flag.
class Base {
  constructor(host) {
    this.host = host;
    this.stopped = false;
  }

  send() { return false; }

  nudge() {}

  stop() { this.stopped = true; }

  // fail reports why the transport stopped, once, unless stopped first.
  fail(why) {
    if (this.stopped) return;
    this.stop();
    this.host.failed(why);
  }
}

// WebSocketTransport: GET {base}/ws?cursor=N, one event per frame, client
// messages on the same socket.
export class WebSocketTransport extends Base {
  name = 'ws';
  carriesMessages = true;

  start() {
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const url = `${scheme}://${location.host}${this.host.base}/ws?cursor=${this.host.cursor()}`;
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (err) {
      console.warn('vigil: cannot open a WebSocket:', err);
      setTimeout(() => this.fail('unavailable'), 0);
      return;
    }
    this.ws = ws;
    let got = false; // an event came on this socket
    ws.onopen = () => {
      if (!this.stopped) this.host.opened();
    };
    ws.onmessage = (msg) => {
      if (this.stopped) return;
      const ev = parseEvent(msg.data);
      if (!ev) return;
      got = true;
      if (isCursorError(ev)) return; // the close code that follows says it
      this.host.deliver(ev);
    };
    ws.onclose = (ev) => {
      if (this.stopped) return;
      this.ws = null;
      if (ev.code === CLOSE_CURSOR_TOO_OLD || ev.code === CLOSE_INVALID_CURSOR) {
        this.fail('gone');
      } else if (ev.code === CLOSE_REPLACED) {
        this.fail('replaced');
      } else if (!got) {
        this.#probe();
      } else {
        this.fail('dropped');
      }
    };
  }

  send(frame) {
    if (this.stopped || !this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(frame);
    return true;
  }

  stop() {
    super.stop();
    const ws = this.ws;
    this.ws = null;
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000, 'bye');
  }

  // probe asks over plain HTTP whether the session still exists after a
  // socket that delivered nothing: the same URL without the upgrade
  // answers 404 session_not_found when it is gone (and, unlike a poll,
  // does not attach to the session, so probing does not keep it alive).
  async #probe() {
    let why = 'unavailable';
    try {
      const res = await fetch(`${this.host.base}/ws`, { cache: 'no-store' });
      if (res.status === 404 && (await errorCode(res)) === 'session_not_found') why = 'gone';
    } catch {
      // The server is unreachable: not a reason to give the session up.
    }
    this.fail(why);
  }
}

// SSETransport: an EventSource on {base}/events?cursor=N. Each event is a
// plain message whose data is the whole {seq, type, data} object and whose
// id is its seq, so EventSource reconnects by itself with Last-Event-ID
// after a drop (the server says retry: 1000). An error about the cursor
// comes as a message without a seq. Client messages go by POST.
export class SSETransport extends Base {
  name = 'sse';
  carriesMessages = false;

  start() {
    if (typeof EventSource !== 'function') {
      setTimeout(() => this.fail('unavailable'), 0);
      return;
    }
    const es = new EventSource(this.#url());
    this.es = es;
    let got = false;
    es.onopen = () => {
      if (!this.stopped) this.host.opened();
    };
    es.onmessage = (msg) => {
      if (this.stopped) return;
      const ev = parseEvent(msg.data);
      if (!ev) return;
      got = true;
      if (isCursorError(ev)) {
        this.fail('gone');
        return;
      }
      this.host.deliver(ev);
    };
    es.onerror = () => {
      if (this.stopped) return;
      // CONNECTING: the stream dropped and EventSource is reconnecting by
      // itself, from the last id it saw. Leave it to it.
      if (es.readyState !== EventSource.CLOSED) return;
      // CLOSED: the server refused the stream (an HTTP error EventSource
      // does not show): find out which.
      this.#check(got);
    };
  }

  stop() {
    super.stop();
    if (this.es) this.es.close();
    this.es = null;
  }

  #url() {
    return `${this.host.base}/events?cursor=${this.host.cursor()}`;
  }

  // check asks the stream URL again to see the status EventSource hid.
  async #check(got) {
    let why = got ? 'dropped' : 'unavailable';
    const ctl = new AbortController();
    try {
      const res = await fetch(this.#url(), { cache: 'no-store', signal: ctl.signal });
      if (!res.ok && GONE_CODES.has(await errorCode(res))) why = 'gone';
    } catch {
      // unreachable: keep why
    }
    ctl.abort();
    this.fail(why);
  }
}

// PollTransport: GET {base}/poll?cursor=N in a loop. Long polling
// (wait > 0) asks the server to hold each request until an event comes;
// short polling asks at once, every second or as Retry-After says, and
// names the last empty reply's ETag in If-None-Match to get a bodiless
// 304 while nothing is new. A reply with closed: true is the last one.
// Client messages go by POST.
class PollTransport extends Base {
  carriesMessages = false;

  constructor(host, wait) {
    super(host);
    this.wait = wait;
    this.ctl = new AbortController();
    this.wake = null; // ends a short poll's pause early
  }

  start() {
    this.#loop();
  }

  stop() {
    super.stop();
    this.ctl.abort();
    if (this.wake) this.wake();
  }

  nudge() {
    if (this.wake) this.wake();
  }

  async #loop() {
    let got = false; // a poll has been answered
    let etag = null; // of the last empty reply
    let etagCursor = -1; // the cursor that reply was for
    while (!this.stopped) {
      const cursor = this.host.cursor();
      const wait = this.wait > 0 ? `&wait=${this.wait}` : '';
      const headers = { Accept: 'application/json' };
      if (etag && etagCursor === cursor) headers['If-None-Match'] = etag;
      let res;
      let body = null;
      try {
        res = await fetch(`${this.host.base}/poll?cursor=${cursor}${wait}`, {
          cache: 'no-store', headers, signal: this.ctl.signal,
        });
        if (res.status === 200) body = await res.json();
      } catch (err) {
        if (!this.stopped) console.warn(`vigil: ${this.name} failed:`, err);
        this.fail(got ? 'dropped' : 'unavailable');
        return;
      }
      if (this.stopped) return;
      let pause = 0;
      if (res.status === 200 || res.status === 304) {
        if (!got) {
          got = true;
          this.host.opened();
          if (this.stopped) return;
        }
        const events = (body && body.events) || [];
        for (const ev of events) {
          this.host.deliver(ev);
          if (this.stopped) return; // a left event ends the session
        }
        if (body && body.closed) {
          this.fail('gone'); // ended without a left we could see
          return;
        }
        if (res.status === 200 && events.length === 0) {
          etag = res.headers.get('ETag');
          etagCursor = cursor;
        }
        // Short polling pauses while nothing is new; with events there
        // may be more, so it asks again at once.
        if (this.wait === 0 && events.length === 0) pause = retryAfterMs(res, SHORT_POLL_MS);
      } else {
        const code = await errorCode(res);
        if (this.stopped) return;
        if (GONE_CODES.has(code)) {
          this.fail('gone');
          return;
        }
        if (res.status === 503 && got) {
          pause = retryAfterMs(res, SHORT_POLL_MS); // too_many_waiters: come back later
        } else {
          console.warn(`vigil: ${this.name} answered ${res.status} ${code}`);
          this.fail(got ? 'dropped' : 'unavailable');
          return;
        }
      }
      if (pause > 0) await this.#pause(pause);
    }
  }

  #pause(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      const self = this;
      function done() {
        clearTimeout(timer);
        if (self.wake === done) self.wake = null;
        resolve();
      }
      this.wake = done;
    });
  }
}

export class LongPollTransport extends PollTransport {
  name = 'longpoll';

  constructor(host) {
    super(host, LONG_POLL_WAIT_S);
  }
}

export class ShortPollTransport extends PollTransport {
  name = 'poll';

  constructor(host) {
    super(host, 0);
  }
}

// TRANSPORTS by name, in the order a client falls back through them.
export const TRANSPORTS = {
  ws: WebSocketTransport,
  sse: SSETransport,
  longpoll: LongPollTransport,
  poll: ShortPollTransport,
};

export const FALLBACK_ORDER = Object.freeze(Object.keys(TRANSPORTS));

// LABELS name each transport for people.
export const LABELS = {
  ws: 'WebSocket',
  sse: 'Server-Sent Events',
  longpoll: 'long polling',
  poll: 'short polling',
};
