// candidate.js — the proctoring candidate's page (room.js loads it for a
// join token with the role candidate).
//
// 1. Pre-flight, before the page joins: the camera, the microphone and a
//    share of the ENTIRE screen (getDisplayMedia, then
//    track.getSettings().displaySurface must be "monitor": a window or a
//    browser tab is refused), each shown as ready or failed with a plain
//    reason. "Join the exam" stays disabled until all three are ready.
// 2. Waiting room: joined, the candidate waits until a proctor admits it
//    (the `admission` event). Its media is already published, so the
//    proctor can check who it is before admitting it.
// 3. Exam: the camera goes out in simulcast (q, h, f: a quarter, half and
//    full resolution, listed low to high), the microphone as is, and the
//    screen in simulcast (h, f), at a few frames a second. The page reports incidents
//    (report_incident): tab_hidden (visibilitychange), window_blur,
//    fullscreen_exit, screen_share_ended, camera_ended, microphone_ended;
//    it plays what a proctor says to it (room.js's <audio> element for the
//    proctor's microphone, which the server forwards only while the
//    proctor talks to this candidate or to all) and shows the proctors'
//    messages and announcements; the candidate can answer the proctors.
//
// The captured tracks belong to this module, not to room.js: a new
// session (after a lost one) publishes the same tracks again, with no new
// screen picker.
//
// window.vigil gains: phase ('preflight' | 'waiting' | 'exam' | 'ended'),
// preflight ({camera, microphone, screen: {state, reason}}), reported
// (the incidents this page sent: {type, at}), messages, talkers.

import { h, clock } from './proctoring-common.js';

// Simulcast layers, low to high. The bitrate caps keep all five layers
// within what a modest uplink carries, and the screen, which a proctor
// reads rather than watches, goes at a few frames a second: the encoder
// then enables the higher layers sooner as its bandwidth estimate ramps.
const CAMERA_ENCODINGS = [
  { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150000 },
  { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 450000 },
  { rid: 'f', maxBitrate: 1200000 },
];
const SCREEN_ENCODINGS = [
  { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 250000, maxFramerate: 5 },
  { rid: 'f', maxBitrate: 900000, maxFramerate: 5 },
];
const SCREEN_FRAME_RATE = { ideal: 5, max: 15 };

const CHECK_NAMES = { camera: 'Camera', microphone: 'Microphone', screen: 'Entire screen' };

const SURFACE_REASONS = {
  window: 'You shared a single window. Share your entire screen instead.',
  browser: 'You shared a browser tab. Share your entire screen instead.',
  application: 'You shared an application. Share your entire screen instead.',
};

// deviceReason explains a getUserMedia or getDisplayMedia failure plainly.
function deviceReason(err, what) {
  switch (err && err.name) {
    case 'NotAllowedError':
    case 'SecurityError':
      return what === 'screen'
        ? 'Screen sharing was cancelled or blocked. Share your entire screen to continue.'
        : `Access to your ${what} was blocked. Allow it for this site in your browser, then check again.`;
    case 'NotFoundError':
    case 'OverconstrainedError':
      return `No ${what} was found. Connect one, then check again.`;
    case 'NotReadableError':
    case 'AbortError':
      return `Your ${what} could not be started: another application may be using it. Close it, then check again.`;
    case 'TypeError':
      return `This browser cannot use your ${what} here (a secure https:// page is needed).`;
    default:
      return `Your ${what} could not be started (${(err && (err.message || err.name)) || err}).`;
  }
}

export function createMode(room) {
  const $ = (id) => document.getElementById(id);
  const state = {
    phase: 'preflight',
    checks: {
      camera: { state: 'pending', reason: '' },
      microphone: { state: 'pending', reason: '' },
      screen: { state: 'pending', reason: '' },
    },
    reported: [],
    messages: [],
    talkers: new Set(),
    wasAdmitted: false,
    inFullscreen: false,
  };
  const tracks = { camera: null, microphone: null, screen: null };
  let avStream = null; // camera + microphone, one stream (lip sync)
  let screenStream = null;
  const lastReport = new Map(); // type -> ms
  const myMessages = new Set(); // ids of report_incident messages
  let joinResolve = null;

  document.body.classList.add('proctoring', 'candidate');

  // ------------------------------------------------------------ layout

  const checkItems = {};
  for (const name of Object.keys(CHECK_NAMES)) {
    checkItems[name] = h('li', { class: 'check', dataset: { check: name, state: 'pending' } },
      h('span', { class: 'check-name' }, CHECK_NAMES[name]),
      h('span', { class: 'check-state' }, 'Not checked yet'),
      h('span', { class: 'check-reason' }));
  }
  const shareButton = h('button', { type: 'button', id: 'share-screen' }, 'Share your entire screen');
  const retryButton = h('button', { type: 'button', id: 'check-devices', class: 'secondary' }, 'Check camera and microphone again');
  const joinButton = h('button', { type: 'button', id: 'join-exam', disabled: true }, 'Join the exam');
  const joinHint = h('p', { id: 'join-hint', class: 'hint', 'aria-live': 'polite' });
  const preflightCamera = h('video', { id: 'preflight-camera', autoplay: true, playsinline: true, muted: true });
  const preflightScreen = h('video', { id: 'preflight-screen', autoplay: true, playsinline: true, muted: true });
  preflightCamera.muted = true;
  preflightScreen.muted = true;

  const preflight = h('section', { id: 'preflight', class: 'card', 'aria-labelledby': 'preflight-heading' },
    h('h2', { id: 'preflight-heading' }, 'Before your exam: check your camera, microphone and screen'),
    h('p', { class: 'hint' }, 'During the exam your proctor sees your camera and your entire screen, and hears your microphone.'),
    h('ul', { class: 'checks', id: 'checks' }, Object.values(checkItems)),
    h('div', { class: 'row' }, shareButton, retryButton),
    h('div', { class: 'previews' },
      h('figure', { class: 'tile local' }, preflightCamera, h('figcaption', {}, 'Your camera')),
      h('figure', { class: 'tile' }, preflightScreen, h('figcaption', {}, 'Your screen'))),
    h('div', { class: 'row join-row' }, joinButton, joinHint));

  const waiting = h('section', { id: 'waiting-room', class: 'card', hidden: true, 'aria-labelledby': 'waiting-heading' },
    h('h2', { id: 'waiting-heading' }, 'Waiting room'),
    h('p', { id: 'waiting-text', role: 'status' }, 'You are in the waiting room. A proctor will let you into the exam shortly; please stay on this page.'));

  const talkIndicator = h('p', { id: 'talk-indicator', class: 'talk-indicator', role: 'status', hidden: true });
  const fullscreenButton = h('button', { type: 'button', id: 'fullscreen' }, 'Enter full screen');
  const mediaAlert = h('div', { id: 'media-alert', class: 'error', role: 'alert', hidden: true });
  const examCamera = h('video', { id: 'exam-camera', autoplay: true, playsinline: true, muted: true });
  const examScreen = h('video', { id: 'exam-screen', autoplay: true, playsinline: true, muted: true });
  examCamera.muted = true;
  examScreen.muted = true;
  const exam = h('section', { id: 'exam', class: 'card', hidden: true, 'aria-labelledby': 'exam-heading' },
    h('h2', { id: 'exam-heading' }, 'Exam in progress'),
    talkIndicator,
    h('div', { class: 'row' }, fullscreenButton,
      h('p', { class: 'hint' }, 'Stay on this page, in full screen. Leaving the page or the full screen, and stopping your camera, microphone or screen share, is reported to your proctor.')),
    mediaAlert,
    h('div', { class: 'previews' },
      h('figure', { class: 'tile local' }, examCamera, h('figcaption', {}, 'Your camera')),
      h('figure', { class: 'tile' }, examScreen, h('figcaption', {}, 'Your screen'))));

  const messageList = h('ol', { id: 'messages', class: 'messages', 'aria-live': 'polite' });
  const replyInput = h('input', { id: 'reply-text', type: 'text', maxlength: 4096, autocomplete: 'off' });
  const replyForm = h('form', { id: 'reply-form', class: 'row' },
    h('label', { for: 'reply-text' }, 'Message to the proctors'), replyInput,
    h('button', { type: 'submit' }, 'Send'));
  const messages = h('section', { id: 'messages-section', class: 'card', hidden: true, 'aria-labelledby': 'messages-heading' },
    h('h2', { id: 'messages-heading' }, 'Messages from your proctor'),
    h('p', { class: 'hint', id: 'no-messages' }, 'No messages yet.'),
    messageList, replyForm);

  const ended = h('section', { id: 'exam-over', class: 'card', hidden: true, role: 'status' });

  $('mode-root').append(preflight, waiting, exam, messages, ended);

  // ------------------------------------------------------------ pre-flight

  function setCheck(name, st, reason = '') {
    state.checks[name] = { state: st, reason };
    const li = checkItems[name];
    li.dataset.state = st;
    li.querySelector('.check-state').textContent = { pending: 'Checking…', ready: 'Ready', failed: 'Failed' }[st] || st;
    li.querySelector('.check-reason').textContent = reason;
    updateJoin();
  }

  function updateJoin() {
    const failed = Object.entries(state.checks).filter(([, c]) => c.state !== 'ready').map(([n]) => CHECK_NAMES[n].toLowerCase());
    joinButton.disabled = failed.length > 0 || state.phase !== 'preflight';
    joinHint.textContent = failed.length > 0
      ? `To join, fix: ${failed.join(', ')}.`
      : 'All set: you can join the exam.';
  }

  function watchEnded(track, source) {
    track.addEventListener('ended', () => {
      if (tracks[source] !== track) return;
      onTrackEnded(source);
    });
  }

  async function checkDevices() {
    retryButton.disabled = true;
    setCheck('camera', 'pending');
    setCheck('microphone', 'pending');
    for (const s of ['camera', 'microphone']) {
      if (tracks[s]) tracks[s].stop();
      tracks[s] = null;
    }
    let stream = null;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
    } catch (both) {
      // Ask for each alone, to say which one fails.
      const parts = [];
      for (const [source, c] of [['camera', { video: true }], ['microphone', { audio: true }]]) {
        try {
          parts.push(await navigator.mediaDevices.getUserMedia(c));
        } catch (err) {
          setCheck(source, 'failed', deviceReason(err, source));
        }
      }
      if (parts.length === 0 && state.checks.camera.state === 'pending') {
        setCheck('camera', 'failed', deviceReason(both, 'camera'));
      }
      stream = parts.length > 0 ? new MediaStream(parts.flatMap((s) => s.getTracks())) : null;
    }
    if (stream) {
      const cam = stream.getVideoTracks()[0] || null;
      const mic = stream.getAudioTracks()[0] || null;
      tracks.camera = cam;
      tracks.microphone = mic;
      if (cam) {
        watchEnded(cam, 'camera');
        setCheck('camera', cam.readyState === 'live' ? 'ready' : 'failed', cam.readyState === 'live' ? '' : 'Your camera started, then stopped. Check it, then check again.');
      } else if (state.checks.camera.state === 'pending') {
        setCheck('camera', 'failed', 'No camera was found. Connect one, then check again.');
      }
      if (mic) {
        watchEnded(mic, 'microphone');
        setCheck('microphone', mic.readyState === 'live' ? 'ready' : 'failed', mic.readyState === 'live' ? '' : 'Your microphone started, then stopped. Check it, then check again.');
      } else if (state.checks.microphone.state === 'pending') {
        setCheck('microphone', 'failed', 'No microphone was found. Connect one, then check again.');
      }
    }
    avStream = new MediaStream([tracks.camera, tracks.microphone].filter(Boolean));
    const video = tracks.camera ? new MediaStream([tracks.camera]) : null;
    preflightCamera.srcObject = video;
    examCamera.srcObject = video;
    retryButton.disabled = false;
  }

  // shareScreen asks for a screen share and checks it is the entire
  // screen. It resolves to the track, or null (the check says why).
  async function shareScreen() {
    let stream;
    try {
      stream = await navigator.mediaDevices.getDisplayMedia({
        video: { displaySurface: 'monitor', frameRate: SCREEN_FRAME_RATE },
        audio: false,
        monitorTypeSurfaces: 'include',
        selfBrowserSurface: 'exclude',
        surfaceSwitching: 'exclude',
      });
    } catch (err) {
      setCheck('screen', 'failed', deviceReason(err, 'screen'));
      return null;
    }
    const track = stream.getVideoTracks()[0];
    if (!track) {
      stream.getTracks().forEach((t) => t.stop());
      setCheck('screen', 'failed', 'The screen share had no video. Share your entire screen again.');
      return null;
    }
    const surface = track.getSettings().displaySurface;
    if (surface !== 'monitor') {
      stream.getTracks().forEach((t) => t.stop());
      setCheck('screen', 'failed', SURFACE_REASONS[surface] ||
        'Your browser does not tell what you shared, so the entire screen cannot be checked. Use a current Chrome, Edge or Firefox.');
      return null;
    }
    if ('contentHint' in track) track.contentHint = 'detail';
    setCheck('screen', 'ready');
    return track;
  }

  async function onShareClick() {
    shareButton.disabled = true;
    setCheck('screen', 'pending');
    try {
      const track = await shareScreen();
      if (!track) return;
      if (tracks.screen) tracks.screen.stop();
      tracks.screen = track;
      screenStream = new MediaStream([track]);
      watchEnded(track, 'screen');
      preflightScreen.srcObject = screenStream;
      examScreen.srcObject = screenStream;
      shareButton.textContent = 'Share a different screen';
    } finally {
      shareButton.disabled = false;
    }
  }

  shareButton.addEventListener('click', onShareClick);
  retryButton.addEventListener('click', checkDevices);
  joinButton.addEventListener('click', () => {
    // The checks hold only while the tracks are live.
    for (const s of ['camera', 'microphone', 'screen']) {
      if (!tracks[s] || tracks[s].readyState !== 'live') {
        setCheck(s, 'failed', `Your ${s === 'screen' ? 'screen share' : s} stopped. ${s === 'screen' ? 'Share your entire screen again.' : 'Check again.'}`);
      }
    }
    if (joinButton.disabled || !joinResolve) return;
    joinButton.disabled = true;
    const go = joinResolve;
    joinResolve = null;
    setPhase('waiting');
    go();
  });

  // ------------------------------------------------------------ phases

  function setPhase(p) {
    state.phase = p;
    document.body.dataset.phase = p;
    preflight.hidden = p !== 'preflight';
    waiting.hidden = p !== 'waiting';
    exam.hidden = p !== 'exam';
    messages.hidden = !(p === 'exam' || p === 'waiting');
    ended.hidden = p !== 'ended';
    updateJoin();
  }

  function onTrackEnded(source) {
    const check = { camera: 'camera', microphone: 'microphone', screen: 'screen' }[source];
    if (state.phase === 'preflight') {
      setCheck(check, 'failed', source === 'screen'
        ? 'Screen sharing stopped. Share your entire screen again.'
        : `Your ${source} stopped. Check it, then check again.`);
      return;
    }
    report(`${source === 'screen' ? 'screen_share' : source}_ended`);
    showMediaAlert(source);
  }

  function showMediaAlert(source) {
    const what = { camera: 'Your camera stopped.', microphone: 'Your microphone stopped.', screen: 'You stopped sharing your screen.' }[source];
    const fix = h('button', { type: 'button', dataset: { restart: source } },
      source === 'screen' ? 'Share your entire screen again' : `Restart your ${source}`);
    const line = h('p', { dataset: { alert: source } }, `${what} Your proctor has been told. `, fix);
    const old = mediaAlert.querySelector(`[data-alert="${source}"]`);
    if (old) old.remove();
    mediaAlert.append(line);
    mediaAlert.hidden = false;
    fix.addEventListener('click', async () => {
      fix.disabled = true;
      const ok = await restart(source, line);
      fix.disabled = false;
      if (ok) {
        line.remove();
        mediaAlert.hidden = mediaAlert.children.length === 0;
      }
    });
  }

  // restart captures source again and sends it in place of the ended
  // track, without renegotiating.
  async function restart(source, line) {
    let track = null;
    if (source === 'screen') {
      track = await shareScreen();
      if (!track) {
        line.firstChild.textContent = `${state.checks.screen.reason} `;
        return false;
      }
    } else {
      try {
        const s = await navigator.mediaDevices.getUserMedia(source === 'camera' ? { video: true } : { audio: true });
        track = source === 'camera' ? s.getVideoTracks()[0] : s.getAudioTracks()[0];
      } catch (err) {
        line.firstChild.textContent = `${deviceReason(err, source)} `;
        return false;
      }
    }
    const old = tracks[source];
    tracks[source] = track;
    watchEnded(track, source);
    await room.replaceLocalTrack(old, track);
    if (source === 'screen') {
      screenStream = new MediaStream([track]);
      examScreen.srcObject = screenStream;
    } else if (source === 'camera') {
      examCamera.srcObject = new MediaStream([track]);
    }
    return true;
  }

  // ------------------------------------------------------------ incidents

  // report sends an incident of type, during the exam only, at most one
  // of a type a second (the server's own limit).
  function report(type, note) {
    if (state.phase !== 'exam') return;
    const now = Date.now();
    if (now - (lastReport.get(type) || 0) < 1000) return;
    lastReport.set(type, now);
    const data = note ? { type, note } : { type };
    const id = room.send({ type: 'report_incident', data });
    myMessages.add(id);
    state.reported.push({ type, at: now, id });
  }

  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'hidden') report('tab_hidden');
  });
  window.addEventListener('blur', () => report('window_blur'));
  document.addEventListener('fullscreenchange', () => {
    if (document.fullscreenElement) {
      state.inFullscreen = true;
      fullscreenButton.hidden = true;
    } else {
      fullscreenButton.hidden = false;
      if (state.inFullscreen) {
        state.inFullscreen = false;
        report('fullscreen_exit');
      }
    }
  });
  fullscreenButton.addEventListener('click', () => {
    document.documentElement.requestFullscreen().catch((err) => {
      room.showError(`Full screen is not available: ${err.message}`);
    });
  });

  // ------------------------------------------------------------ messages

  function addMessage(m) {
    state.messages.push(m);
    $('no-messages').hidden = true;
    const mine = m.from === room.page.identity;
    const who = mine ? 'You' : `Proctor ${m.from}`;
    const scope = m.to === '*' ? ' (to everyone)' : '';
    messageList.append(h('li', { class: mine ? 'mine' : 'theirs', dataset: { from: m.from, to: m.to || '' } },
      h('span', { class: 'time' }, clock(m.time)), ' ',
      h('strong', {}, `${who}${scope}:`), ' ', m.text));
  }

  replyForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const text = replyInput.value.trim();
    if (!text) return;
    room.send({ type: 'chat', data: { text } });
    replyInput.value = '';
  });

  function renderTalk() {
    const names = [...state.talkers];
    talkIndicator.hidden = names.length === 0;
    talkIndicator.textContent = names.length > 0 ? `Your proctor (${names.join(', ')}) is talking to you.` : '';
  }

  // ------------------------------------------------------------ hooks

  return {
    debug: {
      get phase() { return state.phase; },
      get preflight() { return JSON.parse(JSON.stringify(state.checks)); },
      get reported() { return state.reported.map(({ type, at }) => ({ type, at })); },
      get messages() { return [...state.messages]; },
      get talkers() { return [...state.talkers]; },
    },

    // beforeJoin runs the pre-flight and resolves when the candidate
    // joins.
    beforeJoin() {
      setPhase('preflight');
      room.setStatus('Check your camera, microphone and screen to join the exam.');
      checkDevices();
      return new Promise((resolve) => { joinResolve = resolve; });
    },

    async publish(permitted) {
      const can = (s) => permitted.includes(s);
      if (can('camera') && tracks.camera) {
        room.addLocalTrack(tracks.camera, 'camera', { direction: 'sendonly', streams: [avStream], sendEncodings: CAMERA_ENCODINGS });
      }
      if (can('microphone') && tracks.microphone) {
        room.addLocalTrack(tracks.microphone, 'microphone', { direction: 'sendonly', streams: [avStream] });
      }
      if (can('screen') && tracks.screen) {
        room.addLocalTrack(tracks.screen, 'screen', { direction: 'sendonly', streams: [screenStream], sendEncodings: SCREEN_ENCODINGS });
      }
    },

    onServerError(data) {
      if (data.ref && myMessages.has(data.ref)) {
        console.warn('vigil: incident report refused:', data.code, data.message);
        return true; // the candidate has nothing to do about it
      }
      return false;
    },

    onEvent(ev) {
      const data = ev.data || {};
      switch (ev.type) {
        case 'joined':
          // Every session starts in the waiting room, a new one too.
          state.talkers.clear();
          renderTalk();
          $('waiting-text').textContent = state.wasAdmitted
            ? 'You were disconnected. A proctor will let you back into the exam shortly; please stay on this page.'
            : 'You are in the waiting room. A proctor will let you into the exam shortly; please stay on this page.';
          setPhase('waiting');
          room.setStatus('Waiting for a proctor to admit you.');
          break;
        case 'admission':
          if (data.state === 'admitted') {
            state.wasAdmitted = true;
            setPhase('exam');
            room.setStatus('You are in the exam.');
          }
          break;
        case 'chat':
          addMessage(data);
          break;
        case 'talk':
          if (data.active) state.talkers.add(data.from);
          else state.talkers.delete(data.from);
          renderTalk();
          break;
        case 'left': {
          const text = {
            rejected: 'A proctor did not admit you to this exam.',
            exam_ended: 'Your exam has ended.',
          }[data.reason] || 'You are no longer in the exam.';
          ended.replaceChildren(h('h2', {}, text), data.message ? h('p', { class: 'proctor-message' }, `Message from the proctor: ${data.message}`) : '');
          setPhase('ended');
          for (const t of Object.values(tracks)) if (t) t.stop();
          break;
        }
        default:
      }
    },
  };
}
