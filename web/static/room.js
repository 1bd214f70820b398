// room.js — the room page, /room/{room}[?transport=ws|sse|longpoll|poll]#token=<join token>.
//
// Joins with the token (signaling.js): over a WebSocket, falling back to
// Server-Sent Events, long polling and short polling, or over the one
// transport ?transport= forces (for tests, and to show the patterns); the
// transport in use is shown under the status line. Then it keeps ONE
// RTCPeerConnection to the server. It publishes camera and microphone
// when the role may, with sendonly transceivers, declaring each mid's
// source in its offers. It negotiates with the W3C "perfect
// negotiation" pattern as the POLITE peer: a server offer that crosses
// ours wins, ours is rolled back and offered again once the server's is
// answered (the server refuses a crossing offer with a `glare` error).
// Events are applied strictly one after another through a promise chain.
// Each remote track is shown in a <video>/<audio> element labelled with
// data-identity and data-source, from the mid -> track map that offers
// and answers carry.
//
// window.vigil is a debug handle for tests: pc, state, identity, role,
// events, seqs (the seq of each event delivered, in order), transport
// (the one in use), transports (every one tried, in order), received
// (every remote track the page got, labelled) and stats().
//
// A proctoring page (a join token with the role candidate or proctor)
// also loads a *mode* module, candidate.js or proctor.js, before it
// joins: it runs the candidate's pre-flight check, publishes what the
// role publishes, places remote media and handles the proctoring events
// through the hooks below (see createMode), and adds its own fields to
// window.vigil. Conference and broadcast pages load no mode.

import { Session, TRANSPORTS, LABELS } from './signaling.js';
import { ApiError, describe } from './api.js';
import { tokenClaims } from './proctoring-common.js';

const $ = (id) => document.getElementById(id);

const LEFT_REASONS = {
  left: 'You left the room.',
  replaced: 'You joined from another tab or device; this page was replaced.',
  connection_failed: 'The media connection failed.',
  room_closed: 'The room was closed.',
  server_shutdown: 'The server shut down.',
  timeout: 'You were disconnected for too long.',
  kicked: 'You were removed from the room.',
  token_revoked: 'Your join link was revoked.',
  rejected: 'A proctor did not admit you to the exam.',
  exam_ended: 'Your exam has ended.',
};

const JOIN_ERRORS = {
  token_expired: 'This join link has expired. Ask for a new one.',
  invalid_token: 'This join link is not valid.',
  forbidden: 'This join link is not for this room.',
  token_room_instance: 'This join link is for an earlier room of this name. Ask for a new one.',
  room_not_found: 'This room does not exist (any more).',
  room_full: 'The room is full.',
  unauthorized: 'This join link is not valid.',
};

// Page state. Everything that belongs to one session is reset by
// resetSession(); gen tells stale async work from the current session's.
const page = {
  room: roomFromPath(),
  token: new URLSearchParams(location.hash.slice(1)).get('token'),
  transport: new URLSearchParams(location.search).get('transport'),
  state: 'joining',
  identity: null,
  role: null,
  kind: null,
  events: [],
  seqs: [],
  session: null,
};

let gen = 0;
let pc = null;
let rtcConfig = {};
let chain = Promise.resolve();
let makingOffer = false;
let publishRefused = false; // the server refused what we publish: stop offering
let lastOfferId = null;
let holdOffersUntil = 0; // no offer before this (performance.now()) after a collision
let reofferTimer = 0;
const COLLISION_HOLD_MS = 300;
let offeredMids = new Set(); // the mids our last offer sent on
let refused = new WeakSet(); // transceivers the server answered without receiving
let localStream = null;
const localSources = new Map(); // MediaStreamTrack -> 'camera' | 'microphone' | 'screen'
const localInits = new Map(); // MediaStreamTrack -> its addTransceiver init (mode tracks)
let mode = null; // the proctoring mode (candidate.js, proctor.js), if any
const trackMap = new Map(); // mid -> {id, identity, source, kind, codec}
const media = new Map(); // mid -> {el, tile, track}
const roster = new Map(); // identity -> {identity, role, tracks}

window.vigil = {
  get pc() { return pc; },
  get state() { return page.state; },
  get identity() { return page.identity; },
  get role() { return page.role; },
  get room() { return page.room; },
  get transport() { return page.session ? page.session.transport : null; },
  get transports() { return page.session ? [...page.session.tried] : []; },
  events: page.events,
  seqs: page.seqs,
  received: [], // every remote track this page got: {mid, kind, identity, source}
  stats,
};

// roomApi is what a mode module may use of the page. A mode is an object
// with optional hooks, each called in the page's event order:
//   debug            property descriptors added to window.vigil
//   beforeJoin()     resolves when the page may join (a pre-flight)
//   publish(permitted, gen)  adds the role's tracks (addLocalTrack)
//   placeVideo(el, info, mid)  puts a remote <video> in place; true if it did
//   onEvent(ev)      every server event, after the page's own handling
//   onServerError(data)  true if the refusal was the mode's to handle
const roomApi = {
  page,
  get gen() { return gen; },
  send: (msg) => page.session.send(msg),
  setStatus,
  showError,
  stats,
  addLocalTrack,
  replaceLocalTrack,
};

function roomFromPath() {
  const parts = location.pathname.split('/').filter(Boolean);
  return parts[0] === 'room' && parts[1] ? decodeURIComponent(parts[1]) : '';
}

// ---------------------------------------------------------------- status

function setStatus(text) {
  $('status').textContent = text;
}

function showError(text) {
  const el = $('error');
  el.textContent = text;
  el.hidden = false;
}

function showTransport(name) {
  const el = $('transport');
  el.dataset.transport = name;
  const how = page.transport ? 'forced by ?transport=' : 'falls back from WebSocket';
  el.textContent = `Signaling over ${LABELS[name] || name} (${name}; ${how}).`;
}

function clearError() {
  $('error').hidden = true;
  $('error').textContent = '';
}

function fail(text) {
  page.state = 'error';
  showError(text);
  setStatus('Not connected.');
  $('leave').disabled = true;
  teardown();
  if (page.session) page.session.close();
}

function joinError(err) {
  if (err instanceof ApiError) {
    const plain = JOIN_ERRORS[err.code] || 'The server refused to let you join.';
    return `${plain} (${err.code}: ${err.message})`;
  }
  return describe(err);
}

function connectionStatus() {
  if (page.state !== 'joined') return;
  const where = `${page.identity} (${page.role}) in ${page.room}`;
  const conn = pc ? pc.connectionState : 'new';
  const note = {
    new: 'waiting for media',
    connecting: 'connecting media…',
    connected: 'media connected',
    disconnected: 'media interrupted…',
    failed: 'media connection failed',
    closed: 'media closed',
  }[conn] || conn;
  setStatus(`Joined as ${where} — ${note}.`);
}

// ---------------------------------------------------------------- events

// enqueue runs fn after every event queued before it; work queued for an
// older session is skipped.
function enqueue(fn) {
  const mine = gen;
  chain = chain
    .then(() => (mine === gen ? fn() : undefined))
    .catch((err) => {
      if (mine !== gen) return;
      console.error('vigil:', err);
      if (err instanceof NegotiationError) recoverNegotiation(err);
      else showError(describe(err));
    });
  return chain;
}

// NegotiationError wraps a failure to apply or create a description. The
// connection cannot be trusted after one (the server still waits for an
// answer, or Chromium kept state from a rolled-back offer), so the page
// starts over with a new session.
class NegotiationError extends Error {
  constructor(step, cause) {
    super(`${step}: ${(cause && cause.message) || cause}`);
    this.name = 'NegotiationError';
  }
}

// negotiationStep runs one WebRTC negotiation call, turning its failure
// into a NegotiationError.
async function negotiationStep(step, fn) {
  try {
    return await fn();
  } catch (err) {
    throw new NegotiationError(step, err);
  }
}

const MAX_RECOVERIES = 3;
const RECOVERY_WINDOW_MS = 60000;
const recoveries = [];

function recoverNegotiation(err) {
  const now = Date.now();
  while (recoveries.length > 0 && now - recoveries[0] > RECOVERY_WINDOW_MS) recoveries.shift();
  if (recoveries.length >= MAX_RECOVERIES) {
    showError(`The media connection could not be negotiated: ${err.message}`);
    return;
  }
  recoveries.push(now);
  page.session.restart();
}

function onEvent(ev) {
  page.events.push(ev.type);
  if (typeof ev.seq === 'number') page.seqs.push(ev.seq);
  enqueue(() => handle(ev));
}

async function handle(ev) {
  await handleCore(ev);
  if (mode && mode.onEvent) await mode.onEvent(ev);
}

async function handleCore(ev) {
  const data = ev.data || {};
  switch (ev.type) {
    case 'joined': return onJoined(data);
    case 'offer': return onOffer(data);
    case 'answer': return onAnswer(data);
    case 'participant_joined': return rosterAdd(data.participant);
    case 'participant_left': return onParticipantLeft(data);
    case 'track_published': return rosterTrack(data.track, true);
    case 'track_unpublished': return onTrackUnpublished(data.track);
    case 'error': return onServerError(data);
    case 'left': return onLeft(data);
    default: return undefined; // newer server: ignore what we do not know
  }
}

async function onJoined(data) {
  page.state = 'joined';
  page.identity = data.identity;
  page.role = data.role;
  page.kind = data.kind;
  clearError();
  $('room-name').textContent = data.room || page.room;
  $('who').textContent = `${data.identity} · ${data.role} · ${data.kind} room`;
  document.title = `${data.room || page.room} — Vigil`;
  $('leave').disabled = false;

  roster.clear();
  for (const p of data.participants || []) rosterAdd(p, false);
  if (!roster.has(data.identity)) {
    rosterAdd({ identity: data.identity, role: data.role, tracks: [] }, false);
  }
  renderRoster();

  rtcConfig = { iceServers: iceServers(data.ice_servers) };
  pc = newPeerConnection();
  connectionStatus();

  const permitted = (data.permissions && data.permissions.publish) || [];
  if (mode && mode.publish) {
    await mode.publish(permitted, gen);
    return;
  }
  const publish = permitted.filter((s) => s === 'camera' || s === 'microphone');
  if (publish.length > 0) await startPublishing(publish, gen);
}

// addLocalTrack sends track as source on the connection with init (a
// mode's tracks: simulcast encodings, a screen); negotiationneeded then
// makes the offer. The mode owns the track: teardown does not stop it.
function addLocalTrack(track, source, init) {
  if (!pc) return null;
  localSources.set(track, source);
  localInits.set(track, init);
  return pc.addTransceiver(track, init);
}

// replaceLocalTrack swaps the track a sender sends (a screen shared
// again) without renegotiating.
async function replaceLocalTrack(oldTrack, newTrack) {
  if (!pc) return false;
  const t = pc.getTransceivers().find((x) => x.sender.track === oldTrack);
  const source = localSources.get(oldTrack);
  const init = localInits.get(oldTrack);
  localSources.delete(oldTrack);
  localInits.delete(oldTrack);
  localSources.set(newTrack, source);
  localInits.set(newTrack, init);
  if (!t) return false;
  await t.sender.replaceTrack(newTrack);
  return true;
}

// newPeerConnection makes the session's connection, with its handlers
// bound to it alone.
function newPeerConnection() {
  const conn = new RTCPeerConnection(rtcConfig);
  const mine = gen;
  const current = () => mine === gen && conn === pc;
  conn.onicecandidate = ({ candidate }) => {
    if (!current() || !candidate || !candidate.candidate) return;
    page.session.send({ type: 'candidate', data: candidate.toJSON() });
  };
  conn.onnegotiationneeded = () => {
    if (current()) enqueue(negotiate);
  };
  conn.ontrack = (ev) => {
    if (current()) onTrack(ev);
  };
  conn.onconnectionstatechange = () => {
    if (current()) connectionStatus();
  };
  return conn;
}

// closePeerConnection closes pc without its handlers firing.
function closePeerConnection() {
  if (!pc) return;
  pc.onicecandidate = pc.onnegotiationneeded = pc.ontrack = pc.onconnectionstatechange = null;
  pc.close();
  pc = null;
}

// replacePeerConnection starts a fresh connection with the same local
// tracks. It is used when our very first offer crosses the server's: the
// server never applied it, so the server's offer can be answered from a
// new connection, which avoids a Chromium bug: a rolled-back first offer
// keeps its RTP header extension ids reserved, the server's offer gives
// some of those ids other meanings, and the next offer then fails ("A
// BUNDLE group contains a codec collision for header extension id").
function replacePeerConnection() {
  closePeerConnection();
  offeredMids = new Set();
  refused = new WeakSet();
  pc = newPeerConnection();
  if (localStream) {
    for (const track of localStream.getTracks()) {
      pc.addTransceiver(track, { direction: 'sendonly', streams: [localStream] });
    }
  }
  for (const [track, init] of localInits) pc.addTransceiver(track, init);
  connectionStatus();
}

function iceServers(list) {
  return (list || []).map((s) => {
    const out = { urls: s.urls };
    if (s.username) out.username = s.username;
    if (s.credential) out.credential = s.credential;
    return out;
  });
}

// startPublishing captures what the role may publish and adds it to the
// connection; negotiationneeded then makes the offer.
async function startPublishing(sources, mine) {
  const wantVideo = sources.includes('camera');
  const wantAudio = sources.includes('microphone');
  let stream = null;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: wantVideo, audio: wantAudio });
  } catch (err) {
    // Try each device alone: a missing microphone should not cost the camera.
    const parts = [];
    for (const c of [wantVideo && { video: true }, wantAudio && { audio: true }]) {
      if (!c) continue;
      try {
        parts.push(await navigator.mediaDevices.getUserMedia(c));
      } catch { /* reported below if nothing works */ }
    }
    if (parts.length === 0) {
      showError(`Cannot use your camera or microphone: ${describe(err)}. You can still watch and listen.`);
      return;
    }
    stream = new MediaStream(parts.flatMap((s) => s.getTracks()));
  }
  if (mine !== gen || !pc) {
    stream.getTracks().forEach((t) => t.stop());
    return;
  }
  localStream = stream;
  for (const track of stream.getTracks()) {
    localSources.set(track, track.kind === 'video' ? 'camera' : 'microphone');
    pc.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
  }
  if (stream.getVideoTracks().length > 0) {
    $('local-video').srcObject = new MediaStream(stream.getVideoTracks());
    $('local-caption').textContent = `${page.identity} (you)`;
    $('local-section').hidden = false;
  }
}

// needsOffer reports whether something we send is not negotiated yet.
function needsOffer() {
  if (!pc || publishRefused) return false;
  return pc.getTransceivers().some((t) => {
    if (t.currentDirection === 'stopped' || !t.sender.track || refused.has(t)) return false;
    if (!(t.direction === 'sendonly' || t.direction === 'sendrecv')) return false;
    const cur = t.currentDirection;
    return cur !== 'sendonly' && cur !== 'sendrecv';
  });
}

// negotiate sends an offer if something we send is not negotiated yet and
// the connection is stable. It runs after every applied offer, answer and
// glare, so an offer that was rolled back or refused is made again.
async function negotiate() {
  if (!pc || pc.signalingState === 'closed' || !needsOffer()) return;
  // Not now: the exchange under way calls negotiate again when it ends.
  if (makingOffer || pc.signalingState !== 'stable') return;
  // Right after a collision the server often has more to offer (it offers
  // what changed meanwhile as soon as it has our answer): let that come
  // first rather than cross it again.
  const wait = holdOffersUntil - performance.now();
  if (wait > 0) {
    if (!reofferTimer) {
      const mine = gen;
      reofferTimer = setTimeout(() => {
        reofferTimer = 0;
        if (mine === gen) enqueue(negotiate);
      }, wait);
    }
    return;
  }
  makingOffer = true;
  try {
    await negotiationStep('create offer', () => pc.setLocalDescription());
    const sources = {};
    for (const t of pc.getTransceivers()) {
      const src = t.sender.track && localSources.get(t.sender.track);
      if (t.mid != null && src && (t.direction === 'sendonly' || t.direction === 'sendrecv')) {
        sources[t.mid] = src;
      }
    }
    offeredMids = new Set(Object.keys(sources));
    lastOfferId = page.session.send({
      type: 'offer',
      data: { sdp: pc.localDescription.sdp, sources },
    });
  } finally {
    makingOffer = false;
  }
}

function setTrackMap(tracks) {
  trackMap.clear();
  for (const [mid, info] of Object.entries(tracks || {})) trackMap.set(mid, info);
}

async function onOffer(data) {
  if (!pc) return;
  // Set before applying the offer: ontrack fires inside
  // setRemoteDescription and labels what it gets from this map.
  setTrackMap(data.tracks);
  const collision = makingOffer || pc.signalingState !== 'stable';
  if (collision) {
    // We are polite: drop our offer, answer theirs, offer again after.
    holdOffersUntil = performance.now() + COLLISION_HOLD_MS;
    if (pc.signalingState === 'have-local-offer' && !pc.remoteDescription) {
      replacePeerConnection();
    } else if (pc.signalingState === 'have-local-offer') {
      await negotiationStep('roll back', () => pc.setLocalDescription({ type: 'rollback' }));
    }
  }
  await negotiationStep('apply server offer', () => pc.setRemoteDescription({ type: 'offer', sdp: data.sdp }));
  await negotiationStep('create answer', () => pc.setLocalDescription());
  page.session.send({ type: 'answer', data: { sdp: pc.localDescription.sdp } });
  pruneMedia();
  // Offer what is still unsent: a rolled-back offer, or transceivers
  // added while this exchange was under way.
  await negotiate();
}

async function onAnswer(data) {
  if (!pc || pc.signalingState !== 'have-local-offer') return;
  if (data.tracks) setTrackMap(data.tracks);
  await negotiationStep('apply server answer', () => pc.setRemoteDescription({ type: 'answer', sdp: data.sdp }));
  // A sending m-line the server answered without receiving is not offered
  // again (that would loop); say so.
  for (const t of pc.getTransceivers()) {
    const cur = t.currentDirection;
    if (offeredMids.has(t.mid) && cur !== 'sendonly' && cur !== 'sendrecv') {
      refused.add(t);
      showError(`The server did not accept your ${localSources.get(t.sender.track) || 'media'}.`);
    }
  }
  pruneMedia();
  await negotiate();
}

async function onServerError(data) {
  const code = data.code || 'error';
  if (mode && mode.onServerError && mode.onServerError(data)) return;
  if (code === 'glare') {
    // The server refused our crossing offer; its own offer came first and
    // has been answered. Offer again if something is still not sent.
    await negotiate();
    return;
  }
  const aboutOffer = data.ref && data.ref === lastOfferId;
  if (aboutOffer && pc && pc.signalingState === 'have-local-offer') {
    await pc.setLocalDescription({ type: 'rollback' });
    if (code === 'forbidden' || code === 'invalid_sdp') publishRefused = true;
  }
  showError(`The server refused a request: ${data.message || code} (${code})`);
}

function onLeft(data) {
  const reason = data.reason || 'left';
  page.state = 'left';
  teardown();
  $('leave').disabled = true;
  const text = LEFT_REASONS[reason] || `You are no longer in the room (${reason}).`;
  setStatus(data.message ? `${text} ${data.message}` : text);
  $('rejoin').hidden = false;
  for (const li of $('roster').children) li.classList.add('gone');
}

// ---------------------------------------------------------------- media

function onTrack(ev) {
  const mid = ev.transceiver && ev.transceiver.mid;
  if (mid == null) return;
  const track = ev.track;
  const info = trackMap.get(mid) || {
    identity: 'unknown',
    source: track.kind === 'audio' ? 'microphone' : 'camera',
  };
  window.vigil.received.push({ mid, kind: track.kind, identity: info.identity, source: info.source });
  removeMedia(mid);
  let el;
  let tile = null;
  if (track.kind === 'video') {
    el = document.createElement('video');
    el.autoplay = true;
    el.playsInline = true;
    el.muted = true; // sound comes through the <audio> element
    el.setAttribute('playsinline', '');
    if (!(mode && mode.placeVideo && mode.placeVideo(el, info, mid))) {
      tile = document.createElement('figure');
      tile.className = 'tile';
      tile.dataset.mid = mid;
      const caption = document.createElement('figcaption');
      caption.textContent = info.source === 'camera' ? info.identity : `${info.identity} · ${info.source}`;
      tile.append(el, caption);
      $('tiles').append(tile);
    }
  } else {
    el = document.createElement('audio');
    el.autoplay = true;
    $('audio').append(el);
  }
  el.dataset.identity = info.identity;
  el.dataset.source = info.source;
  el.dataset.mid = mid;
  if (info.id) el.dataset.trackId = info.id;
  el.srcObject = new MediaStream([track]);
  const played = el.play();
  if (played && track.kind === 'audio') {
    played.catch(() => { $('sound').hidden = false; });
  } else if (played) {
    played.catch(() => {});
  }
  media.set(mid, { el, tile, track });
  track.addEventListener('ended', () => {
    const m = media.get(mid);
    if (m && m.track === track) removeMedia(mid);
  });
  updateEmpty();
}

function removeMedia(mid) {
  const m = media.get(mid);
  if (!m) return;
  media.delete(mid);
  m.el.srcObject = null;
  (m.tile || m.el).remove();
  updateEmpty();
}

// pruneMedia removes what the server no longer sends after a description
// is applied: a mid gone from the track map, or an m-line that does not
// receive any more.
function pruneMedia() {
  if (!pc) return;
  const receiving = new Set();
  for (const t of pc.getTransceivers()) {
    const cur = t.currentDirection;
    if (t.mid != null && (cur === 'recvonly' || cur === 'sendrecv')) receiving.add(t.mid);
  }
  for (const mid of [...media.keys()]) {
    if (!trackMap.has(mid) || !receiving.has(mid)) removeMedia(mid);
  }
}

function onTrackUnpublished(track) {
  if (!track) return;
  for (const [mid, info] of trackMap) {
    if (info.id === track.id) {
      removeMedia(mid);
      trackMap.delete(mid);
    }
  }
  rosterTrack(track, false);
}

function onParticipantLeft(data) {
  for (const [mid, m] of [...media]) {
    if (m.el.dataset.identity === data.identity) removeMedia(mid);
  }
  roster.delete(data.identity);
  renderRoster();
}

function updateEmpty() {
  $('empty').hidden = $('tiles').children.length > 0;
}

$('sound').addEventListener('click', () => {
  for (const el of $('audio').querySelectorAll('audio')) el.play().catch(() => {});
  $('sound').hidden = true;
});

// ---------------------------------------------------------------- roster

function rosterAdd(p, render = true) {
  if (!p || !p.identity) return;
  roster.set(p.identity, { identity: p.identity, role: p.role, tracks: [...(p.tracks || [])] });
  if (render) renderRoster();
}

function rosterTrack(track, published) {
  if (!track) return;
  const p = roster.get(track.identity);
  if (!p) return;
  p.tracks = p.tracks.filter((t) => t.id !== track.id);
  if (published) p.tracks.push(track);
  renderRoster();
}

function renderRoster() {
  const ul = $('roster');
  const items = [...roster.values()].sort((a, b) => {
    if (a.identity === page.identity) return -1;
    if (b.identity === page.identity) return 1;
    return a.identity.localeCompare(b.identity);
  });
  ul.replaceChildren(...items.map((p) => {
    const li = document.createElement('li');
    li.dataset.identity = p.identity;
    const name = document.createElement('span');
    name.className = 'name';
    name.textContent = p.identity;
    li.append(name);
    if (p.identity === page.identity) {
      li.classList.add('self');
      const you = document.createElement('span');
      you.className = 'you';
      you.textContent = '(you)';
      li.append(' ', you);
    }
    const role = document.createElement('span');
    role.className = 'role';
    role.textContent = p.role || '';
    li.append(role);
    const sources = [...new Set(p.tracks.map((t) => t.source))].sort();
    if (sources.length > 0) {
      const s = document.createElement('span');
      s.className = 'sources';
      s.textContent = sources.join(', ');
      li.append(s);
    }
    return li;
  }));
}

// ---------------------------------------------------------------- lifecycle

// teardown closes the connection and removes everything of the session.
function teardown() {
  gen++;
  makingOffer = false;
  publishRefused = false;
  lastOfferId = null;
  holdOffersUntil = 0;
  clearTimeout(reofferTimer);
  reofferTimer = 0;
  offeredMids = new Set();
  refused = new WeakSet();
  closePeerConnection();
  if (localStream) {
    localStream.getTracks().forEach((t) => t.stop());
    localStream = null;
  }
  localSources.clear();
  localInits.clear();
  $('local-video').srcObject = null;
  $('local-section').hidden = true;
  for (const mid of [...media.keys()]) removeMedia(mid);
  trackMap.clear();
}

// resetSession starts over after the server lost our session.
function resetSession() {
  teardown();
  page.state = 'joining';
  roster.clear();
  renderRoster();
  setStatus('Rejoining…');
}

async function main() {
  updateEmpty();
  $('room-name').textContent = page.room || 'Room';
  if (!page.room) {
    fail('This page needs a room: /room/{room}#token=…');
    return;
  }
  if (!page.token) {
    fail('This link has no join token (#token=…). Ask the organizer for a join link.');
    return;
  }
  if (page.transport && !TRANSPORTS[page.transport]) {
    fail(`Unknown transport "${page.transport}" in ?transport=: use ${Object.keys(TRANSPORTS).join(', ')}.`);
    return;
  }
  const claims = tokenClaims(page.token);
  if (claims && (claims.role === 'candidate' || claims.role === 'proctor')) {
    try {
      const mod = await import(claims.role === 'candidate' ? './candidate.js' : './proctor.js');
      mode = mod.createMode(roomApi, claims);
    } catch (err) {
      fail(`This page could not load its proctoring part: ${describe(err)}`);
      return;
    }
    Object.defineProperties(window.vigil, Object.getOwnPropertyDescriptors(mode.debug || {}));
    // The candidate's pre-flight check: the page joins once it passes.
    if (mode.beforeJoin) await mode.beforeJoin();
  }
  page.session = new Session({
    room: page.room,
    token: page.token,
    transport: page.transport || undefined,
    onEvent,
    onTransport: showTransport,
    onRestart: resetSession,
    onStatus: (s) => {
      if (s === 'connected') {
        if (page.state === 'joined') connectionStatus();
        else setStatus('Connected, joining…');
      } else if (page.state !== 'left' && page.state !== 'error') {
        setStatus(`Signaling: ${s}…`);
      }
    },
    onFatal: (err) => fail(joinError(err)),
  });
  $('rejoin').addEventListener('click', () => location.reload());
  $('leave').addEventListener('click', () => {
    $('leave').disabled = true;
    page.session.send({ type: 'leave', data: {} });
  });
  window.addEventListener('pagehide', () => {
    if (page.session && page.state !== 'left') page.session.sendNow({ type: 'leave', data: {} });
  });
  setStatus(`Joining ${page.room}…`);
  try {
    await page.session.start();
  } catch (err) {
    fail(joinError(err));
  }
}

// ---------------------------------------------------------------- stats

// stats summarizes pc.getStats(): inbound streams labelled with the
// identity and source of their mid, outbound streams with their counters.
async function stats() {
  const out = { inbound: [], outbound: [] };
  if (!pc) return out;
  const report = await pc.getStats();
  const codecs = new Map();
  report.forEach((s) => {
    if (s.type === 'codec') codecs.set(s.id, s.mimeType);
  });
  const midOfTrack = new Map();
  const midSource = new Map();
  for (const t of pc.getTransceivers()) {
    if (t.mid != null) midOfTrack.set(t.receiver.track.id, t.mid);
    if (t.mid != null && t.sender.track) midSource.set(t.mid, localSources.get(t.sender.track) || '');
  }
  report.forEach((s) => {
    if (s.type === 'inbound-rtp') {
      const mid = s.mid != null ? s.mid : midOfTrack.get(s.trackIdentifier);
      const info = trackMap.get(mid) || {};
      out.inbound.push({
        kind: s.kind,
        mid,
        framesDecoded: s.framesDecoded || 0,
        frameWidth: s.frameWidth || 0,
        frameHeight: s.frameHeight || 0,
        packetsReceived: s.packetsReceived || 0,
        bytesReceived: s.bytesReceived || 0,
        audioLevel: s.audioLevel || 0,
        codec: codecs.get(s.codecId) || '',
        identity: info.identity || '',
        source: info.source || '',
      });
    } else if (s.type === 'outbound-rtp') {
      out.outbound.push({
        kind: s.kind,
        mid: s.mid,
        packetsSent: s.packetsSent || 0,
        bytesSent: s.bytesSent || 0,
        rid: s.rid || '',
        frameWidth: s.frameWidth || 0,
        source: (midSource.get(s.mid)) || '',
      });
    }
  });
  return out;
}

main();
