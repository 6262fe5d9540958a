// Compressed vs base (METHOD §9) and Repair (AIRD, METHOD §10): pick the base model and the
// compression recipes, run, then draw the result: a `compare` / `aird` job on the server
// (drawn from the stored result), or a run of the in-browser engine, which compresses the
// loaded model in the tab (drawn from its report, shared as a #/s/ link).

import { Job, getResult, jobKinds } from './api.js';
import { h, field, message, JobPanel, shareBar, fragmentShareBar, progressClock } from './ui.js';
import { modelPicker } from './playground.js';
import { compareResult, browserCompareResult } from './compare-view.js';
import { models$, hasServer, knownDirections, browserDirections, currentDirection } from './state.js';
import { engine, runInPanel } from './engine.js';
import { modelChooser, sizeForMode } from './browser-model.js';
import { fetchDirection } from './direction-source.js';
import { fragmentLink } from './fragment.js';
import { RECIPES } from './recipes.js';

const ABOUT = {
  compare: ['Compressed vs base', 'Does a quantized or pruned model keep its refusal direction? Each compressed model gets its own direction, compared with the base’s layer by layer, and both are tested: ablating them (attack success on harmful prompts) and adding them (refusal of harmless prompts).'],
  aird: ['Repair', 'AIRD corrects the compressed model’s residual stream at one layer so that its refusal behaviour matches the base again, and compares the repair with two simple baselines.'],
};

/**
 * Sizes for a run in a tab, about 10x slower than the CLI: SmolLM2 with these sizes and the
 * last position scored takes minutes per model where the CLI's sizes would take hours.
 */
const IN_TAB = { 'n-train': 16, 'n-val': 4, 'n-eval': 8, 'n-calib': 32, 'max-new-tokens': 24 };

/** The in-browser engine's request for the form's flags: the same names as a server job's. */
function browserRequest(kind, { base, positions, ...args }) {
  return kind === 'compare' && positions === 'last' ? { ...args, positions: [-1] } : args;
}

export async function render(root, { kind }) {
  const server = await hasServer();
  const flags = server
    ? Object.fromEntries(((await jobKinds()).find((k) => k.kind === kind)?.flags || []).map((f) => [f.name, f]))
    : {};
  // without a server, the in-browser engine's defaults (the CLI's, in a tab's batches)
  const tabDefaults = server ? {} : await engine.defaults(kind);
  const def = (n) => flags[n]?.default ?? tabDefaults[n] ?? '';
  const multi = kind === 'compare';
  const hint = h('span', { class: 'hint' });
  const chooser = modelChooser(server ? await modelPicker('base') : null, server ? await models$() : [],
    () => fitToMode());
  const base = chooser.select;
  const boxes = RECIPES.map((r, i) => h('input', { type: multi ? 'checkbox' : 'radio', name: 'recipe', value: r, checked: i === (multi ? 1 : 4) }));
  const other = h('input', { name: 'compressed-other', placeholder: 'other recipe or model id' });
  if (!multi) {
    // one compressed model: the text field and the recipe buttons exclude each other
    other.addEventListener('input', () => {
      if (other.value.trim()) for (const b of boxes) b.checked = false;
    });
    for (const b of boxes) b.addEventListener('change', () => { other.value = ''; });
  }
  const num = (name) => h('input', { name, type: 'number', min: 1, value: def(name) });
  const nTrain = num('n-train');
  const nVal = num('n-val');
  const nEval = num('n-eval');
  const nCalib = num('n-calib');
  const maxTokens = num('max-new-tokens');
  const aird = h('input', { type: 'checkbox', name: 'aird' });
  // one scale, or several to choose from on the validation prompts (--alpha-grid)
  const alpha = h('input', { name: 'alpha', value: String(def('alpha')), pattern: '\\s*\\d*\\.?\\d+(\\s*,\\s*\\d*\\.?\\d+)*\\s*', placeholder: '1, or 1,2,4,8' });
  const positions = h('select', { name: 'positions' },
    h('option', { value: 'last' }, 'the last token only (fewer candidates, faster)'),
    h('option', { value: 'all' }, 'every post-instruction position (METHOD §6)'));
  const positionsField = field('Positions to score', positions, 'in-browser runs only; cosines cover every position');
  // whose verdict counts; the others' rates and their agreement are reported beside it
  const judge = h('select', { name: 'judge' });
  const serverModels = server ? await models$() : [];
  const fillJudges = (tab) => {
    const chosen = judge.value;
    judge.replaceChildren(h('option', { value: 'substring' }, 'refusal phrases (METHOD §7)'),
      h('option', { value: 'refusal-score' }, 'refusal score above 0'),
      ...(tab ? [] : serverModels.map((m) => h('option', { value: `model:${m.id}` }, `the model ${m.id}, asked`))));
    if ([...judge.options].some((o) => o.value === chosen)) judge.value = chosen;
  };
  // the whole study again under each seed of the prompt sampling, with the spread reported
  const seedsIn = h('input', { name: 'seeds', placeholder: 'one run; 0,1,2 for three', pattern: '\\s*\\d+(\\s*,\\s*\\d+)*\\s*' });
  const direction = h('select', { name: 'direction' });
  const layer = h('input', { name: 'layer', type: 'number', min: 0, placeholder: 'direction’s' });
  // compare's fallback when no candidate passes METHOD §6 (small or random models)
  const advanced = (multi ? ['max-layer-fraction', 'fallback-kl-max', 'kl-max'] : [])
    .map((n) => h('input', { name: n, type: 'number', step: 'any', min: 0, value: def(n) }));

  /** Directions this mode can use: found in this browser, or stored on the server. */
  const fillDirections = (tab) => {
    const chosen = direction.value || currentDirection();
    direction.replaceChildren(h('option', { value: '' }, 'none: use the layer below'));
    const usable = tab ? browserDirections() : knownDirections();
    for (const d of usable) {
      direction.append(h('option', { value: d.id }, `${d.model} · layer ${d.layer ?? '?'}, pos ${d.position ?? '?'} · ${tab ? 'found in this browser' : d.id.slice(0, 8)}`));
    }
    if (usable.some((d) => d.id === chosen)) direction.value = chosen;
  };
  /** Smaller runs in a tab; the server's sizes back on the server. */
  const fitToMode = () => {
    const tab = chooser.inBrowser();
    positionsField.hidden = !tab || !multi;
    fillJudges(tab);
    sizeForMode(tab, [nTrain, nVal, nEval, nCalib, maxTokens].map((input) => [input, def(input.name), IN_TAB[input.name]]));
    hint.textContent = tab
      ? 'Runs in this tab: each recipe is compressed here (small models only), on the built-in prompt sets. Expect minutes per model, longer with the server’s sizes.'
      : 'Runs on the server; with a real model this takes minutes to hours on a CPU. Progress is shown per stage.';
    if (!multi) fillDirections(tab);
  };

  const go = h('button', { type: 'submit' }, multi ? 'Compare' : 'Repair');
  const panel = new JobPanel();
  const errors = h('div');
  const share = h('div');
  const out = h('div');
  let job = null;

  const form = h('form', { class: 'panel', id: `${kind}-form` },
    h('div', { class: 'form-grid' },
      field('Base model', base),
      h('div', { class: 'wide' }, field(multi ? 'Compressed (one or more)' : 'Compressed', h('div', { class: 'checks' },
        boxes.map((b) => h('label', { class: 'mono' }, b, b.value)), other),
      'a recipe, compressed on the fly; on the server also a compressed model (file, directory or id)')),
      multi ? null : h('div', { class: 'span2' }, field('Base direction', direction, 'from the Directions page')),
      multi ? null : field('Layer l*', layer, 'needed without a direction'),
      field('Training prompts per set', nTrain), field('Validation prompts per set', nVal),
      field('Evaluation prompts per set', nEval), field('Calibration prompts', nCalib),
      field('Max new tokens (judged)', maxTokens),
      field('Seeds', seedsIn, 'several: the study runs once per seed (other prompts each time) and reports each number’s spread; takes that many times as long'),
      field('Judge', judge, 'who decides whether a reply refuses; every judge’s rate and their agreement (Cohen’s κ) are reported. A judge model runs on the server only.'),
      multi ? field('Also repair with AIRD', h('label', { class: 'checks' }, aird, 'yes')) : null,
      field('AIRD scale α', alpha, 'several (1,2,4,8): chosen on the validation prompts, harmless refusal at most 5 points above the compressed model’s'),
      multi ? positionsField : null),
    advanced.length ? h('details', { class: 'more' }, h('summary', {}, 'Selection settings'),
      h('div', { class: 'form-grid' }, advanced.map((i) => field(i.name, i, flags[i.name]?.help)))) : null,
    h('div', { class: 'actions' }, go, hint));

  /** The form's flags, as the server's job arguments. */
  const formArgs = () => {
    const compressed = boxes.filter((b) => b.checked).map((b) => b.value);
    if (other.value.trim()) {
      if (!multi) compressed.length = 0;
      compressed.push(...other.value.split(/[\s,]+/).filter(Boolean));
    }
    if (!compressed.length) throw new Error('Choose a compressed model or recipe.');
    const args = { base: base.value, compressed: multi ? compressed : compressed[0] };
    for (const input of [nTrain, nVal, nEval, nCalib, maxTokens]) {
      if (input.value !== '') args[input.name] = Number(input.value);
    }
    if (multi && aird.checked) args.aird = true;
    if (judge.value && judge.value !== 'substring') args.judge = judge.value;
    const seeds = seedsIn.value.split(',').map((v) => v.trim()).filter(Boolean).map(Number);
    if (seeds.some((v) => !Number.isInteger(v) || v < 0)) throw new Error(`Seeds: “${seedsIn.value}” is not a comma-separated list of whole numbers`);
    if (seeds.length) args.seeds = seeds;
    const alphas = alpha.value.split(',').map((v) => v.trim()).filter(Boolean).map(Number);
    if (alphas.some((v) => !Number.isFinite(v))) throw new Error(`AIRD scale α: “${alpha.value}” is not a number or a comma-separated list`);
    if (alphas.length > 1) args['alpha-grid'] = alphas;
    else if (alphas.length === 1 && alphas[0] !== 1) args.alpha = alphas[0];
    for (const input of advanced) {
      if (input.value !== '' && String(input.value) !== String(def(input.name))) args[input.name] = Number(input.value);
    }
    if (!multi && layer.value !== '') args.layer = Number(layer.value);
    return args;
  };

  /** Runs in this browser's engine. */
  const runInBrowser = async (args) => {
    if (!engine.info) throw new Error('Load a model into this browser first (the panel above), or choose a server model.');
    const request = browserRequest(kind, { ...args, positions: positions.value });
    if (!multi) {
      const local = browserDirections().find((d) => d.id === direction.value);
      if (local) request.direction = { vector: local.vector, layer: local.layer, position: local.position };
    }
    await runInPanel(panel, async () => {
      const report = multi ? await engine.compare(request, progressClock(panel))
        : await engine.aird(request, progressClock(panel));
      share.replaceChildren(fragmentShareBar({ kind, request, report }, fragmentLink));
      out.replaceChildren(browserCompareResult(kind, report));
    });
  };

  /** Runs a job on the server. */
  const runOnServer = async (args) => {
    if (!multi && direction.value) args.direction = direction.value;
    job = await Job.submit(kind, args, (e) => {
      panel.event(e);
      if (e.type === 'failed') errors.replaceChildren(message(e.error));
    });
    panel.attach(job);
    const end = await job.done;
    if (end.type === 'succeeded') {
      const result = await getResult(end.result_id);
      share.replaceChildren(shareBar(result.id));
      out.replaceChildren(compareResult(result));
    }
  };

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    errors.replaceChildren();
    share.replaceChildren();
    out.replaceChildren();
    go.disabled = true;
    try {
      const args = formArgs();
      if (chooser.inBrowser()) await runInBrowser(args);
      else await runOnServer(args);
    } catch (e) {
      errors.replaceChildren(message(e.message));
      if (!chooser.inBrowser()) panel.el.hidden = true;
    } finally {
      go.disabled = false;
    }
  });

  const [title, about] = ABOUT[kind];
  root.append(h('h1', {}, title), h('p', { class: 'lede' }, about), chooser.loader.el, form, errors, panel.el, share, out);
  fitToMode();
  return () => {
    job?.close();
    chooser.dispose();
  };
}
