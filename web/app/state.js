// What the app remembers in this browser (localStorage): the models list of this page load,
// the directions this browser extracted or opened, and the one the playground uses.

import { listModels } from './api.js';

let models = null;

/**
 * Whether this page came from a Refusal Lens server (its API answers); false on a static host,
 * where only the in-browser engine runs models.
 */
export async function hasServer() {
  try {
    await models$();
    return true;
  } catch {
    return false;
  }
}

/** GET /api/models, once per page load. */
export function models$() {
  if (!models) {
    models = listModels().catch((e) => {
      models = null;
      throw e;
    });
  }
  return models;
}

const KEY_DIRS = 'refusal-lens.directions';
const KEY_DIR = 'refusal-lens.direction';

function read(key, fallback) {
  try {
    return JSON.parse(localStorage.getItem(key)) ?? fallback;
  } catch {
    return fallback;
  }
}

function write(key, value) {
  try {
    localStorage.setItem(key, JSON.stringify(value));
  } catch {
    // private mode or full: the app works, it just forgets
  }
}

/** Directions known here: [{id, model, layer, position, created_at}], newest first. */
export function knownDirections() {
  return read(KEY_DIRS, []).filter((d) => d && /^[0-9a-f]{32}$/.test(d.id));
}

/** Remember a stored directions result (from its /api/results/{id} answer). */
export function rememberDirection(result) {
  const dir = result.report?.['direction.json'];
  const entry = {
    id: result.id,
    model: result.request?.args?.model ?? result.model?.name ?? '?',
    layer: dir?.layer,
    position: dir?.position,
    created_at: result.created_at,
  };
  const rest = knownDirections().filter((d) => d.id !== entry.id);
  write(KEY_DIRS, [entry, ...rest].slice(0, 20));
  return entry;
}

const KEY_LOCAL = 'refusal-lens.browser-directions';

/**
 * Directions found in this browser: [{id: 'local:…', model, layer, position, vector,
 * created_at}], newest first. The in-browser engine uses them; the server cannot.
 */
export function browserDirections() {
  return read(KEY_LOCAL, []).filter((d) => d && typeof d.id === 'string' && d.id.startsWith('local:') && Array.isArray(d.vector));
}

/** Remember a direction found in this browser; returns its entry. */
export function rememberBrowserDirection({ model, layer, position, vector }) {
  const entry = { id: `local:${Date.now().toString(36)}`, model, layer, position, vector, created_at: new Date().toISOString() };
  write(KEY_LOCAL, [entry, ...browserDirections()].slice(0, 8));
  return entry;
}

/** The direction the playground uses (a result id, or a browser direction's id), or null. */
export function currentDirection() {
  return read(KEY_DIR, null);
}

export function setCurrentDirection(id) {
  write(KEY_DIR, id);
}
