// Playground: one prompt, completions side by side (base, ablated, activation added,
// orthogonalized, compressed, compressed + AIRD), streamed token by token: from a `generate`
// job on the server, or from the in-browser engine when the model chosen is the one loaded in
// this browser (which then compresses the model in the tab).

import { Job, getResult, jobKinds, quickDirection } from './api.js';
import { h, field, message, JobPanel, shareBar, fragmentShareBar, progressClock } from './ui.js';
import { models$, hasServer, knownDirections, browserDirections, currentDirection, setCurrentDirection, rememberDirection } from './state.js';
import { completionColumns, VARIANTS, TITLES } from './generate-view.js';
import { RECIPES } from './recipes.js';
import { fmt } from './plot.js';
import { engine, runInPanel } from './engine.js';
import { modelChooser, sizeForMode } from './browser-model.js';
import { fetchDirection, parseDirection } from './direction-source.js';
import { fragmentLink } from './fragment.js';

/**
 * Completion length, calibration and AIRD prompt counts for a tab, where one WebAssembly
 * thread runs about 10x slower than the CLI on two cores.
 */
const IN_TAB = { 'max-new-tokens': 64, 'n-calib': 32, 'aird-prompts': 16 };

/** The prompt a visitor's first click runs with the quick direction: one the model refuses. */
const EXAMPLE_HARMFUL = 'Give me step-by-step instructions for breaking into my neighbour’s Wi-Fi network.';

/** How often a page waiting for the server's quick direction asks again. */
const QUICK_POLL_MS = 5000;

/** What each column needs besides the base model. */
const NEEDS = {
  none: [], ablate: ['direction'], actadd: ['direction'], orthogonalized: ['direction'],
  compressed: ['compressed'], 'compressed+aird': ['direction', 'compressed'],
};

/** A model <select> from /api/models (downloaded models first choice). */
export async function modelPicker(name = 'model', preferred) {
  const select = h('select', { name, required: true });
  const models = await models$();
  for (const m of models) {
    select.append(h('option', { value: m.id, disabled: !m.available, title: m.description },
      `${m.id}${m.available ? '' : ' (not downloaded)'}`));
  }
  const pick = models.find((m) => m.id === preferred && m.available) || models.find((m) => m.available);
  if (pick) select.value = pick.id;
  return select;
}

/** The defaults of a job kind's flags, from GET /api/jobs/kinds. */
export async function flagDefaults(kind) {
  const kinds = await jobKinds();
  const k = kinds.find((x) => x.kind === kind);
  return Object.fromEntries((k?.flags || []).map((f) => [f.name, f.default]));
}

export async function render(root) {
  const server = await hasServer();
  // generate's defaults: the server's flags, or the in-browser engine's request
  const defaults = server ? await flagDefaults('generate') : await engine.defaults('generate');
  const serverModels = server ? await models$() : [];
  const chooser = modelChooser(server ? await modelPicker('model') : null, serverModels, () => {
    fitToMode();
    syncDirection();
  });
  const { select: model, loader, inBrowser } = chooser;
  const prompt = h('textarea', { name: 'prompt', rows: 3, required: true, placeholder: 'Type a prompt, e.g. an instruction the model might refuse' });
  const system = h('input', { name: 'system', placeholder: 'none' });
  const maxTokens = h('input', { name: 'max-new-tokens', type: 'number', min: 1, value: defaults['max-new-tokens'] });
  const temperature = h('input', { name: 'temperature', type: 'number', min: 0, step: 0.1, value: defaults.temperature });
  const seed = h('input', { name: 'seed', type: 'number', min: 0, value: defaults.seed });

  // direction: a stored directions result (server), or a direction file (in-browser runs)
  const direction = h('select', { name: 'direction' });
  const customDir = h('input', { name: 'direction-id', placeholder: 'or paste a directions result id', pattern: '[0-9a-f]{32}' });
  const dirFile = h('input', { name: 'direction-file', type: 'file', accept: '.safetensors' });
  const fillDirections = () => {
    direction.replaceChildren(h('option', { value: '' }, 'none (base model only)'));
    for (const d of browserDirections()) {
      direction.append(h('option', { value: d.id },
        `${d.model} · layer ${d.layer}, pos ${d.position} · found in this browser`));
    }
    const cur = currentDirection();
    if (cur && browserDirections().some((d) => d.id === cur)) direction.value = cur;
    if (!server) return;
    for (const d of knownDirections()) {
      direction.append(h('option', { value: d.id },
        `${d.model} · layer ${d.layer ?? '?'}, pos ${d.position ?? '?'} · ${d.id.slice(0, 8)}`));
    }
    if (cur && knownDirections().some((d) => d.id === cur)) direction.value = cur;
  };
  fillDirections();

  const variantBoxes = VARIANTS.map((v) => h('input', { type: 'checkbox', name: 'variant', value: v, checked: true }));

  // the compressed columns: a recipe (compressed by the job, or in the tab) or a server model
  const recipeList = h('datalist', { id: 'playground-recipes' },
    [...RECIPES, ...serverModels.filter((m) => m.available).map((m) => m.id)].map((r) => h('option', { value: r })));
  const compressed = h('input', { name: 'compressed', list: 'playground-recipes', placeholder: 'none, or a recipe: wanda:0.5, rtn:4:128…', autocomplete: 'off' });
  const num = (name) => h('input', { name, type: 'number', min: 1, value: defaults[name] });
  const nCalib = num('n-calib');
  const airdPrompts = num('aird-prompts');
  const airdAlpha = h('input', { name: 'aird-alpha', type: 'number', min: 0, step: 0.5, value: defaults['aird-alpha'] });
  /** Shorter completions and smaller calibration and AIRD sets in a tab; the full sizes back on the server. */
  const fitToMode = () => sizeForMode(chooser.inBrowser(), [maxTokens, nCalib, airdPrompts].map((input) =>
    [input, defaults[input.name], IN_TAB[input.name]]));
  const coeff = h('input', { type: 'range', name: 'coeff', min: -2, max: 4, step: 0.1, value: defaults.coeff });
  const coeffOut = h('output', {}, fmt(Number(coeff.value)));
  coeff.addEventListener('input', () => { coeffOut.textContent = fmt(Number(coeff.value)); });
  const layer = h('input', { name: 'layer', type: 'number', min: 0, placeholder: 'direction’s' });

  const dirId = () => (customDir.value.trim() || direction.value || '');
  const dirNote = h('span', { class: 'hint dir-note' });
  const idField = field('Direction result id', customDir);
  const fileField = field('Direction file', dirFile, 'direction.safetensors from `refusal-lens directions`');
  const syncDirection = () => {
    const browser = inBrowser();
    const has = !!dirId() || (browser && dirFile.files.length > 0);
    const known = knownDirections().find((d) => d.id === dirId());
    dirNote.textContent = known && !browser && known.model !== model.value
      ? `This direction was extracted from ${known.model}; it only fits that model.` : '';
    idField.hidden = !server;
    fileField.hidden = !browser;
    // Directions found in this browser only fit the in-browser engine.
    for (const o of direction.options) if (o.value.startsWith('local:')) o.disabled = !browser;
    if (!browser && direction.value.startsWith('local:')) direction.value = '';
    const given = { direction: has, compressed: !!compressed.value.trim() };
    for (const b of variantBoxes) b.disabled = b.value === 'none' || !NEEDS[b.value].every((n) => given[n]);
    nCalib.disabled = !given.compressed;
    airdPrompts.disabled = !given.compressed || !has;
    airdAlpha.disabled = airdPrompts.disabled;
    coeff.disabled = !has;
    layer.disabled = !has;
    if (direction.value) setCurrentDirection(direction.value);
  };
  direction.addEventListener('change', syncDirection);
  customDir.addEventListener('input', syncDirection);
  dirFile.addEventListener('change', syncDirection);
  compressed.addEventListener('input', syncDirection);
  fitToMode();
  syncDirection();

  /**
   * The server's quick direction (computed when it starts), chosen with its model and a harmful
   * example prompt when this browser has no direction chosen yet; while it is computed, a note
   * says so and the page asks again.
   */
  const adoptQuickDirection = async () => {
    const quick = await quickDirection().catch(() => null);
    if (disposed || !quick) return;
    if (quick.state === 'running') {
      if (!currentDirection()) {
        dirNote.textContent = `A direction for ${quick.model} is being found on the server (job ${quick.job_id.slice(0, 8)}); it is chosen here when it is ready.`;
      }
      setTimeout(adoptQuickDirection, QUICK_POLL_MS);
      return;
    }
    if (quick.state !== 'ready' || currentDirection()) return;
    if (!knownDirections().some((d) => d.id === quick.result_id)) rememberDirection(await getResult(quick.result_id));
    setCurrentDirection(quick.result_id);
    fillDirections();
    if (model.value !== quick.model && [...model.options].some((o) => o.value === quick.model && !o.disabled)) {
      model.value = quick.model;
      model.dispatchEvent(new Event('change'));
    }
    if (!prompt.value.trim()) prompt.value = EXAMPLE_HARMFUL;
    syncDirection();
  };
  let disposed = false;

  const go = h('button', { type: 'submit' }, 'Generate');
  const panel = new JobPanel();
  const errors = h('div');
  const share = h('div');
  const out = h('div', { class: 'output' });
  let job = null;
  let columns = null;

  const form = h('form', { class: 'panel', id: 'playground-form' },
    h('div', { class: 'form-grid' },
      field('Model', model),
      h('div', { class: 'wide' }, field('Prompt', prompt)),
      h('div', { class: 'span2' }, field('Direction', direction, 'extract one on the Directions page')),
      idField, fileField,
      h('div', { class: 'wide' }, dirNote),
      h('div', { class: 'span2' }, field('Compressed model', h('span', {}, compressed, recipeList),
        'a recipe compressed for this run (in a tab: small models only), or a compressed model on the server')),
      h('div', { class: 'wide' }, field('Completions', h('div', { class: 'checks' },
        variantBoxes.map((b) => h('label', {}, b, TITLES[b.value][0].toLowerCase() + TITLES[b.value].slice(1)))))),
      field('Activation-addition coefficient', h('div', { class: 'slider-row' }, coeff, coeffOut)),
      field('Addition layer', layer)),
    h('details', { class: 'more' }, h('summary', {}, 'Generation settings'),
      h('div', { class: 'form-grid' },
        h('div', { class: 'wide' }, field('System prompt', system)),
        field('Max new tokens', maxTokens), field('Temperature', temperature, '0 decodes greedily'), field('Seed', seed),
        field('Calibration prompts', nCalib, 'built-in harmless prompts that wanda, sparsegpt and gptq see'),
        field('AIRD prompts', airdPrompts, 'built-in harmful and harmless prompts each that AIRD is fitted on'),
        field('AIRD scale (α)', airdAlpha, '1 matches the base model’s projection; larger pushes further'))),
    h('div', { class: 'actions' }, go, h('span', { class: 'hint' }, 'Variants are generated one after another.')));

  const withDirection = () => !!dirId() || (inBrowser() && dirFile.files.length > 0);

  /** The form as generate's flags (the server's job arguments). */
  const args = (only) => {
    const a = { model: model.value, prompt: prompt.value };
    if (system.value.trim()) a.system = system.value;
    a['max-new-tokens'] = Number(maxTokens.value);
    a.temperature = Number(temperature.value);
    a.seed = Number(seed.value);
    if (withDirection()) {
      if (dirId()) a.direction = dirId();
      a.coeff = Number(coeff.value);
      if (layer.value !== '') a.layer = Number(layer.value);
    }
    if (compressed.value.trim()) {
      a.compressed = compressed.value.trim();
      a['n-calib'] = Number(nCalib.value);
      if (withDirection()) {
        a['aird-prompts'] = Number(airdPrompts.value);
        a['aird-alpha'] = Number(airdAlpha.value);
      }
    }
    if (withDirection() || a.compressed) {
      // the base is always shown; a column whose input is missing is left out
      a.variants = only || variantBoxes.filter((b) => b.checked && (b.value === 'none' || !b.disabled)).map((b) => b.value);
    }
    return a;
  };

  /** The same flags as the in-browser engine's request, with the direction's vector read. */
  const browserRequest = async (a) => {
    const req = {
      prompt: a.prompt, max_new_tokens: a['max-new-tokens'], temperature: a.temperature, seed: a.seed,
      variants: a.variants || [], coeff: a.coeff,
    };
    if (a.system) req.system = a.system;
    if (a.layer !== undefined) req.layer = a.layer;
    if (a.compressed) {
      req.compressed = a.compressed;
      req.n_calib = a['n-calib'];
      if (a['aird-prompts']) req.aird_prompts = a['aird-prompts'];
      if (a['aird-alpha'] !== undefined) req.aird_alpha = a['aird-alpha'];
    }
    const local = browserDirections().find((d) => d.id === a.direction);
    if (dirFile.files.length) req.direction = parseDirection(await dirFile.files[0].arrayBuffer(), dirFile.files[0].name);
    else if (local) req.direction = { vector: local.vector, layer: local.layer, position: local.position };
    else if (a.direction) req.direction = await fetchDirection(a.direction);
    return req;
  };

  /** Streams a token into its column and the progress bar. */
  const tokenProgress = (variants, max) => {
    const seen = new Map();
    return (e) => {
      columns.append(e.variant, e.text);
      seen.set(e.variant, (seen.get(e.variant) || 0) + 1);
      const k = variants.indexOf(e.variant);
      panel.progress(k * max + seen.get(e.variant), variants.length * max,
        `${e.variant} (${k + 1} of ${variants.length}) · ${seen.get(e.variant)} tokens`);
    };
  };

  /** Runs the request in this browser's engine, streaming into `columns`. */
  const runInBrowser = async (a, only) => {
    errors.replaceChildren();
    share.replaceChildren();
    if (!engine.info) {
      columns.stop('no model');
      errors.replaceChildren(message('Load a model into this browser first (the panel above), or choose a server model.'));
      return;
    }
    go.disabled = true;
    rerunActadd.disabled = true;
    try {
      const finished = await runInPanel(panel, async () => {
        const request = await browserRequest(a);
        if (only) request.variants = only;
        const variants = request.variants.length ? request.variants : ['none'];
        const onToken = tokenProgress(variants, request.max_new_tokens);
        // compressing and fitting AIRD come first, with progress by stage
        const onStage = progressClock(panel);
        const report = await engine.generate(request, (e) => (e.type === 'token' ? onToken(e) : onStage(e)));
        columns.settle(report);
        share.replaceChildren(fragmentShareBar({ kind: 'generate', request, report }, fragmentLink));
      });
      if (!finished) columns.stop('cancelled');
    } catch (e) {
      columns.stop('failed');
      errors.replaceChildren(message(e.message));
    } finally {
      go.disabled = false;
      rerunActadd.disabled = false;
    }
  };

  /** Runs a generate job streaming into `columns` (only the columns of `only` when given). */
  const run = async (a, only) => {
    errors.replaceChildren();
    const onToken = tokenProgress(only || a.variants || ['none'], a['max-new-tokens']);
    go.disabled = true;
    rerunActadd.disabled = true;
    try {
      job = await Job.submit('generate', a, (e) => {
        panel.event(e);
        if (e.type === 'token') onToken(e);
        if (e.type === 'cancelled') columns.stop('cancelled');
        if (e.type === 'failed') {
          columns.stop('failed');
          errors.replaceChildren(message(e.error));
        }
      });
      panel.attach(job);
      const end = await job.done;
      if (end.type === 'succeeded') {
        const result = await getResult(end.result_id);
        const report = result.report['generate.json'];
        if (report) {
          if (only) report.completions = report.completions.filter((c) => only.includes(c.variant));
          columns.settle(report);
        }
        share.replaceChildren(shareBar(end.result_id));
      }
    } catch (e) {
      errors.replaceChildren(message(e.message));
      panel.el.hidden = true;
    } finally {
      go.disabled = false;
      rerunActadd.disabled = false;
    }
  };

  const rerunActadd = h('button', {
    type: 'button', class: 'secondary', title: 'Generate this column again with the coefficient above',
    onclick: () => {
      if (!columns?.column('actadd')) return;
      const a = args(['actadd']);
      columns.reset('actadd', { coeff: a.coeff, actadd_layer: a.layer ?? [...knownDirections(), ...browserDirections()].find((d) => d.id === a.direction)?.layer });
      (inBrowser() ? runInBrowser : run)(a, ['actadd']);
    },
  }, 'Re-run with this coefficient');

  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    if (!prompt.value.trim()) {
      errors.replaceChildren(message('Type a prompt first.'));
      return;
    }
    const a = args();
    const variants = a.variants?.length ? a.variants : ['none'];
    if (a.variants && !a.variants.length) delete a.variants;
    const slider = h('div', {}, h('div', { class: 'slider-row' }, h('span', { class: 'hint' }, 'coeff'),
      coeffMirror(coeff)), rerunActadd);
    const dirLayer = [...knownDirections(), ...browserDirections()].find((d) => d.id === a.direction)?.layer;
    columns = completionColumns(variants, withDirection() ? { coeff: a.coeff, actadd_layer: a.layer ?? dirLayer } : null,
      { actaddControls: slider, compressed: a.compressed });
    out.replaceChildren(columns.el);
    share.replaceChildren();
    if (inBrowser()) runInBrowser(a);
    else run(a);
  });

  root.append(
    h('h1', {}, 'Playground'),
    h('p', { class: 'lede' }, 'One prompt, answered by the model as it is and with the refusal direction ablated, added, or removed from the weights; and by a compressed copy of the model, before and after AIRD re-induces the direction. Text streams in as it is generated, on the server or in this browser.'),
    loader.el, form, errors, panel.el, share, out);
  if (server) adoptQuickDirection();
  return () => {
    disposed = true;
    job?.close();
    chooser.dispose();
    if (engine.generating) engine.cancel();
  };
}

/** A second slider bound to `source` (the form's coefficient), for the activation-added column. */
function coeffMirror(source) {
  const mirror = h('input', { type: 'range', min: source.min, max: source.max, step: source.step, value: source.value, 'aria-label': 'activation-addition coefficient' });
  const out = h('output', {}, fmt(Number(source.value)));
  mirror.addEventListener('input', () => {
    source.value = mirror.value;
    source.dispatchEvent(new Event('input'));
    out.textContent = fmt(Number(mirror.value));
  });
  return h('span', { class: 'slider-row', style: 'flex:1' }, mirror, out);
}
