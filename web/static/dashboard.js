// dashboard.js — the admin dashboard: live rooms, their participants and
// tracks, small charts of each participant's upstream bitrate and packet
// loss over the last minutes, recordings with download links, and the
// newest incidents of each proctoring room with a thumbnail of their
// snapshot. It polls the admin API (GET /v1/rooms, GET /v1/recordings,
// GET /v1/rooms/{room}/incidents, GET /readyz) with the admin key the home
// page remembers, and keeps the samples in memory: the charts start when
// the page opens.

import { api, describe } from './api.js';

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = 'vigil.adminKey';
const INTERVAL_MS = 2000;
const WINDOW_MS = 5 * 60 * 1000;
const SVG = 'http://www.w3.org/2000/svg';

// samples: "room/identity" -> [{t, bitrate, loss}] (loss in %, null when
// nothing was received in the interval).
const samples = new Map();
// last: "room/identity" -> {packets, lost} at the previous poll.
const last = new Map();
// blob URLs made for downloads, revoked on the next render.
let blobURLs = [];
// How many incidents are listed per room, newest first.
const INCIDENT_LIMIT = 10;
// Proctoring rooms seen since the page opened: their incidents stay
// listed after the room ends (incidents outlive it).
const incidentRooms = new Set();
// Snapshot thumbnails by incident id: {url, failed}; each fetched once
// (with the admin key, shown through a blob URL), revoked when the
// incident is no longer listed.
const thumbs = new Map();
let incidentsDisabled = false;

window.vigilDashboard = { samples, polls: 0 };

function adminKey() {
  try {
    return localStorage.getItem(KEY_STORAGE) || '';
  } catch {
    return '';
  }
}

function showError(err) {
  const el = $('error');
  el.textContent = describe(err);
  el.hidden = false;
}

function clearError() {
  $('error').hidden = true;
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('data-')) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c);
  return e;
}

function formatBitrate(b) {
  if (b >= 1e6) return `${(b / 1e6).toFixed(2)} Mbit/s`;
  if (b >= 1e3) return `${(b / 1e3).toFixed(0)} kbit/s`;
  return `${b} bit/s`;
}

function formatBytes(n) {
  if (n >= 1 << 30) return `${(n / (1 << 30)).toFixed(1)} GiB`;
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  if (n >= 1 << 10) return `${(n / (1 << 10)).toFixed(0)} KiB`;
  return `${n} B`;
}

// record adds a sample for participant p of room, now.
function record(room, p, now) {
  const key = `${room}/${p.identity}`;
  let packets = 0;
  let lost = 0;
  for (const t of p.tracks || []) {
    packets += t.packets || 0;
    lost += t.lost || 0;
  }
  const prev = last.get(key);
  last.set(key, { packets, lost });
  let loss = null;
  if (prev) {
    const dp = packets - prev.packets;
    const dl = Math.max(0, lost - prev.lost);
    if (dp + dl > 0) loss = (100 * dl) / (dp + dl);
  }
  const list = samples.get(key) || [];
  list.push({ t: now, bitrate: p.bitrate || 0, loss });
  while (list.length > 0 && list[0].t < now - WINDOW_MS) list.shift();
  samples.set(key, list);
  return list;
}

// chart draws values (y) over time as an inline SVG polyline, newest on
// the right; the window is WINDOW_MS wide.
function chart(kind, list, pick, now, fixedMax) {
  const w = 240;
  const h = 48;
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', `0 0 ${w} ${h}`);
  svg.setAttribute('width', w);
  svg.setAttribute('height', h);
  svg.setAttribute('class', `chart ${kind}`);
  svg.setAttribute('data-chart', kind);
  const pts = list.filter((s) => pick(s) !== null);
  const max = fixedMax || Math.max(1, ...pts.map(pick));
  const coords = pts.map((s) => {
    const x = w - ((now - s.t) / WINDOW_MS) * w;
    const y = h - 2 - (pick(s) / max) * (h - 4);
    return `${x.toFixed(1)},${y.toFixed(1)}`;
  });
  const base = document.createElementNS(SVG, 'line');
  base.setAttribute('x1', 0);
  base.setAttribute('x2', w);
  base.setAttribute('y1', h - 1);
  base.setAttribute('y2', h - 1);
  base.setAttribute('class', 'axis');
  svg.append(base);
  const line = document.createElementNS(SVG, 'polyline');
  line.setAttribute('points', coords.join(' '));
  line.setAttribute('class', 'line');
  svg.append(line);
  svg.dataset.points = String(coords.length);
  svg.dataset.max = String(Math.max(0, ...pts.map(pick)));
  const title = document.createElementNS(SVG, 'title');
  title.textContent = kind === 'bitrate' ? `bitrate, max ${formatBitrate(max)}` : `packet loss, scale 0-${max}%`;
  svg.append(title);
  return svg;
}

function renderRooms(rooms, now) {
  const box = $('rooms');
  box.replaceChildren();
  $('no-rooms').hidden = rooms.length > 0;
  const live = new Set();
  for (const r of rooms) {
    const section = el('section', { class: 'dash-room', 'data-room': r.name },
      el('h3', {}, `${r.name} `, el('span', { class: 'kind' }, r.kind),
        el('span', { class: 'count' }, ` ${r.participants.length} participant${r.participants.length === 1 ? '' : 's'}`)));
    const list = el('ul', { class: 'dash-participants' });
    for (const p of r.participants) {
      const key = `${r.name}/${p.identity}`;
      live.add(key);
      const hist = record(r.name, p, now);
      const tracks = el('ul', { class: 'dash-tracks' });
      for (const t of p.tracks || []) {
        tracks.append(el('li', { 'data-track': t.id, 'data-source': t.source },
          `${t.source} (${t.kind}${t.codec ? ', ' + t.codec : ''}${t.muted ? ', muted' : ''}): ${formatBitrate(t.bitrate || 0)}, ${t.packets} packets, ${t.lost || 0} lost`));
      }
      if (!p.tracks || p.tracks.length === 0) tracks.append(el('li', { class: 'hint' }, 'publishes nothing'));
      const latest = hist[hist.length - 1];
      const loss = hist.filter((s) => s.loss !== null).at(-1);
      list.append(el('li', { 'data-identity': p.identity },
        el('div', { class: 'who-line' },
          el('span', { class: 'name' }, p.identity),
          el('span', { class: 'role' }, p.role),
          el('span', { class: 'state' }, `${p.connection_state}${p.transport ? ' via ' + p.transport : ''}`)),
        el('div', { class: 'charts' },
          el('figure', {}, chart('bitrate', hist, (s) => s.bitrate, now),
            el('figcaption', {}, `bitrate ${formatBitrate(latest ? latest.bitrate : 0)}`)),
          el('figure', {}, chart('loss', hist, (s) => s.loss, now, 5),
            el('figcaption', {}, `loss ${loss ? loss.loss.toFixed(1) : '0.0'}%`))),
        tracks));
    }
    if (r.participants.length === 0) list.append(el('li', { class: 'hint' }, 'Nobody is in the room.'));
    section.append(list);
    box.append(section);
  }
  for (const key of samples.keys()) {
    if (!live.has(key)) {
      samples.delete(key);
      last.delete(key);
    }
  }
}

async function download(rec, file) {
  try {
    const res = await fetch(`/v1/recordings/${encodeURIComponent(rec.id)}/files/${encodeURIComponent(file.file)}`, {
      headers: { Authorization: `Bearer ${adminKey()}` },
    });
    if (!res.ok) throw new Error(`download ${file.file}: HTTP ${res.status}`);
    const url = URL.createObjectURL(await res.blob());
    blobURLs.push(url);
    const a = el('a', { href: url, download: file.file });
    document.body.append(a);
    a.click();
    a.remove();
  } catch (err) {
    showError(err);
  }
}

function renderRecordings(recs) {
  const body = $('recordings').querySelector('tbody');
  body.replaceChildren();
  $('recordings').hidden = recs.length === 0;
  $('no-recordings').hidden = recs.length > 0;
  for (const rec of recs) {
    const files = el('td', {});
    for (const seg of rec.segments || []) {
      const a = el('a', { href: '#', class: 'download', 'data-file': seg.file }, seg.file);
      a.addEventListener('click', (ev) => {
        ev.preventDefault();
        download(rec, seg);
      });
      files.append(a, ' ');
    }
    body.append(el('tr', { 'data-recording': rec.id },
      el('td', {}, rec.room), el('td', {}, rec.identity), el('td', {}, rec.status),
      el('td', {}, new Date(rec.started_at).toLocaleString()),
      el('td', {}, `${Math.round((rec.duration_ms || 0) / 1000)} s`),
      el('td', {}, formatBytes(rec.bytes || 0)), files));
  }
}

// thumbnail is an <img> of the incident's snapshot, fetched with the
// admin key once and shown through a blob URL.
function thumbnail(room, inc) {
  const img = el('img', { class: 'incident-thumb', alt: `camera of ${inc.identity} at the incident`, width: 96 });
  let t = thumbs.get(inc.id);
  if (!t) {
    t = { url: '', pending: [] };
    thumbs.set(inc.id, t);
    fetch(`/v1/rooms/${encodeURIComponent(room)}/incidents/${encodeURIComponent(inc.id)}/snapshot`, {
      headers: { Authorization: `Bearer ${adminKey()}` },
      cache: 'no-store',
    }).then(async (res) => {
      if (!res.ok) throw new Error(`snapshot of ${inc.id}: HTTP ${res.status}`);
      const url = URL.createObjectURL(await res.blob());
      if (thumbs.get(inc.id) !== t) {
        URL.revokeObjectURL(url); // no longer listed
        return;
      }
      t.url = url;
      for (const waiting of t.pending) waiting.src = url;
      t.pending = [];
    }).catch(() => {
      if (thumbs.get(inc.id) === t) thumbs.delete(inc.id); // try again on the next poll
    });
  }
  if (t.url) img.src = t.url;
  else t.pending.push(img);
  return img;
}

// renderIncidents lists, per room, the newest incidents first.
function renderIncidents(byRoom) {
  const box = $('incidents');
  box.replaceChildren();
  const listed = new Set();
  for (const { room, incidents } of byRoom) {
    if (incidents.length === 0) continue;
    const body = el('tbody');
    for (const inc of incidents) {
      listed.add(inc.id);
      body.append(el('tr', { 'data-incident': inc.id, 'data-type': inc.type, 'data-identity': inc.identity },
        el('td', { class: 'time' }, new Date(inc.time).toLocaleTimeString()),
        el('td', { class: 'candidate' }, inc.identity),
        el('td', { class: 'type' }, inc.type),
        el('td', { class: 'note' }, inc.note || ''),
        el('td', { class: 'snapshot' }, inc.has_snapshot ? thumbnail(room, inc) : '—')));
    }
    box.append(el('section', { class: 'dash-incidents', 'data-room': room },
      el('h3', {}, room),
      el('table', {},
        el('thead', {}, el('tr', {},
          el('th', { scope: 'col' }, 'Time'), el('th', { scope: 'col' }, 'Candidate'),
          el('th', { scope: 'col' }, 'Type'), el('th', { scope: 'col' }, 'Note'),
          el('th', { scope: 'col' }, 'Snapshot'))),
        body)));
  }
  $('no-incidents').hidden = listed.size > 0;
  for (const [id, t] of thumbs) {
    if (!listed.has(id)) {
      if (t.url) URL.revokeObjectURL(t.url);
      thumbs.delete(id);
    }
  }
}

async function pollIncidents(key) {
  if (incidentsDisabled) return;
  const byRoom = [];
  for (const room of [...incidentRooms].sort()) {
    try {
      const res = await api(`/v1/rooms/${encodeURIComponent(room)}/incidents?limit=${INCIDENT_LIMIT}`, { token: key });
      byRoom.push({ room, incidents: ((res && res.incidents) || []).slice().reverse() });
    } catch (err) {
      if (err.code === 'incidents_disabled') {
        incidentsDisabled = true;
        $('no-incidents').textContent = 'Incidents are not enabled on this server.';
        $('no-incidents').hidden = false;
        return;
      }
      showError(err);
    }
  }
  renderIncidents(byRoom);
}

async function poll() {
  const key = adminKey();
  if (!key) {
    $('key-section').hidden = false;
    return;
  }
  const now = Date.now();
  try {
    const ready = await fetch('/readyz', { cache: 'no-store' });
    const st = await ready.json();
    $('ready').textContent = `server: ${st.status}`;
  } catch {
    $('ready').textContent = 'server: unreachable';
  }
  try {
    const res = await api('/v1/rooms', { token: key });
    renderRooms((res && res.rooms) || [], now);
    for (const r of (res && res.rooms) || []) {
      if (r.kind === 'proctoring') incidentRooms.add(r.name);
    }
    clearError();
  } catch (err) {
    showError(err);
    if (err.code === 'unauthorized') $('key-section').hidden = false;
  }
  try {
    const res = await api('/v1/recordings', { token: key });
    for (const u of blobURLs) URL.revokeObjectURL(u);
    blobURLs = [];
    renderRecordings((res && res.recordings) || []);
  } catch (err) {
    if (err.code !== 'recordings_disabled') showError(err);
  }
  await pollIncidents(key);
  window.vigilDashboard.polls++;
}

function start() {
  $('interval').textContent = String(INTERVAL_MS / 1000);
  $('window').textContent = String(WINDOW_MS / 60000);
  $('incident-limit').textContent = String(INCIDENT_LIMIT);
  $('key-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    try {
      localStorage.setItem(KEY_STORAGE, $('admin-key').value.trim());
    } catch { /* storage disabled */ }
    $('key-section').hidden = true;
    poll();
  });
  poll();
  setInterval(poll, INTERVAL_MS);
}

start();
