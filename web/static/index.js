// index.js — the home page: remember the admin key, create rooms, list
// them, and mint join links per role (POST /v1/rooms, GET /v1/rooms,
// POST /v1/rooms/{room}/tokens). API errors are shown as they come.

import { api, describe } from './api.js';

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = 'vigil.adminKey';

const ROLES = {
  conference: ['participant'],
  broadcast: ['host', 'viewer'],
  proctoring: ['candidate', 'proctor'],
};

function adminKey() {
  return $('admin-key').value.trim();
}

function showError(err) {
  const el = $('error');
  el.textContent = describe(err);
  el.hidden = false;
}

function clearError() {
  $('error').hidden = true;
}

function requireKey() {
  if (adminKey()) return true;
  showError(new Error('Enter the admin key first.'));
  $('admin-key').focus();
  return false;
}

// ---------------------------------------------------------------- key

function loadKey() {
  try {
    $('admin-key').value = localStorage.getItem(KEY_STORAGE) || '';
  } catch { /* storage disabled */ }
}

function saveKey() {
  try {
    if (adminKey()) localStorage.setItem(KEY_STORAGE, adminKey());
  } catch { /* storage disabled */ }
}

// ---------------------------------------------------------------- rooms

async function createRoom(ev) {
  ev.preventDefault();
  clearError();
  if (!requireKey()) return;
  saveKey();
  const name = $('room-name').value.trim();
  const kind = $('room-kind').value;
  try {
    const room = await api('/v1/rooms', {
      method: 'POST',
      token: adminKey(),
      body: { name, kind },
    });
    showLinks((room && room.name) || name, (room && room.kind) || kind);
    await listRooms();
  } catch (err) {
    showError(err);
  }
}

async function listRooms() {
  if (!adminKey()) return;
  try {
    const res = await api('/v1/rooms', { token: adminKey() });
    renderRooms(Array.isArray(res) ? res : (res && res.rooms) || []);
  } catch (err) {
    showError(err);
  }
}

function renderRooms(rooms) {
  const body = $('rooms').querySelector('tbody');
  body.replaceChildren(...rooms.map((r) => {
    const tr = document.createElement('tr');
    const people = Array.isArray(r.participants) ? r.participants.length
      : (r.participant_count ?? r.num_participants ?? '');
    for (const text of [r.name, r.kind, String(people)]) {
      const td = document.createElement('td');
      td.textContent = text ?? '';
      tr.append(td);
    }
    const td = document.createElement('td');
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'secondary';
    b.textContent = 'Join links';
    b.addEventListener('click', () => showLinks(r.name, r.kind));
    td.append(b);
    tr.append(td);
    return tr;
  }));
  $('rooms').hidden = rooms.length === 0;
  $('no-rooms').hidden = rooms.length !== 0;
}

// ---------------------------------------------------------------- links

function showLinks(room, kind) {
  $('links-room').textContent = `${room} (${kind})`;
  const roles = ROLES[kind] || [];
  $('roles').replaceChildren(...roles.map((role) => roleForm(room, role)));
  $('links').hidden = false;
  $('links').scrollIntoView({ block: 'nearest' });
}

function roleForm(room, role) {
  const form = document.createElement('form');
  form.className = 'role-form';
  form.dataset.role = role;
  const id = `identity-${role}`;
  form.innerHTML = `
    <fieldset>
      <legend></legend>
      <div class="row">
        <label for="${id}">Identity</label>
        <input id="${id}" name="identity" required maxlength="64" placeholder="alice">
        <button type="submit">Get join link</button>
      </div>
      <ul class="links"></ul>
    </fieldset>`;
  form.querySelector('legend').textContent = role;
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearError();
    if (!requireKey()) return;
    const identity = form.elements.identity.value.trim();
    try {
      const res = await api(`/v1/rooms/${encodeURIComponent(room)}/tokens`, {
        method: 'POST',
        token: adminKey(),
        body: { identity, role, ttl_seconds: 3600 },
      });
      form.querySelector('.links').prepend(linkItem(identity, location.origin + res.join_url));
      form.elements.identity.value = '';
    } catch (err) {
      showError(err);
    }
  });
  return form;
}

function linkItem(identity, url) {
  const li = document.createElement('li');
  const who = document.createElement('span');
  who.className = 'name';
  who.textContent = identity;
  const a = document.createElement('a');
  a.href = url;
  a.target = '_blank';
  a.rel = 'noopener';
  a.className = 'join-link';
  a.textContent = url;
  const copy = document.createElement('button');
  copy.type = 'button';
  copy.className = 'secondary';
  copy.textContent = 'Copy';
  copy.addEventListener('click', async () => {
    copy.textContent = (await copyText(url)) ? 'Copied' : 'Copy failed';
    setTimeout(() => { copy.textContent = 'Copy'; }, 1500);
  });
  li.append(who, a, copy);
  return li;
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // Not a secure context, or no permission: fall back to a selection.
    const ta = document.createElement('textarea');
    ta.value = text;
    ta.setAttribute('readonly', '');
    ta.style.position = 'fixed';
    ta.style.opacity = '0';
    document.body.append(ta);
    ta.select();
    let ok = false;
    try {
      ok = document.execCommand('copy');
    } catch {
      ok = false;
    }
    ta.remove();
    return ok;
  }
}

// ---------------------------------------------------------------- wiring

loadKey();
$('key-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  clearError();
  saveKey();
  listRooms();
});
$('forget-key').addEventListener('click', () => {
  try { localStorage.removeItem(KEY_STORAGE); } catch { /* storage disabled */ }
  $('admin-key').value = '';
});
$('create-form').addEventListener('submit', createRoom);
$('refresh').addEventListener('click', () => { clearError(); if (requireKey()) listRooms(); });
listRooms();
