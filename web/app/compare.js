// Compressed vs base (`compare` jobs) and Repair (`aird` jobs): pick the base model and the
// compression recipes, run, then draw the stored result.

import { Job, getResult, jobKinds } from './api.js';
import { h, field, message, JobPanel, shareBar } from './ui.js';
import { modelPicker } from './playground.js';
import { compareResult } from './compare-view.js';
import { knownDirections, currentDirection } from './state.js';
import { RECIPES } from './recipes.js';

const ABOUT = {
  compare: ['Compressed vs base', 'Does a quantized or pruned model keep its refusal direction? Each compressed model gets its own direction, compared with the base’s layer by layer, and both are tested: ablating them (attack success on harmful prompts) and adding them (refusal of harmless prompts).'],
  aird: ['Repair', 'AIRD corrects the compressed model’s residual stream at one layer so that its refusal behaviour matches the base again, and compares the repair with two simple baselines.'],
};

export async function render(root, { kind }) {
  const kinds = await jobKinds();
  const flags = Object.fromEntries((kinds.find((k) => k.kind === kind)?.flags || []).map((f) => [f.name, f]));
  const def = (n) => flags[n]?.default ?? '';
  const base = await modelPicker('base');
  const multi = kind === 'compare';
  const boxes = RECIPES.map((r, i) => h('input', { type: multi ? 'checkbox' : 'radio', name: 'recipe', value: r, checked: i === (multi ? 1 : 4) }));
  const other = h('input', { name: 'compressed-other', placeholder: 'other recipe or model id' });
  if (!multi) {
    // one compressed model: the text field and the recipe buttons exclude each other
    other.addEventListener('input', () => {
      if (other.value.trim()) for (const b of boxes) b.checked = false;
    });
    for (const b of boxes) b.addEventListener('change', () => { other.value = ''; });
  }
  const num = (name, value) => h('input', { name, type: 'number', min: 1, value: value ?? def(name) });
  const nTrain = num('n-train');
  const nVal = num('n-val');
  const nEval = num('n-eval');
  const nCalib = num('n-calib');
  const maxTokens = num('max-new-tokens');
  const aird = h('input', { type: 'checkbox', name: 'aird' });
  const direction = h('select', { name: 'direction' }, h('option', { value: '' }, 'none: use the layer below'),
    knownDirections().map((d) => h('option', { value: d.id }, `${d.model} · layer ${d.layer ?? '?'}, pos ${d.position ?? '?'} · ${d.id.slice(0, 8)}`)));
  if (currentDirection() && knownDirections().some((d) => d.id === currentDirection())) direction.value = currentDirection();
  const layer = h('input', { name: 'layer', type: 'number', min: 0, placeholder: 'direction’s' });
  // compare's fallback when no candidate passes METHOD §6 (small or random models)
  const advanced = ['max-layer-fraction', 'fallback-kl-max', 'kl-max'].filter((n) => flags[n])
    .map((n) => h('input', { name: n, type: 'number', step: 'any', min: 0, value: def(n) }));

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
        boxes.map((b) => h('label', { class: 'mono' }, b, b.value)), other), flags.compressed?.help)),
      kind === 'aird' ? h('div', { class: 'span2' }, field('Base direction', direction, 'from the Directions page')) : null,
      kind === 'aird' ? field('Layer l*', layer, 'needed without a direction') : null,
      field('Training prompts per set', nTrain), field('Validation prompts per set', nVal),
      field('Evaluation prompts per set', nEval), field('Calibration prompts', nCalib),
      field('Max new tokens (judged)', maxTokens),
      multi ? field('Also repair with AIRD', h('label', { class: 'checks' }, aird, 'yes')) : null),
    advanced.length ? h('details', { class: 'more' }, h('summary', {}, 'Selection settings'),
      h('div', { class: 'form-grid' }, advanced.map((i) => field(i.name, i, flags[i.name].help)))) : null,
    h('div', { class: 'actions' }, go, h('span', { class: 'hint' }, 'Runs on the server; with a real model this takes minutes to hours on a CPU. Progress is shown per stage.')));

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    errors.replaceChildren();
    share.replaceChildren();
    out.replaceChildren();
    const compressed = boxes.filter((b) => b.checked).map((b) => b.value);
    if (other.value.trim()) {
      if (!multi) compressed.length = 0;
      compressed.push(...other.value.split(/[\s,]+/).filter(Boolean));
    }
    if (!compressed.length) {
      errors.replaceChildren(message('Choose a compressed model or recipe.'));
      return;
    }
    const args = { base: base.value, compressed: multi ? compressed : compressed[0] };
    for (const input of [nTrain, nVal, nEval, nCalib, maxTokens]) {
      if (input.value !== '') args[input.name] = Number(input.value);
    }
    if (multi && aird.checked) args.aird = true;
    for (const input of advanced) {
      if (input.value !== '' && String(input.value) !== String(def(input.name))) args[input.name] = Number(input.value);
    }
    if (kind === 'aird') {
      if (direction.value) args.direction = direction.value;
      if (layer.value !== '') args.layer = Number(layer.value);
    }
    go.disabled = true;
    try {
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
    } catch (e) {
      errors.replaceChildren(message(e.message));
      panel.el.hidden = true;
    } finally {
      go.disabled = false;
    }
  });

  const [title, about] = ABOUT[kind];
  root.append(h('h1', {}, title), h('p', { class: 'lede' }, about), form, errors, panel.el, share, out);
  return () => job?.close();
}
