// Completions side by side, one column per variant: filled token by token from a generate
// job's `token` events, then settled from its stored report (generate.json).

import { h } from './ui.js';
import { fmt } from './plot.js';

export const VARIANTS = ['none', 'ablate', 'actadd', 'orthogonalized', 'compressed', 'compressed+aird'];

export const TITLES = {
  none: 'Base',
  ablate: 'Ablated',
  actadd: 'Activation added',
  orthogonalized: 'Orthogonalized',
  compressed: 'Compressed',
  'compressed+aird': 'Compressed + AIRD',
};

/** What a column is; `compressed` = generate.json's `compressed` ({spec, aird}) or the recipe. */
function about(variant, dir, compressed) {
  const spec = typeof compressed === 'string' ? compressed : compressed?.spec;
  const fit = typeof compressed === 'object' ? compressed?.aird : null;
  switch (variant) {
    case 'none': return 'the model as it is';
    case 'ablate': return 'direction projected out of the residual stream at every layer';
    case 'actadd': {
      const layer = dir?.actadd_layer ?? dir?.layer;
      const at = layer === undefined || layer === null ? 'at the direction’s layer' : `at layer ${layer}`;
      return dir ? `x ← x + ${fmt(dir.coeff)}·r ${at}` : `x ← x + c·r ${at}`;
    }
    case 'orthogonalized': return 'weights edited so no layer writes along r';
    case 'compressed': return spec ? `${spec}, no intervention` : 'the compressed model as it is';
    case 'compressed+aird': {
      const layer = fit?.settings?.layer ?? dir?.layer;
      const at = layer === undefined || layer === null ? 'at the direction’s layer' : `at layer ${layer}`;
      return `${spec || 'compressed'}, refusal direction re-induced by AIRD ${at}`;
    }
    default: return '';
  }
}

/**
 * The columns of `variants`; `dir` = generate.json's `direction` (layer, coeff, ...) when known.
 * Returns {el, append(variant, text), settle(report), column(variant)}.
 */
export function completionColumns(variants, dir, { actaddControls, compressed } = {}) {
  const cols = new Map();
  const el = h('div', { class: 'columns', dataset: { count: variants.length } });
  for (const v of variants) {
    const text = h('pre', { class: 'completion' });
    const foot = h('footer', {}, h('span', { class: 'hint' }, 'waiting…'));
    const aboutEl = h('div', { class: 'about' }, about(v, dir, compressed));
    const col = h('section', { class: 'column', dataset: { variant: v, state: 'waiting' } },
      h('header', {}, h('h3', {}, TITLES[v] || v), aboutEl),
      text,
      v === 'actadd' && actaddControls ? h('div', { class: 'controls' }, actaddControls) : null,
      foot);
    cols.set(v, { col, text, foot, aboutEl });
    el.append(col);
  }
  return {
    el,
    column: (v) => cols.get(v),
    /** A streamed piece of text of `variant`. */
    append(variant, piece) {
      const c = cols.get(variant);
      if (!c) return;
      if (c.col.dataset.state !== 'streaming') {
        for (const other of cols.values()) {
          if (other.col.dataset.state === 'streaming') other.col.dataset.state = 'streamed';
        }
        c.col.dataset.state = 'streaming';
        c.foot.replaceChildren(h('span', { class: 'hint' }, 'generating…'));
      }
      // follow the text while the reader is at the bottom of the column
      const atEnd = c.text.scrollHeight - c.text.scrollTop - c.text.clientHeight < 24;
      c.text.textContent += piece;
      if (atEnd) c.text.scrollTop = c.text.scrollHeight;
    },
    /** Reset one column before it is generated again. */
    reset(variant, newDir) {
      const c = cols.get(variant);
      if (!c) return;
      c.text.textContent = '';
      c.col.dataset.state = 'waiting';
      c.foot.replaceChildren(h('span', { class: 'hint' }, 'waiting…'));
      if (newDir) c.aboutEl.textContent = about(variant, newDir, compressed);
    },
    /** Mark unfinished columns (cancelled or failed job). */
    stop(reason) {
      for (const c of cols.values()) {
        if (c.col.dataset.state === 'waiting' || c.col.dataset.state === 'streaming') {
          c.col.dataset.state = 'stopped';
          c.foot.replaceChildren(h('span', { class: 'hint' }, reason));
        }
      }
    },
    /** The final texts and verdicts from generate.json. */
    settle(report) {
      for (const comp of report.completions || []) {
        const c = cols.get(comp.variant);
        if (!c) continue;
        c.text.textContent = comp.completion;
        c.col.dataset.state = 'done';
        if (report.direction || report.compressed) {
          c.aboutEl.textContent = about(comp.variant, report.direction, report.compressed);
        }
        c.foot.replaceChildren(
          h('span', { class: `badge ${comp.refusal ? 'refusal' : 'complies'}` }, comp.refusal ? 'refuses' : 'complies'),
          h('span', {}, `${comp.tokens.length} tokens`),
          h('span', {}, `finish: ${typeof comp.finish === 'string' ? comp.finish : JSON.stringify(comp.finish)}`));
      }
    },
  };
}

/** The whole generate result: prompt, settings, columns. */
export function generateResult(report) {
  const variants = (report.completions || []).map((c) => c.variant);
  const cols = completionColumns(variants, report.direction, { compressed: report.compressed });
  cols.settle(report);
  const d = report.direction;
  const c = report.compressed;
  const fit = c?.aird;
  return h('div', { class: 'generate-result' },
    h('div', { class: 'meta' },
      h('span', {}, `prompt: ${report.prompt_tokens ?? '?'} tokens`),
      h('span', {}, `max new tokens: ${report.max_new_tokens ?? '?'}`),
      h('span', {}, `temperature: ${fmt(report.temperature)}`),
      h('span', {}, `seed: ${report.seed}`),
      d ? h('span', {}, `direction: layer ${d.layer}, position ${d.position}, coeff ${fmt(d.coeff)}`) : null,
      c ? h('span', {}, `compressed: ${c.spec}`) : null,
      fit ? h('span', { title: 'mean squared gap between the base and compressed projections on the base direction, on the AIRD training prompts' },
        `AIRD at layer ${fit.settings.layer}: projection gap MSE ${fmt(fit.train.mse_before)} → ${fmt(fit.train.mse_after)}, λ ${fmt(fit.lambda)}`) : null),
    h('h3', { style: 'margin-top:.8rem' }, 'Prompt'),
    h('pre', { class: 'formatted', title: 'as the model saw it (chat template applied)' }, report.formatted_prompt ?? report.prompt),
    cols.el);
}
