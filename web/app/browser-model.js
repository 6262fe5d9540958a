// "Run in this browser": choose a checkpoint (one of the server's models, a URL, or files on
// this computer), see its download size and memory needs, then download and load it into the
// in-browser engine (engine.js) on WebGPU or the CPU, with progress and Cancel.

import { h, field, message, bytes, setMode } from './ui.js';
import { engine, Cancelled, describe, rememberedSource } from './engine.js';

const absolute = (u) => new URL(u, location.href).href;

/** The engine source of one of the server's models (GET /api/models entry). */
export function serverSource(m) {
  if (m.format === 'gguf') {
    return { kind: 'urls', label: m.id, files: [{ name: `${m.id}.gguf`, url: absolute(`/api/models/${encodeURIComponent(m.id)}/file`) }] };
  }
  return {
    kind: 'urls',
    label: m.id,
    files: m.files.map((n) => ({ name: n, url: absolute(`/api/models/${encodeURIComponent(m.id)}/files/${encodeURIComponent(n)}`) })),
  };
}

/** A URL typed by the user: a .gguf file, or a folder holding a Hugging Face checkpoint. */
export function urlSource(text) {
  const url = absolute(text.trim());
  if (/\.gguf($|[?#])/i.test(url)) {
    const name = decodeURIComponent(new URL(url).pathname.split('/').pop());
    return { kind: 'urls', label: name, files: [{ name, url }] };
  }
  const base = url.endsWith('/') ? url : `${url}/`;
  const file = (name, optional) => ({ name, url: base + name, optional });
  return {
    kind: 'urls',
    label: decodeURIComponent(new URL(base).pathname.split('/').filter(Boolean).pop() || new URL(base).host),
    files: [file('config.json'), file('tokenizer.json'), file('model.safetensors'),
      file('tokenizer_config.json', true), file('chat_template.jinja', true)],
  };
}

/** Which backend 'auto' would use here. */
async function adapterNote() {
  if (!navigator.gpu) return 'this browser has no WebGPU: the CPU (WebAssembly) runs the model';
  try {
    const adapter = await navigator.gpu.requestAdapter();
    return adapter ? 'WebGPU adapter found: auto uses it, except for a quantized GGUF, which the CPU multiplies as it is'
      : 'no WebGPU adapter: auto uses the CPU';
  } catch {
    return 'no WebGPU adapter: auto uses the CPU';
  }
}

/**
 * The loader panel. `serverModels`: the server's models ([] on a static host).
 * Returns {el}; the engine announces the loaded model to its subscribers.
 */
export function browserModelPanel(serverModels) {
  const kinds = [];
  if (serverModels.length) kinds.push(['server', 'from this server']);
  kinds.push(['url', 'from a URL'], ['files', 'from files on this computer']);
  const sourceKind = h('select', { name: 'source-kind' }, kinds.map(([v, l]) => h('option', { value: v }, l)));
  const serverPick = h('select', { name: 'server-model' }, serverModels.map((m) =>
    h('option', { value: m.id }, `${m.id} · ${bytes(m.bytes)}${m.available ? '' : ' (not downloaded on the server yet)'}`)));
  const smallest = [...serverModels].filter((m) => m.available).sort((a, b) => a.bytes - b.bytes)[0];
  if (smallest) serverPick.value = smallest.id;
  const url = h('input', { name: 'model-url', type: 'url', placeholder: 'https://…/model.gguf, or a folder with config.json, tokenizer.json, model.safetensors' });
  const files = h('input', { name: 'model-files', type: 'file', multiple: true, accept: '.gguf,.json,.safetensors,.jinja' });
  const folder = h('input', { name: 'model-folder', type: 'file', webkitdirectory: true });
  const drop = h('div', { class: 'drop-zone' }, 'Drop a .gguf file, a checkpoint folder, or config.json + tokenizer.json + .safetensors, here');
  const backend = h('select', { name: 'backend' },
    h('option', { value: 'auto' }, 'auto'), h('option', { value: 'webgpu' }, 'WebGPU'), h('option', { value: 'cpu' }, 'CPU (WebAssembly)'));
  const backendNote = h('span', { class: 'hint' });
  adapterNote().then((t) => { backendNote.textContent = t; });

  const needs = h('div', { class: 'needs hint' });
  const loadButton = h('button', { type: 'button', disabled: true }, 'Download and load');
  const cancel = h('button', { type: 'button', class: 'secondary', hidden: true }, 'Cancel');
  const bar = h('progress', { max: 1, value: 0, hidden: true });
  const state = h('span', { class: 'job-detail' });
  const errors = h('div');
  const loaded = h('div', { class: 'loaded-model' });

  let droppedFiles = [];
  let current = null; // {source, inspection}
  let checking = 0;

  const rows = {
    server: field('Model', serverPick),
    url: h('div', { class: 'wide' }, field('URL', url, 'the host must allow this page to read it (CORS)')),
    files: h('div', { class: 'wide' }, h('div', { class: 'form-grid' },
      field('Files', files), field('or a folder', folder, 'a Hugging Face checkpoint folder')), drop),
  };

  const source = () => {
    switch (sourceKind.value) {
      case 'server': {
        const m = serverModels.find((x) => x.id === serverPick.value);
        return m ? serverSource(m) : null;
      }
      case 'url':
        return url.value.trim() ? urlSource(url.value) : null;
      default: {
        const picked = files.files.length ? [...files.files] : checkpointFiles([...folder.files]);
        const chosen = droppedFiles.length ? droppedFiles : picked;
        const main = chosen.find((f) => /\.gguf$/i.test(f.name)) || chosen[0];
        return chosen.length ? { kind: 'files', label: main?.name, files: chosen } : null;
      }
    }
  };

  /** Reads the chosen checkpoint's headers and shows what loading it takes. */
  let checkedKey = null;
  const check = async () => {
    const src = source();
    // The same source again (e.g. the URL field's change event when the button is clicked):
    // keep what was read, so the click is not lost to a re-check.
    const key = src && JSON.stringify([src.kind, src.files.map((f) => [f.name, f.url, f.size, f.lastModified])]);
    if (key === checkedKey) return;
    checkedKey = key;
    errors.replaceChildren();
    current = null;
    loadButton.disabled = true;
    if (!src) {
      needs.textContent = '';
      return;
    }
    const mine = ++checking;
    needs.textContent = 'reading the checkpoint’s header…';
    try {
      const inspection = await engine.inspect(src);
      if (mine !== checking) return;
      current = { source: src, inspection };
      const c = inspection.checkpoint;
      const dl = inspection.cached ? 'already in this browser’s cache'
        : inspection.download ? `download ${bytes(inspection.download)}` : 'download size unknown';
      needs.replaceChildren(
        h('strong', {}, `${c.name || src.label || inspection.files[0]} · ${c.architecture} · ${c.n_layers} layers × ${c.d_model} · ${(c.n_params / 1e6).toFixed(0)} M parameters`),
        h('br'),
        c.quantized
          ? `${dl} · the weights need about ${bytes(c.cpu_bytes)} of memory, kept quantized on this tab's CPU (${bytes(c.f32_bytes)} as f32 on the GPU)`
          : `${dl} · the weights need about ${bytes(c.f32_bytes)} of memory (f32), on the GPU or in this tab`);
      const need = c.quantized ? c.cpu_bytes : c.f32_bytes;
      needs.dataset.needs = String(need);
      const deviceGb = navigator.deviceMemory; // Chromium rounds to at most 8
      if (need > 3.5e9) {
        needs.append(h('br'), h('span', { class: 'warn' }, 'More than a browser tab can hold (4 GB): run this model on the server.'));
        return;
      }
      if (deviceGb && need > deviceGb * 1e9 / 2) {
        needs.append(h('br'), h('span', { class: 'warn' }, `This device reports about ${deviceGb} GB of memory: loading may fail.`));
      }
      loadButton.disabled = false;
    } catch (e) {
      if (mine !== checking || e instanceof Cancelled) return;
      checkedKey = null; // a retry reads it again
      needs.textContent = '';
      errors.replaceChildren(message(e.message));
    }
  };

  const showKind = () => {
    for (const [k, el] of Object.entries(rows)) el.hidden = k !== sourceKind.value;
    check();
  };
  sourceKind.addEventListener('change', showKind);
  serverPick.addEventListener('change', check);
  url.addEventListener('change', check);
  files.addEventListener('change', () => {
    droppedFiles = [];
    folder.value = '';
    check();
  });
  folder.addEventListener('change', () => {
    droppedFiles = [];
    files.value = '';
    check();
  });
  drop.addEventListener('dragover', (e) => {
    e.preventDefault();
    drop.classList.add('over');
  });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', async (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    try {
      droppedFiles = await droppedCheckpoint(e.dataTransfer);
    } catch (err) {
      errors.replaceChildren(message(`reading the dropped folder: ${err.message}`));
      return;
    }
    drop.textContent = droppedFiles.map((f) => f.name).join(', ') || 'no checkpoint files in what was dropped';
    check();
  });

  /** Downloads and loads `src`, showing progress; Cancel ends it. */
  const runLoad = async (src, backendValue) => {
    errors.replaceChildren();
    loadButton.disabled = true;
    cancel.hidden = false;
    bar.hidden = false;
    bar.removeAttribute('value');
    state.textContent = 'starting…';
    try {
      const info = await engine.load(src, backendValue, (e) => {
        bar.max = Math.max(1, e.total || 1);
        if (e.total) bar.value = e.done;
        state.textContent = e.stage === 'download'
          ? `downloading ${bytes(e.done)}${e.total ? ` of ${bytes(e.total)}` : ''}`
          : `loading weights ${e.done} / ${e.total}`;
      });
      state.textContent = `loaded in ${(info.download_s + info.load_s).toFixed(1)} s${info.from_cache ? ' (from this browser’s cache)' : ''}`
        + (engine.memoryBytes ? ` · the engine holds ${bytes(engine.memoryBytes)} of this tab's memory` : '');
      if (info.fell_back) errors.replaceChildren(message(`WebGPU failed (${info.fell_back}); the model runs on the CPU.`, 'info'));
    } catch (e) {
      state.textContent = e instanceof Cancelled ? 'cancelled' : 'failed';
      if (!(e instanceof Cancelled)) errors.replaceChildren(message(e.message));
    } finally {
      cancel.hidden = true;
      bar.hidden = true;
      loadButton.disabled = !current;
    }
  };
  loadButton.addEventListener('click', () => current && runLoad(current.source, backend.value));
  cancel.addEventListener('click', () => engine.cancel());

  // A model loaded from URLs before is offered again (its files are in the cache).
  const again = rememberedSource();
  const againButton = again
    ? h('button', { type: 'button', class: 'secondary', onclick: () => runLoad(again.source, again.backend) },
      `Load ${again.label} again`)
    : null;

  const showLoaded = (info) => {
    loaded.replaceChildren(info
      ? h('span', {}, h('span', { class: 'badge complies' }, info.backend === 'webgpu' ? 'WebGPU' : 'CPU'), ' ', describe(info))
      : h('span', { class: 'hint' }, 'No model in this browser yet.'));
    loaded.dataset.loaded = info ? info.backend : '';
    if (againButton) againButton.hidden = !!info;
  };
  showLoaded(engine.info);
  const unsubscribe = engine.subscribe(showLoaded);

  const el = h('section', { class: 'panel browser-model' },
    h('h2', {}, 'Run a model in this browser'),
    loaded,
    h('div', { class: 'form-grid' },
      field('Source', sourceKind), rows.server, rows.url, rows.files,
      field('Backend', backend, null)),
    backendNote,
    needs,
    h('div', { class: 'actions' }, loadButton, againButton, cancel, state),
    bar, errors);
  showKind();
  return { el, dispose: unsubscribe };
}

/** The model <select> value of the model loaded in this browser. */
export const IN_BROWSER = 'browser:';

/**
 * Smaller runs in a tab (one WebAssembly thread): each `[input, full, inTab]` goes from the
 * server's size `full` to `inTab` when the page runs in the tab, and back when it does not,
 * unless the user changed it.
 */
export function sizeForMode(tab, sizes) {
  for (const [input, full, inTab] of sizes) {
    if (tab && Number(input.value) === Number(full)) input.value = inTab;
    if (!tab && Number(input.value) === Number(inTab)) input.value = full;
  }
}

/**
 * Where a page's model runs: `select` (the server's models when `serverSelect` is given, plus
 * "In this browser") and the loader panel, shown while the browser is chosen. The header's
 * badge follows the choice. `onChange()` runs on every later change of choice or loaded model.
 * Returns {select, loader, inBrowser(), dispose()}.
 */
export function modelChooser(serverSelect, serverModels, onChange = () => {}) {
  const select = serverSelect || h('select', { name: 'model', required: true });
  const option = h('option', { value: IN_BROWSER });
  select.append(h('optgroup', { label: 'In this browser' }, option));
  // A model already loaded in this tab is the likely choice (e.g. after "Use in the playground").
  if (!serverSelect || engine.info) select.value = IN_BROWSER;
  const loader = browserModelPanel(serverModels);
  const inBrowser = () => select.value === IN_BROWSER;
  const sync = (notify = true) => {
    const info = engine.info;
    const where = info ? (info.backend === 'webgpu' ? 'WebGPU' : 'CPU') : null;
    option.textContent = info ? `${describe(info)} (${where})` : 'load a model into this browser…';
    loader.el.hidden = !inBrowser();
    if (inBrowser()) setMode('browser', where || 'no model yet', 'The model runs in this tab (WebAssembly/WebGPU)');
    else setMode('server', null, 'Models run on the server this page came from');
    if (notify) onChange();
  };
  select.addEventListener('change', () => sync());
  const unsubscribe = engine.subscribe(() => sync());
  sync(false);
  return {
    select, loader, inBrowser,
    dispose() {
      unsubscribe();
      loader.dispose();
    },
  };
}

/** The files of a checkpoint that the engine reads (others, e.g. README.md, are left out). */
const CHECKPOINT_FILE = /(\.gguf|\.safetensors|^config\.json|^tokenizer\.json|^tokenizer_config\.json|^chat_template\.jinja)$/i;

/**
 * A picked folder's checkpoint files: those at its top level (a Hugging Face folder keeps
 * other exports, e.g. onnx/model.onnx, in subfolders) that the engine reads.
 */
function checkpointFiles(picked) {
  return picked.filter((f) => {
    const parts = (f.webkitRelativePath || f.name).split('/');
    return parts.length <= 2 && CHECKPOINT_FILE.test(parts[parts.length - 1]);
  });
}

/**
 * What was dropped, as checkpoint files: files as they are, and a folder's top-level
 * checkpoint files (read through its FileSystemDirectoryEntry).
 */
async function droppedCheckpoint(dataTransfer) {
  const entries = [...dataTransfer.items].map((i) => i.webkitGetAsEntry?.()).filter(Boolean);
  if (!entries.some((e) => e.isDirectory)) return [...dataTransfer.files];
  const out = [];
  for (const entry of entries) {
    const children = entry.isDirectory ? await readDirectory(entry) : [entry];
    for (const child of children) {
      if (child.isFile && CHECKPOINT_FILE.test(child.name)) {
        out.push(await new Promise((resolve, reject) => child.file(resolve, reject)));
      }
    }
  }
  return out;
}

/** A directory entry's children (readEntries answers in batches until it gives none). */
async function readDirectory(dir) {
  const reader = dir.createReader();
  const all = [];
  for (;;) {
    const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
    if (!batch.length) return all;
    all.push(...batch);
  }
}
