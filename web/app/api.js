// The server's HTTP API (server/src/serve/api.rs): JSON calls, jobs and their Server-Sent Events.

/** An error answer of the API: `{"error": "..."}` with its HTTP status. */
export class ApiError extends Error {
  constructor(status, message, retryAfter) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

/** Where the server's API key is kept for this tab, once the user has given it. */
const KEY_STORAGE = 'refusal-lens-api-key';

/**
 * `fetch` + JSON, throwing ApiError with the server's message on a non-2xx answer. A server
 * started with an API key answers 401 to jobs submitted or cancelled without it: the user is
 * asked for it once, and it is kept for the tab.
 */
export async function api(path, { method = 'GET', body, headers = {} } = {}) {
  const init = { method, headers: { ...headers } };
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const send = async () => {
    const key = sessionStorage.getItem(KEY_STORAGE);
    if (key) init.headers.authorization = `Bearer ${key}`;
    try {
      return await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, `the server cannot be reached (${e.message})`);
    }
  };
  let res = await send();
  if (res.status === 401 && method !== 'GET') {
    const key = window.prompt('This server needs its API key to run or cancel jobs:');
    if (key) {
      sessionStorage.setItem(KEY_STORAGE, key.trim());
      res = await send();
    }
  }
  const text = await res.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    // not JSON: keep the text for the message
  }
  if (!res.ok) {
    let message = (json && json.error) || text || res.statusText;
    const retry = res.headers.get('retry-after');
    if (res.status === 503 && retry) message += ` (try again in ${retry} s)`;
    throw new ApiError(res.status, message, retry ? Number(retry) : undefined);
  }
  return json;
}

export const listModels = () => api('/api/models');
export const jobKinds = () => api('/api/jobs/kinds');
/** The server's quick direction: {model, state: ready|running|failed|off, result_id, job_id, error}. */
export const quickDirection = () => api('/api/quick-direction');
export const getResult = (id) => api(`/api/results/${encodeURIComponent(id)}`);
export const resultFileUrl = (id, name) =>
  `/api/results/${encodeURIComponent(id)}/files/${name.split('/').map(encodeURIComponent).join('/')}`;
export const exportUrl = (id) => `/api/results/${encodeURIComponent(id)}/export`;
export const shareUrl = (id) => new URL(`/r/${id}`, location.origin).href;

/** Delete tokens of the results this browser's jobs made, by result id (given once, at submit). */
const TOKENS_STORAGE = 'refusal-lens-delete-tokens';

function deleteTokens() {
  try {
    return JSON.parse(localStorage.getItem(TOKENS_STORAGE) || '{}');
  } catch {
    return {};
  }
}

function rememberDeleteToken(resultId, token) {
  const tokens = deleteTokens();
  tokens[resultId] = token;
  localStorage.setItem(TOKENS_STORAGE, JSON.stringify(tokens));
}

/** Whether this browser may delete the result (its job was submitted here). */
export const canDelete = (resultId) => Boolean(deleteTokens()[resultId]);

/** `DELETE /api/results/{id}` with the token its job was given; its link then answers 410. */
export async function deleteResult(resultId) {
  const tokens = deleteTokens();
  await api(`/api/results/${encodeURIComponent(resultId)}`, {
    method: 'DELETE', headers: { 'x-delete-token': tokens[resultId] || '' },
  });
  delete tokens[resultId];
  localStorage.setItem(TOKENS_STORAGE, JSON.stringify(tokens));
}

/** Events a job can end with. */
const FINAL = new Set(['succeeded', 'failed', 'cancelled']);
const EVENT_TYPES = ['queued', 'started', 'progress', 'token', 'succeeded', 'failed', 'cancelled'];

/**
 * A submitted job: `POST /api/jobs`, then its events (`GET /api/jobs/{id}/events`, SSE).
 * `onEvent(event)` gets every event's JSON (with its `type`), in order, until a final one.
 * `done` resolves with the final event.
 */
export class Job {
  static async submit(kind, args, onEvent) {
    const created = await api('/api/jobs', { method: 'POST', body: { kind, args } });
    return new Job(created, onEvent);
  }

  constructor(created, onEvent) {
    this.id = created.id;
    this.argv = created.argv;
    this.final = null;
    this.done = new Promise((resolve) => {
      this.resolve = resolve;
    });
    // EventSource reconnects on its own after a dropped connection, sending Last-Event-ID;
    // the server resumes after that event.
    this.source = new EventSource(created.events_url);
    for (const type of EVENT_TYPES) {
      this.source.addEventListener(type, (m) => {
        let event;
        try {
          event = JSON.parse(m.data);
        } catch {
          event = { type: 'failed', error: `unreadable event: ${m.data}` };
        }
        if (this.final) return;
        if (FINAL.has(event.type)) {
          this.final = event;
          this.source.close();
          if (event.result_id && created.delete_token) rememberDeleteToken(event.result_id, created.delete_token);
        }
        onEvent(event);
        if (this.final) this.resolve(this.final);
      });
    }
  }

  /** `DELETE /api/jobs/{id}`: the job stops at its next progress report (409 once it ended). */
  async cancel() {
    try {
      await api(`/api/jobs/${this.id}`, { method: 'DELETE' });
    } catch (e) {
      if (e.status !== 409) throw e;
    }
  }

  /** Stop listening (the job itself runs on). */
  close() {
    this.source.close();
  }
}
