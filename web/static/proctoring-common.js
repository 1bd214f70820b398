// proctoring-common.js — what the candidate's and the proctor's pages
// (candidate.js, proctor.js) share: reading the join token, building
// DOM, and the names of incidents for people.

// tokenClaims reads the claims of a join token (a JWT) without checking
// its signature: the page only uses them to choose its layout before it
// joins; the server decides what the token allows. null if unreadable.
export function tokenClaims(token) {
  if (!token) return null;
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  try {
    const b64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
    const json = atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4));
    const claims = JSON.parse(json);
    return claims && typeof claims === 'object' ? claims : null;
  } catch {
    return null;
  }
}

// h makes an element: h('button', {type: 'button', class: 'x', onclick}, 'text', child...).
// Attributes starting with "on" are listeners; dataset keys go as data-*;
// null and false attributes are left out.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') {
      el.addEventListener(k.slice(2), v);
    } else if (k === 'class') {
      el.className = v;
    } else if (k === 'dataset') {
      Object.assign(el.dataset, v);
    } else if (k === 'text') {
      el.textContent = v;
    } else if (v === true) {
      el.setAttribute(k, '');
    } else {
      el.setAttribute(k, String(v));
    }
  }
  for (const c of children.flat()) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// INCIDENT_LABELS name each incident type (docs/api.md, Incidents).
export const INCIDENT_LABELS = {
  tab_hidden: 'Left the exam tab',
  window_blur: 'Switched to another window',
  fullscreen_exit: 'Left full screen',
  screen_share_ended: 'Stopped sharing the screen',
  camera_ended: 'Camera stopped',
  microphone_ended: 'Microphone stopped',
  connection_lost: 'Connection lost',
  connection_restored: 'Connection restored',
  track_missing: 'Media missing',
  track_ended: 'Media ended',
  video_frozen: 'Camera video frozen',
  manual: 'Flagged by a proctor',
};

export function incidentLabel(type) {
  return INCIDENT_LABELS[type] || type;
}

// clock formats a time (a Date, an ISO string or ms) as HH:MM:SS.
export function clock(t) {
  const d = t instanceof Date ? t : new Date(t || Date.now());
  return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
}

// pushToTalk makes button a hold-to-talk control: start() when pressed
// (pointer, or Space/Enter held), stop() when released, left or the page
// loses focus. aria-pressed follows.
export function pushToTalk(button, start, stop) {
  let held = false;
  const down = (ev) => {
    if (held || button.disabled) return;
    held = true;
    button.setAttribute('aria-pressed', 'true');
    if (ev && ev.pointerId != null && button.setPointerCapture) {
      try { button.setPointerCapture(ev.pointerId); } catch { /* synthetic pointer */ }
    }
    start();
  };
  const up = () => {
    if (!held) return;
    held = false;
    button.setAttribute('aria-pressed', 'false');
    stop();
  };
  button.setAttribute('aria-pressed', 'false');
  button.addEventListener('pointerdown', (ev) => { ev.preventDefault(); down(ev); });
  button.addEventListener('pointerup', up);
  button.addEventListener('pointercancel', up);
  button.addEventListener('lostpointercapture', up);
  button.addEventListener('keydown', (ev) => {
    if ((ev.key === ' ' || ev.key === 'Enter') && !ev.repeat) {
      ev.preventDefault();
      down();
    }
  });
  button.addEventListener('keyup', (ev) => {
    if (ev.key === ' ' || ev.key === 'Enter') up();
  });
  button.addEventListener('blur', up);
  window.addEventListener('blur', up);
  return { release: up, get held() { return held; } };
}
