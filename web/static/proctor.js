// proctor.js — the proctor's page of a proctoring room (room.js loads it
// for a join token with the role proctor).
//
// - A grid of every admitted candidate: camera and screen side by side,
//   each received at the LOW simulcast layer (the server's default for a
//   proctor), with badges: connection (connecting, connected,
//   reconnecting), incident count, speaking (from the received
//   microphone's audio level), talking.
// - A waiting room: candidates not admitted yet, with their camera and
//   screen, Admit and Reject (with a message).
// - Focus on one candidate: its card moves into the focus panel, its
//   camera and screen switch to the HIGH layer (set_layer; back to low on
//   leaving focus), its screen is shown full size, with its timeline,
//   a chat with it and a form to flag an incident by hand.
// - Push-to-talk to one candidate (only it hears) or to every candidate,
//   announcements (chat to "*"), ending one candidate's exam or everyone's.
//
// The timeline of a candidate is built from the `incident` events this
// page receives live (its own flags come back as `manual` incidents),
// from the chat, talk and admission events it sees, and from the room's
// earlier incidents, read once on joining with GET
// /v1/rooms/{room}/incidents and the proctor's own join token (the
// server lets a proctor of the room read them); without that call (a
// server that refuses it) the live events alone make the timeline.
//
// An incident placed in the candidate's recording (recording_id,
// recording_file, offset_ms) has "Play from here" in the timeline: the
// page reads the recording's manifest (GET /v1/recordings/{id}, with the
// proctor's join token), sets the <video data-playback> of the focus view
// to the signed URL of recording_file (a <video> cannot send the token)
// and seeks it to offset_ms, which counts from the start of that file.
// The live feeds go on meanwhile; leaving the focus closes the playback.
//
// window.vigil gains: incidents (every incident received, with
// shownAt: when this page showed it), layers (track id -> {identity,
// source, layer} asked for), focused, focus(identity | null),
// candidates (identity -> {state, connection, incidents, speaking}),
// talking (the targets this page talks to now) and playback (what the
// playback video plays: {identity, incident, recording, file, offset,
// state, error, currentTime, duration, readyState}).

import { api, describe } from './api.js';
import { h, clock, incidentLabel, pushToTalk } from './proctoring-common.js';

const SPEAKING_LEVEL = 0.02;
const STATS_MS = 700;

export function createMode(room) {
  const $ = (id) => document.getElementById(id);
  const candidates = new Map(); // identity -> candidate
  const incidents = []; // every incident received, oldest first
  const incidentIds = new Set();
  const layers = {}; // track id -> {identity, source, layer}
  const talking = new Set(); // targets this page talks to: identities or '*'
  const otherTalk = new Map(); // `${from}>${to}` -> true, other proctors talking
  let focused = null;
  let mic = null; // the proctor's microphone track
  let micError = '';
  let statsTimer = 0;

  document.body.classList.add('proctoring', 'proctor');

  // ------------------------------------------------------------ layout

  const announceInput = h('input', { id: 'announce-text', type: 'text', maxlength: 4096, autocomplete: 'off' });
  const talkAll = h('button', { type: 'button', id: 'talk-all', class: 'ptt' }, 'Hold to talk to everyone');
  const micState = h('p', { id: 'mic-state', class: 'hint', role: 'status' });
  const endAll = h('button', { type: 'button', id: 'end-all', class: 'danger' }, 'End the exam for everyone…');
  const endAllConfirm = h('div', { id: 'end-all-confirm', class: 'confirm', hidden: true });
  const controls = h('section', { id: 'proctor-controls', class: 'card', 'aria-labelledby': 'controls-heading' },
    h('h2', { id: 'controls-heading' }, 'Exam controls'),
    h('form', { id: 'announce-form', class: 'row' },
      h('label', { for: 'announce-text' }, 'Announcement to every candidate'), announceInput,
      h('button', { type: 'submit' }, 'Announce')),
    h('div', { class: 'row' }, talkAll, micState),
    h('div', { class: 'row' }, endAll, endAllConfirm));

  const waitingList = h('div', { id: 'waiting-list', class: 'cand-grid' });
  const waitingSection = h('section', { id: 'waiting-section', class: 'card', 'aria-labelledby': 'waiting-heading' },
    h('h2', { id: 'waiting-heading' }, 'Waiting room ', h('span', { class: 'count', id: 'waiting-count' }, '(0)')),
    h('p', { class: 'empty', id: 'waiting-empty' }, 'Nobody is waiting.'),
    waitingList);

  const focusMedia = h('div', { id: 'focus-media' });
  const timeline = h('ol', { id: 'timeline', class: 'timeline', 'aria-live': 'polite' });
  const flagNote = h('textarea', { id: 'flag-note', rows: 2, maxlength: 2048, required: true });
  const flagForm = h('form', { id: 'flag-form' },
    h('label', { for: 'flag-note' }, 'Flag an incident: what did you see?'), flagNote,
    h('button', { type: 'submit' }, 'Flag incident'));
  const chatLog = h('ol', { id: 'chat-log', class: 'messages', 'aria-live': 'polite' });
  const chatInput = h('input', { id: 'chat-text', type: 'text', maxlength: 4096, autocomplete: 'off' });
  const chatForm = h('form', { id: 'chat-form', class: 'row' },
    h('label', { for: 'chat-text' }, 'Message to this candidate only'), chatInput,
    h('button', { type: 'submit' }, 'Send'));
  const playbackVideo = h('video', { id: 'playback-video', controls: true, playsinline: true, preload: 'auto', dataset: { playback: '' } });
  const playbackState = h('p', { id: 'playback-state', class: 'hint', role: 'status' });
  const playbackClose = h('button', { type: 'button', id: 'playback-close', class: 'secondary' }, 'Close the recording');
  const playbackSection = h('section', { id: 'playback', hidden: true, 'aria-labelledby': 'playback-heading' },
    h('h3', { id: 'playback-heading' }, 'Recording'), playbackVideo, playbackState, playbackClose);
  const focusHeading = h('h2', { id: 'focus-heading' }, 'Focus');
  const unfocus = h('button', { type: 'button', id: 'unfocus', class: 'secondary' }, 'Back to the grid');
  const focusSection = h('section', { id: 'focus', class: 'card', hidden: true, 'aria-labelledby': 'focus-heading' },
    h('div', { class: 'focus-head' }, focusHeading, unfocus),
    h('div', { class: 'focus-body' },
      focusMedia,
      h('div', { class: 'focus-side' },
        h('section', { 'aria-labelledby': 'timeline-heading' },
          h('h3', { id: 'timeline-heading' }, 'Timeline'), timeline),
        playbackSection,
        flagForm,
        h('section', { 'aria-labelledby': 'chat-heading' },
          h('h3', { id: 'chat-heading' }, 'Chat'), chatLog, chatForm))));

  const grid = h('div', { id: 'grid', class: 'cand-grid' });
  const gridSection = h('section', { id: 'grid-section', class: 'card', 'aria-labelledby': 'grid-heading' },
    h('h2', { id: 'grid-heading' }, 'Candidates ', h('span', { class: 'count', id: 'grid-count' }, '(0)')),
    h('p', { class: 'empty', id: 'grid-empty' }, 'No candidate is in the exam yet.'),
    grid);

  const incidentList = h('ol', { id: 'incident-list', class: 'incident-list', 'aria-live': 'polite' });
  const allMessages = h('ol', { id: 'all-messages', class: 'messages' });
  const feeds = h('div', { class: 'feeds-row' },
    h('section', { id: 'incident-section', class: 'card', 'aria-labelledby': 'incidents-heading' },
      h('h2', { id: 'incidents-heading' }, 'Incidents'),
      h('p', { class: 'empty', id: 'incidents-empty' }, 'No incident so far.'),
      incidentList),
    h('section', { id: 'messages-section', class: 'card', 'aria-labelledby': 'all-messages-heading' },
      h('h2', { id: 'all-messages-heading' }, 'Announcements and messages'),
      allMessages));

  $('mode-root').append(controls, waitingSection, focusSection, gridSection, feeds);

  // ------------------------------------------------------------ candidates

  function candidate(identity) {
    let c = candidates.get(identity);
    if (c) return c;
    c = {
      identity,
      state: 'waiting',
      tracks: new Map(), // source -> TrackInfo
      incidents: 0,
      timeline: [], // {time, kind, type, text, id}
      chat: [],
      connection: 'connecting',
      lost: false,
      speaking: false,
      lastBytes: -1,
    };
    c.card = buildCard(c);
    candidates.set(identity, c);
    return c;
  }

  function buildCard(c) {
    const id = c.identity;
    const badge = (name, text, extra = {}) => h('li', { class: `badge ${name}`, dataset: { badge: name }, ...extra }, text);
    const badges = {
      state: badge('state', 'waiting'),
      connection: badge('connection', 'connecting'),
      incidents: badge('incidents', '0 incidents'),
      speaking: badge('speaking', 'speaking', { hidden: true }),
      talking: badge('talking', '', { hidden: true }),
    };
    const slot = (source, label) => h('figure', { class: 'feed', dataset: { slot: source } },
      h('figcaption', {}, label));
    const slots = { camera: slot('camera', 'Camera'), screen: slot('screen', 'Screen') };
    const last = h('p', { class: 'last-incident', hidden: true });
    const focusBtn = h('button', { type: 'button', class: 'secondary', dataset: { action: 'focus' } }, 'Focus');
    const talkBtn = h('button', { type: 'button', class: 'ptt', dataset: { action: 'talk' } }, 'Hold to talk');
    const endBtn = h('button', { type: 'button', class: 'danger', dataset: { action: 'end' } }, 'End exam…');
    const admitBtn = h('button', { type: 'button', dataset: { action: 'admit' } }, 'Admit');
    const rejectBtn = h('button', { type: 'button', class: 'danger', dataset: { action: 'reject' } }, 'Reject…');
    const confirm = h('div', { class: 'confirm', hidden: true });
    const card = h('article', { class: 'cand-card', dataset: { candidate: id, state: c.state }, 'aria-label': `Candidate ${id}` },
      h('header', { class: 'cand-head' }, h('h3', {}, id), h('ul', { class: 'badges' }, Object.values(badges))),
      h('div', { class: 'feeds' }, slots.camera, slots.screen),
      last,
      h('div', { class: 'cand-actions row' }, admitBtn, rejectBtn, focusBtn, talkBtn, endBtn),
      confirm);
    c.badges = badges;
    c.slots = slots;
    c.last = last;
    c.buttons = { focus: focusBtn, talk: talkBtn, end: endBtn, admit: admitBtn, reject: rejectBtn };
    c.confirm = confirm;

    admitBtn.addEventListener('click', () => {
      admitBtn.disabled = true;
      room.send({ type: 'admit', data: { identity: id } });
    });
    rejectBtn.addEventListener('click', () => askMessage(c, 'Reject', 'Reason, shown to the candidate',
      (message) => room.send({ type: 'reject', data: { identity: id, message } })));
    endBtn.addEventListener('click', () => askMessage(c, 'End this exam', 'Message to the candidate',
      (message) => room.send({ type: 'end_exam', data: { identity: id, message } })));
    focusBtn.addEventListener('click', () => setFocus(focused === id ? null : id));
    pushToTalk(talkBtn, () => startTalk(id), () => stopTalk(id));
    return card;
  }

  // askMessage shows an inline confirmation with an optional message
  // (no window.confirm: it would block the page).
  function askMessage(c, action, label, done) {
    const input = h('input', { type: 'text', maxlength: 1024, autocomplete: 'off', id: `msg-${c.identity}` });
    const form = h('form', { class: 'row' },
      h('label', { for: input.id }, label), input,
      h('button', { type: 'submit', class: 'danger' }, action),
      h('button', { type: 'button', class: 'secondary', onclick: () => { c.confirm.hidden = true; } }, 'Cancel'));
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      c.confirm.hidden = true;
      done(input.value.trim());
    });
    c.confirm.replaceChildren(form);
    c.confirm.hidden = false;
    input.focus();
  }

  function setState(c, st) {
    c.state = st || 'admitted';
    c.card.dataset.state = c.state;
    c.badges.state.textContent = c.state;
    const waitingNow = c.state === 'waiting';
    c.buttons.admit.hidden = !waitingNow;
    c.buttons.admit.disabled = false;
    c.buttons.reject.hidden = !waitingNow;
    c.buttons.focus.hidden = waitingNow;
    c.buttons.talk.hidden = waitingNow;
    c.buttons.end.hidden = waitingNow;
    place(c);
  }

  // place puts a card where its state says: the focus panel, the grid
  // (by identity) or the waiting room.
  function place(c) {
    let parent = c.state === 'waiting' ? waitingList : grid;
    if (focused === c.identity) parent = focusMedia;
    c.card.classList.toggle('focused', parent === focusMedia);
    if (c.card.parentElement !== parent) {
      const after = [...parent.children].find((el) => el.dataset.candidate > c.identity);
      parent.insertBefore(c.card, after || null);
      // Moving a <video> may pause it.
      for (const v of c.card.querySelectorAll('video')) v.play().catch(() => {});
    }
    renderCounts();
  }

  function renderCounts() {
    const waitingN = waitingList.children.length;
    const gridN = [...candidates.values()].filter((c) => c.state !== 'waiting').length;
    $('waiting-count').textContent = `(${waitingN})`;
    $('waiting-empty').hidden = waitingN > 0;
    $('grid-count').textContent = `(${gridN})`;
    $('grid-empty').hidden = gridN > 0;
  }

  function addCandidate(p) {
    if (!p || p.role !== 'candidate') return;
    const c = candidate(p.identity);
    for (const t of p.tracks || []) c.tracks.set(t.source, t);
    setState(c, p.state);
    applyLayers(c);
  }

  function removeCandidate(identity, reason) {
    const c = candidates.get(identity);
    if (!c) return;
    if (focused === identity) setFocus(null);
    // Its talk ends with it: nothing to tell the server.
    talking.delete(identity);
    if (mic && talking.size === 0) mic.enabled = false;
    c.card.remove();
    candidates.delete(identity);
    for (const t of c.tracks.values()) delete layers[t.id];
    addMessageLine({ time: new Date().toISOString(), text: `${identity} left (${(reason || 'left').replace(/_/g, ' ')}).` });
    renderCounts();
  }

  // ------------------------------------------------------------ layers

  function wantLayer(c) {
    return focused === c.identity ? 'high' : 'low';
  }

  // applyLayers asks for the layer each simulcast video of c should get:
  // high when focused, else low.
  function applyLayers(c) {
    for (const t of c.tracks.values()) {
      if (t.kind !== 'video' || !t.layers || t.layers.length < 2) continue;
      const layer = wantLayer(c);
      const cur = layers[t.id];
      if (cur && cur.layer === layer) continue;
      // A proctor starts at the lowest layer: no need to ask for it.
      if (!cur && layer === 'low') {
        layers[t.id] = { identity: c.identity, source: t.source, layer };
        continue;
      }
      layers[t.id] = { identity: c.identity, source: t.source, layer };
      room.send({ type: 'set_layer', data: { track_id: t.id, layer } });
    }
  }

  // ------------------------------------------------------------ focus

  function setFocus(identity) {
    if (identity && !candidates.has(identity)) return false;
    const before = focused ? candidates.get(focused) : null;
    focused = identity || null;
    if (playback.identity && playback.identity !== focused) stopPlayback();
    if (before) {
      place(before);
      applyLayers(before);
      before.buttons.focus.textContent = 'Focus';
      before.buttons.focus.setAttribute('aria-pressed', 'false');
    }
    focusSection.hidden = !focused;
    document.body.classList.toggle('has-focus', !!focused);
    if (focused) {
      const c = candidates.get(focused);
      place(c);
      applyLayers(c);
      c.buttons.focus.textContent = 'Leave focus';
      c.buttons.focus.setAttribute('aria-pressed', 'true');
      focusHeading.textContent = `Focus: ${focused}`;
      $('chat-heading').textContent = `Chat with ${focused}`;
      renderTimeline();
      renderChat();
      focusSection.scrollIntoView({ block: 'nearest' });
    }
    return true;
  }

  unfocus.addEventListener('click', () => setFocus(null));

  // ------------------------------------------------------------ timeline

  function addTimeline(identity, entry) {
    const c = candidates.get(identity);
    if (!c) return;
    c.timeline.push(entry);
    c.timeline.sort((a, b) => new Date(a.time) - new Date(b.time));
    if (focused === identity) renderTimeline();
  }

  function renderTimeline() {
    const c = focused && candidates.get(focused);
    if (!c) return;
    timeline.replaceChildren(...(c.timeline.length === 0
      ? [h('li', { class: 'empty' }, 'Nothing yet.')]
      : c.timeline.map((e) => h('li', { class: `tl-${e.kind}`, dataset: { kind: e.kind, type: e.type || '', ...(e.id ? { incidentId: e.id } : {}) } },
        h('span', { class: 'time' }, clock(e.time)), ' ', e.text,
        playable(e.inc) ? [' ', h('button', {
          type: 'button', class: 'secondary play-from', dataset: { action: 'play-from' },
          title: `Play ${e.inc.recording_file} from ${mediaTime(e.inc.offset_ms / 1000)}`,
          onclick: () => playFrom(e.inc),
        }, 'Play from here')] : null))));
  }

  // ------------------------------------------------------------ playback

  const playback = {
    identity: null, incident: null, recording: null, file: null, offset: 0, live: false, state: 'idle', error: '',
  };
  let playbackGen = 0; // a newer "Play from here" (or a close) wins over a load under way
  let playbackLoads = 0; // loads of this playback: a new query each, so no cached copy is reused
  let playbackWaits = 0; // reloads waiting for a live file to reach the incident
  let playbackRetried = false;

  function playable(inc) {
    return !!(inc && inc.recording_id && inc.recording_file && inc.offset_ms != null);
  }

  // mediaTime formats seconds into a file as M:SS.
  function mediaTime(sec) {
    const s = Math.max(0, Math.floor(sec));
    return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
  }

  function setPlayback(state, text) {
    playback.state = state;
    playback.error = state === 'error' ? text : '';
    playbackSection.dataset.state = state;
    playbackState.textContent = text;
  }

  // fileOf reads the recording's manifest with the proctor's token and
  // returns the signed URL of file, and whether the file is still being
  // written (no SHA-256 yet): then it grows, and a load sees what was
  // written when it was made.
  async function fileOf(recording, file) {
    const man = await api(`/v1/recordings/${encodeURIComponent(recording)}`, { token: room.page.token });
    const f = ((man && man.files) || []).find((x) => x.name === file);
    const seg = ((man && man.segments) || []).find((x) => x.file === file);
    if (!f || !f.url || !seg) throw new Error(`the recording has no file ${file}`);
    return { url: f.url, live: !seg.sha256 };
  }

  // loadAt points the playback video at the file and, once its metadata
  // is known, seeks to offset (seconds into the file) and plays. A live
  // file that does not reach offset yet is loaded again a second later.
  function loadAt(f, offset, gen) {
    playback.live = f.live;
    const wait = (d) => {
      playbackWaits++;
      setPlayback('waiting', `The recording is written up to ${mediaTime(d)}; waiting for it to reach ${mediaTime(offset)}…`);
      setTimeout(() => reload(offset, gen), 1000);
    };
    const play = () => {
      const started = playbackVideo.play();
      if (started) {
        started.catch((err) => {
          if (gen !== playbackGen || !err || err.name !== 'NotAllowedError') return;
          // No sound without a gesture the browser counts: play muted.
          playbackVideo.muted = true;
          playbackVideo.play().catch(() => {});
        });
      }
    };
    const onMeta = () => {
      if (gen !== playbackGen) return;
      const d = playbackVideo.duration;
      if (f.live && Number.isFinite(d) && d < offset && playbackWaits < 20) {
        wait(d);
        return;
      }
      // A file being written has no Duration: the browser learns where it
      // ends when it gets there, and a seek past that end is clamped to
      // it. Then the moment is not written yet: load it again later.
      playbackVideo.addEventListener('seeked', () => {
        if (gen !== playbackGen) return;
        const at = playbackVideo.currentTime;
        if (f.live && at < offset - 0.25 && playbackWaits < 20) {
          wait(at);
          return;
        }
        play();
      }, { once: true });
      playbackVideo.currentTime = Number.isFinite(d) ? Math.min(offset, d) : offset;
    };
    playbackVideo.addEventListener('loadedmetadata', onMeta, { once: true });
    playbackLoads++;
    playbackVideo.src = `${f.url}&load=${playbackLoads}`;
  }

  // reload reads the manifest again (a fresh signed URL, and what is
  // written now) and goes on at offset.
  async function reload(offset, gen) {
    if (gen !== playbackGen) return;
    try {
      const f = await fileOf(playback.recording, playback.file);
      if (gen === playbackGen) loadAt(f, offset, gen);
    } catch (err) {
      if (gen === playbackGen) setPlayback('error', `Cannot play the recording: ${describe(err)}`);
    }
  }

  async function playFrom(inc) {
    if (!playable(inc)) return;
    const gen = ++playbackGen;
    playbackRetried = false;
    playbackWaits = 0;
    Object.assign(playback, {
      identity: inc.identity, incident: inc.id, recording: inc.recording_id, file: inc.recording_file,
      offset: Math.max(0, inc.offset_ms / 1000),
    });
    playbackSection.hidden = false;
    setPlayback('loading', `Loading ${inc.recording_file} at ${mediaTime(playback.offset)}…`);
    await reload(playback.offset, gen);
  }

  function stopPlayback() {
    playbackGen++;
    Object.assign(playback, { identity: null, incident: null, recording: null, file: null, offset: 0, live: false });
    setPlayback('idle', '');
    playbackSection.hidden = true;
    playbackVideo.pause();
    playbackVideo.removeAttribute('src');
    playbackVideo.load();
  }

  playbackClose.addEventListener('click', stopPlayback);
  playbackVideo.addEventListener('playing', () => {
    if (playback.file) setPlayback('playing', `Playing ${playback.file} of ${playback.identity} (the incident is at ${mediaTime(playback.offset)}).`);
  });
  playbackVideo.addEventListener('pause', () => {
    if (playback.file && playback.state === 'playing' && !playbackVideo.ended) {
      setPlayback('paused', `Paused at ${mediaTime(playbackVideo.currentTime)} of ${playback.file}.`);
    }
  });
  playbackVideo.addEventListener('ended', () => {
    if (!playback.file) return;
    if (playback.live) {
      // The end of what was written when it loaded: load what is now.
      setPlayback('waiting', `Catching up with the recording at ${mediaTime(playbackVideo.currentTime)}…`);
      const gen = playbackGen;
      const at = playbackVideo.currentTime;
      setTimeout(() => reload(at, gen), 1000);
      return;
    }
    setPlayback('ended', `End of ${playback.file}.`);
  });
  playbackVideo.addEventListener('error', () => {
    if (!playback.file || !playbackVideo.getAttribute('src')) return;
    const e = playbackVideo.error;
    // A signed URL lives 10 minutes: a seek after that is refused. Take
    // a fresh one once and go on from where the video was.
    if (!playbackRetried) {
      playbackRetried = true;
      reload(playbackVideo.currentTime || playback.offset, playbackGen);
      return;
    }
    setPlayback('error', `The recording cannot be played: ${(e && e.message) || `media error ${e ? e.code : '?'}`}.`);
  });

  function onIncident(inc, live) {
    if (!inc || !inc.id || incidentIds.has(inc.id)) return;
    incidentIds.add(inc.id);
    const shown = { ...inc, shownAt: Date.now(), live };
    incidents.push(shown);
    const label = incidentLabel(inc.type);
    const by = inc.source === 'proctor' ? ` by ${inc.reporter}` : '';
    const note = inc.note ? `: ${inc.note}` : '';
    const text = `${label}${by}${note}`;
    incidentList.prepend(h('li', { dataset: { incidentId: inc.id, identity: inc.identity, type: inc.type } },
      h('span', { class: 'time' }, clock(inc.time)), ' ', h('strong', {}, inc.identity), ' — ', text));
    $('incidents-empty').hidden = true;
    const c = candidates.get(inc.identity);
    if (!c) return;
    c.incidents++;
    c.badges.incidents.textContent = `${c.incidents} incident${c.incidents === 1 ? '' : 's'}`;
    c.badges.incidents.dataset.count = String(c.incidents);
    c.badges.incidents.classList.add('alert');
    c.last.hidden = false;
    c.last.dataset.type = inc.type;
    c.last.textContent = `${clock(inc.time)} ${text}`;
    if (inc.type === 'connection_lost') c.lost = true;
    if (inc.type === 'connection_restored') c.lost = false;
    renderConnection(c);
    addTimeline(inc.identity, { time: inc.time, kind: 'incident', type: inc.type, text, id: inc.id, inc });
  }

  async function loadIncidents() {
    try {
      const res = await api(`/v1/rooms/${encodeURIComponent(room.page.room)}/incidents`, { token: room.page.token });
      for (const inc of (res && res.incidents) || []) onIncident(inc, false);
    } catch (err) {
      // Older incidents stay unknown; live ones still come.
      console.warn('vigil: cannot read earlier incidents:', describe(err));
    }
  }

  flagForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const note = flagNote.value.trim();
    if (!focused || !note) return;
    room.send({ type: 'flag_incident', data: { identity: focused, note } });
    flagNote.value = '';
  });

  // ------------------------------------------------------------ chat

  function addMessageLine(m) {
    allMessages.prepend(h('li', {}, h('span', { class: 'time' }, clock(m.time)), ' ', m.text));
  }

  function onChat(m) {
    const me = room.page.identity;
    if (m.to === '*') {
      addMessageLine({ time: m.time, text: `${m.from === me ? 'You' : m.from} to everyone: ${m.text}` });
      for (const c of candidates.values()) addTimeline(c.identity, { time: m.time, kind: 'chat', text: `${m.from} to everyone: ${m.text}` });
      return;
    }
    // A candidate's message (to the proctors), or one between a proctor
    // and a candidate.
    const other = candidates.has(m.from) ? m.from : m.to;
    const c = candidates.get(other);
    if (!c) {
      addMessageLine({ time: m.time, text: `${m.from}${m.to ? ` to ${m.to}` : ''}: ${m.text}` });
      return;
    }
    const line = { time: m.time, from: m.from, to: m.to, text: m.text };
    c.chat.push(line);
    addTimeline(other, { time: m.time, kind: 'chat', text: `${m.from === me ? 'You' : m.from}: ${m.text}` });
    if (m.from === other) {
      addMessageLine({ time: m.time, text: `${m.from} to the proctors: ${m.text}` });
      c.card.classList.add('has-message');
    }
    if (focused === other) renderChat();
  }

  function renderChat() {
    const c = focused && candidates.get(focused);
    if (!c) return;
    c.card.classList.remove('has-message');
    const me = room.page.identity;
    chatLog.replaceChildren(...c.chat.map((m) => h('li', { class: m.from === me ? 'mine' : 'theirs' },
      h('span', { class: 'time' }, clock(m.time)), ' ', h('strong', {}, `${m.from === me ? 'You' : m.from}:`), ' ', m.text)));
  }

  chatForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const text = chatInput.value.trim();
    if (!focused || !text) return;
    room.send({ type: 'chat', data: { text, to: focused } });
    chatInput.value = '';
  });

  $('announce-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const text = announceInput.value.trim();
    if (!text) return;
    room.send({ type: 'chat', data: { text, to: '*' } });
    announceInput.value = '';
  });

  // ------------------------------------------------------------ talk

  function startTalk(to) {
    if (!mic) return;
    talking.add(to);
    mic.enabled = true;
    room.send({ type: 'talk', data: { to, on: true } });
    renderTalking();
  }

  function stopTalk(to) {
    if (!talking.delete(to)) return;
    room.send({ type: 'talk', data: { to, on: false } });
    if (mic && talking.size === 0) mic.enabled = false;
    renderTalking();
  }

  pushToTalk(talkAll, () => startTalk('*'), () => stopTalk('*'));

  endAll.addEventListener('click', () => {
    const input = h('input', { type: 'text', id: 'end-all-message', maxlength: 1024, autocomplete: 'off' });
    const form = h('form', { class: 'row' },
      h('label', { for: 'end-all-message' }, 'Message to every candidate'), input,
      h('button', { type: 'submit', class: 'danger', id: 'end-all-confirm-button' }, 'End every exam'),
      h('button', { type: 'button', class: 'secondary', onclick: () => { endAllConfirm.hidden = true; } }, 'Cancel'));
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      endAllConfirm.hidden = true;
      room.send({ type: 'end_exam', data: { identity: '*', message: input.value.trim() } });
    });
    endAllConfirm.replaceChildren(form);
    endAllConfirm.hidden = false;
    input.focus();
  });

  function renderTalking() {
    for (const c of candidates.values()) {
      const mine = talking.has(c.identity) || talking.has('*');
      const others = [...otherTalk.keys()].filter((k) => k.endsWith(`>${c.identity}`) || k.endsWith('>*'))
        .map((k) => k.split('>')[0]);
      const text = mine ? 'you are talking' : (others.length > 0 ? `${others.join(', ')} talking` : '');
      c.badges.talking.hidden = !text;
      c.badges.talking.textContent = text;
    }
    talkAll.classList.toggle('live', talking.has('*'));
  }

  function renderMic() {
    const ok = !!mic;
    talkAll.disabled = !ok;
    for (const c of candidates.values()) c.buttons.talk.disabled = !ok;
    micState.textContent = ok ? 'Your microphone is off until you hold a talk button.' : `Talking is not available: ${micError || 'no microphone.'}`;
  }

  // ------------------------------------------------------------ badges

  function renderConnection(c) {
    let value = c.connection;
    if (c.lost) value = 'reconnecting';
    c.badges.connection.textContent = value;
    c.badges.connection.dataset.value = value;
  }

  async function pollStats() {
    statsTimer = 0;
    try {
      const s = await room.stats();
      const bytes = new Map();
      const levels = new Map();
      for (const in_ of s.inbound) {
        if (!in_.identity) continue;
        bytes.set(in_.identity, (bytes.get(in_.identity) || 0) + in_.bytesReceived);
        if (in_.kind === 'audio') levels.set(in_.identity, in_.audioLevel);
      }
      for (const c of candidates.values()) {
        const b = bytes.get(c.identity) || 0;
        if (b > 0 && b !== c.lastBytes) c.connection = 'connected';
        else if (c.lastBytes >= 0 && b === c.lastBytes && c.connection === 'connected') c.connection = 'stalled';
        c.lastBytes = b;
        renderConnection(c);
        const speaking = (levels.get(c.identity) || 0) > SPEAKING_LEVEL;
        if (speaking !== c.speaking) {
          c.speaking = speaking;
          c.badges.speaking.hidden = !speaking;
        }
      }
    } catch (err) {
      console.warn('vigil: stats', err);
    }
    statsTimer = setTimeout(pollStats, STATS_MS);
  }

  // ------------------------------------------------------------ hooks

  return {
    debug: {
      get incidents() { return incidents.map((i) => ({ ...i })); },
      get layers() { return JSON.parse(JSON.stringify(layers)); },
      get focused() { return focused; },
      focus: (identity) => setFocus(identity),
      get candidates() {
        const out = {};
        for (const c of candidates.values()) {
          out[c.identity] = {
            state: c.state, connection: c.badges.connection.textContent, incidents: c.incidents, speaking: c.speaking,
          };
        }
        return out;
      },
      get talking() { return [...talking]; },
      get playback() {
        const v = playbackVideo;
        return {
          ...playback,
          src: v.currentSrc ? 'set' : '',
          currentTime: v.currentTime,
          duration: Number.isFinite(v.duration) ? v.duration : (v.duration > 0 ? -1 : 0),
          readyState: v.readyState,
          paused: v.paused,
          loads: playbackLoads,
          mediaError: v.error ? v.error.code : 0,
        };
      },
    },

    async publish(permitted, mine) {
      if (!permitted.includes('microphone')) {
        micError = 'this role may not publish a microphone.';
        renderMic();
        return;
      }
      if (!mic || mic.readyState !== 'live') {
        try {
          const s = await navigator.mediaDevices.getUserMedia({ audio: true });
          mic = s.getAudioTracks()[0];
          mic.enabled = talking.size > 0; // off until push-to-talk
          mic.addEventListener('ended', () => {
            mic = null;
            micError = 'your microphone stopped.';
            renderMic();
          });
        } catch (err) {
          mic = null;
          micError = `${describe(err)}.`;
          renderMic();
          return;
        }
      }
      if (mine !== room.gen) return; // a new session meanwhile: it publishes again
      room.addLocalTrack(mic, 'microphone', { direction: 'sendonly', streams: [new MediaStream([mic])] });
      renderMic();
    },

    placeVideo(el, info) {
      if (!info || !info.identity || (info.source !== 'camera' && info.source !== 'screen')) return false;
      const c = candidate(info.identity);
      if (!c.card.parentElement) place(c);
      const slot = c.slots[info.source];
      el.classList.add(`feed-${info.source}`);
      for (const old of slot.querySelectorAll('video')) old.remove();
      slot.prepend(el);
      return true;
    },

    onEvent(ev) {
      const data = ev.data || {};
      switch (ev.type) {
        case 'joined':
          for (const c of [...candidates.values()]) {
            if (!(data.participants || []).some((p) => p.identity === c.identity)) removeCandidate(c.identity, 'left');
          }
          for (const k of Object.keys(layers)) delete layers[k];
          for (const p of data.participants || []) addCandidate(p);
          renderMic();
          loadIncidents();
          if (!statsTimer) pollStats();
          if (focused) setFocus(focused);
          break;
        case 'participant_joined':
        case 'participant_updated': {
          const p = data.participant;
          if (!p || p.role !== 'candidate') break;
          const before = candidates.get(p.identity);
          const wasWaiting = before && before.state === 'waiting';
          addCandidate(p);
          if (wasWaiting && p.state === 'admitted') {
            addTimeline(p.identity, { time: new Date().toISOString(), kind: 'admission', text: 'Admitted to the exam.' });
          } else if (!before) {
            addTimeline(p.identity, { time: new Date().toISOString(), kind: 'joined', text: `Joined (${p.state || 'waiting'}).` });
          }
          renderMic();
          renderTalking();
          break;
        }
        case 'participant_left':
          removeCandidate(data.identity, data.reason);
          break;
        case 'track_published': {
          const t = data.track;
          const c = t && candidates.get(t.identity);
          if (c) {
            c.tracks.set(t.source, t);
            applyLayers(c);
          }
          break;
        }
        case 'track_unpublished': {
          const t = data.track;
          const c = t && candidates.get(t.identity);
          if (c && c.tracks.get(t.source) && c.tracks.get(t.source).id === t.id) {
            c.tracks.delete(t.source);
            delete layers[t.id];
          }
          break;
        }
        case 'incident':
          onIncident(data, true);
          break;
        case 'chat':
          onChat(data);
          break;
        case 'talk': {
          if (data.from !== room.page.identity) {
            const key = `${data.from}>${data.to}`;
            if (data.active) otherTalk.set(key, true);
            else otherTalk.delete(key);
          }
          const who = data.from === room.page.identity ? 'You' : data.from;
          const targets = data.to === '*' ? [...candidates.keys()] : [data.to];
          for (const id of targets) {
            addTimeline(id, { time: data.time, kind: 'talk', text: `${who} ${data.active ? 'started' : 'stopped'} talking${data.to === '*' ? ' to everyone' : ''}.` });
          }
          renderTalking();
          break;
        }
        case 'left':
          clearTimeout(statsTimer);
          statsTimer = 0;
          for (const t of [...talking]) talking.delete(t);
          if (mic) mic.stop();
          mic = null;
          break;
        default:
      }
    },
  };
}
