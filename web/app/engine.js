// The in-browser engine as the pages see it: one Web Worker (engine-worker.js) per page, with
// promise-returning calls, progress and token callbacks, and Cancel. A generation stops at its
// next token (the worker awaits a macrotask there). Anything else (a generation's compressing
// too, before its first token) is cancelled by terminating
// the worker, because the wasm engine does not yield while it computes on the CPU; the model
// is then loaded again from its source (the Cache API or the files picked), so the page keeps it.

const KEY_SOURCE = 'refusal-lens.browser-model';

/** Why a call ended without a result because the user cancelled it. */
export class Cancelled extends Error {
  constructor() {
    super('cancelled');
  }
}

class BrowserEngine {
  constructor() {
    this.worker = null;
    this.pending = new Map();
    this.nextId = 1;
    /** The loaded model (EngineInfo of web/src/engine.rs plus timings), or null. */
    this.info = null;
    /** The source of the loaded model, as load() was given it. */
    this.source = null;
    this.listeners = new Set();
    /** Bytes of the engine's WebAssembly memory after the last call (it never shrinks). */
    this.memoryBytes = null;
  }

  /** `fn(info)` whenever a model is loaded or dropped; returns the unsubscribe function. */
  subscribe(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  setInfo(info, source) {
    this.info = info;
    this.source = info ? source : null;
    for (const fn of this.listeners) fn(info);
  }

  ensureWorker() {
    if (this.worker) return this.worker;
    this.worker = new Worker(new URL('./engine-worker.js', import.meta.url), { type: 'module' });
    this.worker.onmessage = ({ data }) => {
      const call = this.pending.get(data.id);
      if (!call) return;
      if (data.type === 'progress' || data.type === 'token') {
        // progress before tokens: the generation is still compressing, and never yields
        call.computing = data.type === 'progress';
        call.onEvent?.(data);
        return;
      }
      this.pending.delete(data.id);
      if (data.memory) this.memoryBytes = data.memory;
      if (data.type === 'done') call.resolve(data.result);
      else if (data.error === 'cancelled') call.reject(new Cancelled());
      else call.reject(new Error(data.error));
    };
    this.worker.onerror = (e) => {
      e.preventDefault();
      this.reset(new Error(`the engine stopped: ${e.message || 'worker error'}`));
    };
    return this.worker;
  }

  /** Ends the worker (and with it the model); every pending call rejects with `error`. */
  reset(error) {
    this.worker?.terminate();
    this.worker = null;
    this.memoryBytes = null;
    for (const call of this.pending.values()) call.reject(error);
    this.pending.clear();
    this.setInfo(null);
  }

  call(type, fields, onEvent) {
    const worker = this.ensureWorker();
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, onEvent, type });
      worker.postMessage({ id, type, ...fields });
    });
  }

  /** Download size, memory needs and shape of a checkpoint, from its headers. */
  inspect(source) {
    return this.call('inspect', { source });
  }

  /** Downloads (or reads from the cache) and loads a checkpoint; `onEvent` gets progress. */
  async load(source, backend, onEvent) {
    this.setInfo(null);
    const info = { ...(await this.call('load', { source, backend }, onEvent)), label: source.label };
    this.loaded = { source, backend };
    this.setInfo(info, source);
    if (source.kind === 'urls') remember(source, backend, info);
    return info;
  }

  /** The playground's completions (generate.json's fields); `onEvent` gets each token. */
  async generate(request, onEvent) {
    const report = await this.call('generate', { request }, onEvent);
    report.model = { ...report.model, label: this.info?.label };
    return report;
  }

  /** A request kind's fields at the tab's defaults, keyed by flag name (`n-train`). */
  defaults(kind) {
    return this.call('defaults', { kind });
  }

  /** METHOD §3-6 on the built-in prompt sets; `onEvent` gets progress ({stage, done, total}). */
  directions(request, onEvent) {
    return this.call('directions', { request }, onEvent);
  }

  /** METHOD §9 on recipes compressed in the tab (compare.json's fields); `onEvent` gets progress. */
  compare(request, onEvent) {
    return this.call('compare', { request }, onEvent);
  }

  /** METHOD §10's AIRD study (the .aird.json's fields); `onEvent` gets progress. */
  aird(request, onEvent) {
    return this.call('aird', { request }, onEvent);
  }

  /** Last-position logits of the chat-formatted `prompt` (a Float32Array). */
  logits(prompt) {
    return this.call('logits', { prompt });
  }

  /**
   * Stops what runs: a generation at its next token; anything else by ending the worker, then
   * (unless a load was cancelled) loading the same model again.
   */
  cancel() {
    const calls = [...this.pending.values()];
    if (!calls.length) return;
    if (calls.every((c) => c.type === 'generate' && !c.computing)) {
      this.worker.postMessage({ type: 'cancel' });
      return;
    }
    const reload = calls.some((c) => c.type === 'load') ? null : this.source && { ...this.loaded };
    this.reset(new Cancelled());
    if (reload) {
      this.reloading = this.load(reload.source, reload.backend, () => {}).catch((e) => {
        console.error('reloading the model after Cancel failed:', e);
      }).finally(() => { this.reloading = null; });
    }
  }

  /** Whether a call is running. */
  get busy() {
    return this.pending.size > 0;
  }

  /** Whether a generation is running (a page being left stops its own). */
  get generating() {
    return [...this.pending.values()].some((c) => c.type === 'generate');
  }
}

/**
 * Runs `work()` (which uses the engine) under a job panel: the panel shows it running, its
 * Cancel cancels the engine, and it ends as succeeded, cancelled or failed. Resolves with
 * true when the work finished and false when it was cancelled; any other error is shown on
 * the panel and thrown again.
 */
export async function runInPanel(panel, work) {
  panel.attach({ cancel: async () => engine.cancel() });
  panel.event({ type: 'started' });
  try {
    await work();
  } catch (e) {
    if (e instanceof Cancelled) {
      panel.event({ type: 'cancelled' });
      return false;
    }
    panel.event({ type: 'failed', error: e.message });
    throw e;
  }
  panel.event({ type: 'succeeded' });
  return true;
}

/** The page's engine. */
export const engine = new BrowserEngine();
// For the browser tests and the console.
window.refusalEngine = engine;

function remember(source, backend, info) {
  try {
    localStorage.setItem(KEY_SOURCE, JSON.stringify({
      source, backend, label: info.name || info.label || info.file, n_params: info.n_params,
    }));
  } catch {
    // not remembered
  }
}

/** The last model loaded from URLs in this browser ({source, backend, label}), or null. */
export function rememberedSource() {
  try {
    const r = JSON.parse(localStorage.getItem(KEY_SOURCE));
    return r && r.source && r.source.kind === 'urls' ? r : null;
  } catch {
    return null;
  }
}

/** A model's short description: "SmolLM2 · 30 layers × 576 · 135 M parameters". */
export function describe(info) {
  const params = info.n_params >= 1e9 ? `${(info.n_params / 1e9).toFixed(1)} B` : `${Math.round(info.n_params / 1e6)} M`;
  return `${info.name || info.label || info.file} · ${info.architecture} · ${info.n_layers} layers × ${info.d_model} · ${params} parameters`;
}
