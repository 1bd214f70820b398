// api.js — a small fetch wrapper for Vigil's HTTP API (docs/protocol.md).
// Every call sends and receives JSON; an HTTP error answers
// {"error":{"code","message"}} and is thrown as an ApiError carrying that
// code, so callers can show it plainly.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
  }
}

// api calls path with method and an optional JSON body, authorized with the
// bearer token when given. It resolves to the parsed reply (null for an
// empty one) and rejects with an ApiError for an HTTP error, or with the
// fetch TypeError when the server cannot be reached.
export async function api(path, { method = 'GET', token, body } = {}) {
  const headers = { Accept: 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: 'no-store',
  });
  const text = await res.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!res.ok) {
    const err = data && data.error;
    throw new ApiError(
      res.status,
      (err && err.code) || `http_${res.status}`,
      (err && err.message) || text.trim() || res.statusText,
    );
  }
  return data;
}

// describe turns an error into one plain line for the page.
export function describe(err) {
  if (err instanceof ApiError) return `${err.message} (${err.code})`;
  if (err instanceof TypeError) return `Cannot reach the server: ${err.message}`;
  return String((err && err.message) || err);
}
