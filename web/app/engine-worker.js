// The in-browser engine's Web Worker: fetches checkpoint files (keeping downloads in the Cache
// API, so a second visit starts without downloading), loads them into the wasm engine
// (web/src/engine.rs) and runs it, so the page never blocks. engine.js is its only client.
//
// Messages in: {id, type, ...}; out: {id, type: 'progress'|'token'|'done'|'error', ...}.
//   inspect {source}            what the checkpoint is and what memory it needs (headers only)
//   load    {source, backend}   download + load; backend 'auto' | 'webgpu' | 'cpu'
//   generate {request}          the playground's completions, streamed as token messages
//                               (after progress messages while compressed columns are made)
//   defaults {kind}             a request kind's fields at the tab's defaults (flag names)
//   directions {request}        METHOD §3-6 on the built-in prompt sets, with progress messages
//   compare {request}           METHOD §9 on recipes compressed in the tab, with progress
//   aird    {request}           METHOD §10: AIRD and its baselines, with progress
//   logits  {prompt}            the chat-formatted prompt's last-position logits
//   cancel                      stop the running generation (a load is stopped by terminating
//                               the worker, which engine.js does)
// A source is {kind: 'urls', files: [{name, url}]} or {kind: 'files', files: [File]}.

import init, { load_engine, inspect_gguf, inspect_hf_config, request_defaults } from '../refusal-web.js';

const CACHE = 'refusal-lens-models-v1';
const ready = init();
let engine = null;
let cancelRequested = false;

self.onmessage = async ({ data: msg }) => {
  if (msg.type === 'cancel') {
    cancelRequested = true;
    return;
  }
  let wasm = null;
  // Every answer says how large the engine's memory has grown (it never shrinks).
  const post = (type, fields = {}, transfer = []) => self.postMessage({
    id: msg.id, type, ...fields, ...(type === 'done' && wasm ? { memory: wasm.memory.buffer.byteLength } : {}),
  }, transfer);
  try {
    wasm = await ready;
    switch (msg.type) {
      case 'inspect':
        post('done', { result: await inspect(msg.source) });
        break;
      case 'load':
        post('done', { result: await load(msg.source, msg.backend, post) });
        break;
      case 'defaults':
        post('done', { result: JSON.parse(request_defaults(msg.kind)) });
        break;
      case 'generate':
        post('done', { result: JSON.parse(await generate(msg.request, post)) });
        break;
      case 'directions':
      case 'compare':
      case 'aird': {
        cancelRequested = false;
        const progress = progressPoster(post);
        const report = await loaded()[msg.type](JSON.stringify(msg.request), (stage, done, total) => {
          progress(stage, done, total);
          return !cancelRequested;
        });
        post('done', { result: JSON.parse(report) });
        break;
      }
      case 'logits': {
        const logits = await loaded().prompts_logits([msg.prompt]);
        post('done', { result: logits }, [logits.buffer]);
        break;
      }
      default:
        throw new Error(`unknown message ${msg.type}`);
    }
  } catch (e) {
    post('error', { error: String((e && e.message) || e) });
  }
};

/** The loaded engine, or the error a page shows when there is none. */
function loaded() {
  if (!engine) throw new Error('no model is loaded in this browser');
  return engine;
}

/** `post`'s progress messages: at most one per 100 ms, and always a stage's last. */
function progressPoster(post) {
  let last = 0;
  return (stage, done, total) => {
    const now = performance.now();
    if (now - last > 100 || done === total) {
      last = now;
      post('progress', { stage, done, total });
    }
  };
}

// ------------------------------------------------------------------ reading files

const isGguf = (name) => /\.gguf$/i.test(name);

/** The Cache API, when this context has it (secure contexts only: https or localhost). */
async function cache() {
  try {
    return self.caches ? await caches.open(CACHE) : null;
  } catch {
    return null;
  }
}

/**
 * The first `n` bytes of a source file: a Range request (or the cached copy), falling back
 * to reading the start of a full answer when the host ignores Range.
 */
async function head(file, n) {
  if (file instanceof Blob) return new Uint8Array(await file.slice(0, n).arrayBuffer());
  const cached = await (await cache())?.match(file.url);
  if (cached) return new Uint8Array(await (await cached.blob()).slice(0, n).arrayBuffer());
  const res = await fetch(file.url, { headers: { range: `bytes=0-${n - 1}` } });
  if (!res.ok) throw new Error(`${file.name}: ${res.status} ${res.statusText} (${file.url})`);
  if (res.status === 206) return new Uint8Array(await res.arrayBuffer());
  const reader = res.body.getReader();
  const out = new Uint8Array(n);
  let got = 0;
  while (got < n) {
    const { done, value } = await reader.read();
    if (done) break;
    const take = Math.min(value.length, n - got);
    out.set(value.subarray(0, take), got);
    got += take;
  }
  reader.cancel().catch(() => {});
  return out.subarray(0, got);
}

/** A file's size in bytes, without downloading it (null when the host does not say). */
async function sizeOf(file) {
  if (file instanceof Blob) return file.size;
  const cached = await (await cache())?.match(file.url);
  if (cached) return (await cached.blob()).size;
  const res = await fetch(file.url, { method: 'HEAD' });
  if (!res.ok) throw new Error(`${file.name}: ${res.status} ${res.statusText} (${file.url})`);
  const n = Number(res.headers.get('content-length'));
  return Number.isFinite(n) && n > 0 ? n : null;
}

const nameOf = (f) => (f instanceof Blob ? f.webkitRelativePath || f.name : f.name);

/**
 * The source's files that exist: a URL file marked `optional` (tokenizer_config.json,
 * chat_template.jinja of a checkpoint folder) is dropped when the host has no such file.
 */
async function present(source) {
  if (source.kind !== 'urls') return source.files;
  const found = await Promise.all(source.files.map(async (f) => {
    if (!f.optional) return f;
    if (await (await cache())?.match(f.url)) return f;
    const res = await fetch(f.url, { method: 'HEAD' }).catch(() => null);
    return res && res.ok ? f : null;
  }));
  return found.filter(Boolean);
}

/** What the checkpoint is, its download size and the memory its weights need. */
async function inspect(source) {
  const files = await present(source);
  const sizes = await Promise.all(files.map(sizeOf));
  const download = sizes.every((s) => s !== null) ? sizes.reduce((a, b) => a + b, 0) : null;
  const cached = source.kind === 'urls' ? await allCached(files) : false;
  const gguf = files.find((f) => isGguf(nameOf(f)));
  let checkpoint;
  if (gguf) {
    // The header (metadata with the vocabulary, then tensor infos) is a few MB at most.
    for (let n = 1 << 22; ; n *= 4) {
      let answer;
      try {
        answer = JSON.parse(inspect_gguf(await head(gguf, n)));
      } catch (e) {
        throw new Error(`${nameOf(gguf)}: ${e.message}`);
      }
      if (answer.checkpoint) {
        checkpoint = answer.checkpoint;
        break;
      }
      if (n >= 1 << 28) throw new Error(`${nameOf(gguf)}: no complete GGUF header in its first ${n >> 20} MB`);
    }
  } else {
    const config = files.find((f) => nameOf(f).split('/').pop() === 'config.json');
    if (!config) throw new Error('give one .gguf file, or a Hugging Face checkpoint (config.json, tokenizer.json, *.safetensors)');
    // The engine's errors name config.json already.
    checkpoint = JSON.parse(inspect_hf_config(await head(config, 1 << 20)));
  }
  return { checkpoint, download, cached, files: files.map(nameOf) };
}

async function allCached(files) {
  const c = await cache();
  if (!c) return false;
  for (const f of files) if (!(await c.match(f.url))) return false;
  return true;
}

/** Downloads one file (or takes it from the cache), reporting bytes as they arrive. */
async function fetchFile(file, onBytes) {
  const c = await cache();
  const cached = await c?.match(file.url);
  if (cached) {
    const bytes = new Uint8Array(await cached.arrayBuffer());
    onBytes(bytes.length, true);
    return bytes;
  }
  const res = await fetch(file.url);
  if (!res.ok) throw new Error(`${file.name}: ${res.status} ${res.statusText} (${file.url})`);
  const total = Number(res.headers.get('content-length')) || 0;
  const reader = res.body.getReader();
  let out = new Uint8Array(total);
  let got = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (got + value.length > out.length) {
      const grown = new Uint8Array(Math.max(out.length * 2, got + value.length));
      grown.set(out.subarray(0, got));
      out = grown;
    }
    out.set(value, got);
    got += value.length;
    onBytes(value.length, false);
  }
  if (total && got !== total) throw new Error(`${file.name}: the download stopped at ${got} of ${total} bytes`);
  const bytes = got === out.length ? out : out.slice(0, got);
  if (c) {
    // Keep it for the next visit; a full quota only costs that.
    await c.put(file.url, new Response(bytes, { headers: { 'content-type': 'application/octet-stream' } }))
      .catch(() => {});
  }
  return bytes;
}

async function readAll(source, post) {
  const files = await present(source);
  if (source.kind === 'files') {
    const bytes = [];
    for (const f of files) bytes.push(new Uint8Array(await f.arrayBuffer()));
    return { names: files.map(nameOf), bytes, fromCache: false };
  }
  const sizes = await Promise.all(files.map((f) => sizeOf(f).catch(() => null)));
  const total = sizes.every((s) => s !== null) ? sizes.reduce((a, b) => a + b, 0) : 0;
  let done = 0;
  let fromCache = true;
  const progress = progressPoster(post);
  const bytes = [];
  for (const f of files) {
    bytes.push(await fetchFile(f, (n, cached) => {
      done += n;
      fromCache &&= cached;
      progress('download', done, total);
    }));
  }
  return { names: files.map(nameOf), bytes, fromCache };
}

// ------------------------------------------------------------------ running the engine

function quantizedGguf(names, bytes) {
  const i = names.findIndex((n) => n.toLowerCase().endsWith('.gguf'));
  if (i < 0) return false;
  try {
    return !!JSON.parse(inspect_gguf(bytes[i])).checkpoint?.quantized;
  } catch {
    return false; // loading reports what is wrong with the file
  }
}

async function hasAdapter() {
  try {
    return !!(self.navigator.gpu && (await navigator.gpu.requestAdapter()));
  } catch {
    return false;
  }
}

async function load(source, backend, post) {
  engine?.free();
  engine = null;
  const started = performance.now();
  const { names, bytes, fromCache } = await readAll(source, post);
  const downloaded = performance.now();
  // A quantized GGUF runs on the CPU unless WebGPU is asked for: the CPU engine multiplies its
  // blocks as they are, while WebGPU holds the weights as f32 (four to eight times the memory).
  const webgpu = backend === 'webgpu'
    || (backend === 'auto' && !quantizedGguf(names, bytes) && (await hasAdapter()));
  const progress = progressPoster(post);
  const onWeights = (done, total) => progress('load', done, total);
  let fellBack = null;
  try {
    engine = await load_engine(webgpu, names, bytes, onWeights);
  } catch (e) {
    if (backend !== 'auto' || !webgpu) throw e;
    // WebGPU was offered but failed (limits, driver): the CPU path still works.
    fellBack = String((e && e.message) || e);
    engine = await load_engine(false, names, bytes, onWeights);
  }
  return {
    ...JSON.parse(engine.info()),
    fell_back: fellBack,
    from_cache: fromCache,
    download_s: (downloaded - started) / 1000,
    load_s: (performance.now() - downloaded) / 1000,
  };
}

async function generate(request, post) {
  cancelRequested = false;
  const progress = progressPoster(post);
  return loaded().generate(JSON.stringify(request), async (variant, text) => {
    post('token', { variant, text });
    // A macrotask: the Cancel message is handled here.
    await new Promise((resolve) => setTimeout(resolve, 0));
    return !cancelRequested;
  }, (stage, done, total) => {
    progress(stage, done, total);
    return !cancelRequested;
  });
}
