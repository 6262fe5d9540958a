// A stored `directions` result drawn from its reports: the selection heatmaps (bypass,
// induce, KL over layer x position), separation and norm per layer, the chosen direction's
// numbers, and its files.

import { h, table, bytes } from './ui.js';
import { heatmap, linePlot, fmt } from './plot.js';
import { resultFileUrl, exportUrl } from './api.js';
import { rememberDirection, setCurrentDirection, rememberBrowserDirection } from './state.js';
import { directionSafetensors } from './direction-source.js';

function dropText(d) {
  switch (d.reason) {
    case 'layer_too_deep': return `layer ≥ ${d.limit}`;
    case 'kl_too_high': return `KL > ${fmt(d.max)}`;
    case 'induce_too_low': return `induce < ${fmt(d.min)}`;
    case 'not_finite': return 'not finite';
    default: return d.reason;
  }
}

const num = (v) => (v === null || v === undefined ? NaN : v);

function fact(k, v, title) {
  return h('div', { class: 'fact', title }, h('div', { class: 'k' }, k), h('div', { class: 'v' }, v));
}

/**
 * The figures and numbers of a directions result (`result` = GET /api/results/{id}, or
 * {kind, report} of a run in this browser); `files` replaces the server's file list.
 */
export function directionsResult(result, { files: filesSection } = {}) {
  const report = result.report || {};
  const sel = report['selection.json'];
  const dir = report['direction.json'];
  const out = h('div', { class: 'directions-result' });
  if (!sel) {
    out.append(h('p', {}, 'This result has no selection.json.'));
    return out;
  }
  const s = sel.selection;
  const cands = s.candidates || [];
  const chosen = sel.chosen || (s.selected !== null && s.selected !== undefined ? cands[s.selected] : null);
  const layers = Array.from({ length: s.n_layers }, (_, i) => i);
  const positions = s.positions || sel.post_instruction_positions || [...new Set(cands.map((c) => c.position))];
  const selected = chosen ? { col: chosen.layer, row: chosen.position } : null;

  // --- the chosen direction
  const facts = h('div', { class: 'facts' });
  if (chosen) {
    facts.append(
      fact('layer', chosen.layer), fact('position', chosen.position),
      fact('bypass', fmt(num(chosen.bypass)), 'mean refusal score on harmful prompts, direction ablated (lower is better)'),
      fact('induce', fmt(num(chosen.induce)), 'mean refusal score on harmless prompts, direction added (higher is better)'),
      fact('KL', fmt(num(chosen.kl)), 'KL(base ‖ ablated) on harmless prompts at the last position'),
      fact('|r|', fmt(num(chosen.norm)), 'norm of the difference of means'),
      fact('separation', fmt(num(chosen.separation)), 'difference of projected means over the pooled standard deviation'));
  }
  facts.append(
    fact('baseline harmful', fmt(num(s.baseline_harmful_score)), 'mean refusal score, no intervention'),
    fact('baseline harmless', fmt(num(s.baseline_harmless_score)), 'mean refusal score, no intervention'),
    fact('validation prompts', `${s.n_val_harmful} + ${s.n_val_harmless}`, 'harmful + harmless'));
  const chosenBy = sel.chosen_by ? (typeof sel.chosen_by === 'string' ? sel.chosen_by : JSON.stringify(sel.chosen_by)) : null;
  out.append(h('h2', {}, chosen ? `Selected direction: layer ${chosen.layer}, position ${chosen.position}` : 'No candidate passed the filters'));
  if (chosenBy) out.append(h('p', { class: 'hint' }, `chosen by: ${chosenBy}`));
  out.append(facts);

  // --- heatmaps
  const cellsOf = (key) => cands.map((c) => ({
    col: c.layer, row: c.position, value: num(c[key]), dropped: c.dropped,
    title: `layer ${c.layer}, position ${c.position}: ${key} ${fmt(num(c[key]))}` +
      (c.dropped?.length ? ` (dropped: ${c.dropped.map(dropText).join(', ')})` : ''),
  }));
  const st = s.settings || {};
  const common = { cols: layers, rows: positions, selected, xLabel: 'layer', yLabel: 'position (from end)' };
  out.append(h('h2', {}, 'Candidates: every layer × post-instruction position'),
    h('p', { class: 'hint' },
      `Hatched cells were dropped by the filters (KL > ${fmt(st.kl_max)}, layer ≥ ${fmt(st.max_layer_fraction)}·L, induce < ${fmt(st.induce_min)}); grey cells were not scored. The outlined cell is the selected direction. Hover a cell for its numbers.`),
    h('div', { class: 'plots' },
      heatmap({ ...common, title: 'Bypass score', cells: cellsOf('bypass'), unit: 'refusal score', better: 'lower', caption: 'Mean refusal score on harmful validation prompts with the candidate ablated at every layer.' }),
      heatmap({ ...common, title: 'Induce score', cells: cellsOf('induce'), unit: 'refusal score', better: 'higher', caption: 'Mean refusal score on harmless validation prompts with the candidate added at its layer.' }),
      heatmap({ ...common, title: 'KL(base ‖ ablated)', cells: cellsOf('kl'), unit: 'nats', better: 'lower', caption: 'Mean KL divergence of the next-token distribution on harmless prompts, last position, candidate ablated.' })));

  // --- per layer
  const seriesOf = (key) => positions.map((p) => ({
    name: `position ${p}`,
    points: cands.filter((c) => c.position === p).sort((a, b) => a.layer - b.layer).map((c) => [c.layer, num(c[key])]),
  }));
  out.append(h('h2', {}, 'Per layer'),
    h('div', { class: 'plots' },
      linePlot({ title: 'Separation of harmful and harmless', series: seriesOf('separation'), xLabel: 'layer', yLabel: 'separation (pooled SD)', markX: chosen?.layer, xDomain: [0, s.n_layers - 1], caption: 'Difference of the mean projections on r over their pooled standard deviation (validation prompts). Dashed line: selected layer.' }),
      linePlot({ title: 'Norm of the candidate direction', series: seriesOf('norm'), xLabel: 'layer', yLabel: '|r| (residual-stream units)', markX: chosen?.layer, xDomain: [0, s.n_layers - 1], caption: '|r| = |mean harmful − mean harmless activation| at the layer’s input.' })));

  // --- the table of candidates, collapsed
  out.append(h('details', { class: 'more' }, h('summary', {}, `All ${cands.length} candidates as a table`),
    h('div', { class: 'table-wrap' }, table(cands, [
      { key: 'layer', label: 'layer', num: true }, { key: 'position', label: 'position', num: true },
      { key: (c) => num(c.bypass), label: 'bypass', num: true }, { key: (c) => num(c.induce), label: 'induce', num: true },
      { key: (c) => num(c.kl), label: 'KL', num: true }, { key: (c) => num(c.separation), label: 'separation', num: true },
      { key: (c) => num(c.norm), label: '|r|', num: true },
      { key: (c) => (c.dropped?.length ? c.dropped.map(dropText).join(', ') : 'eligible'), label: 'filters' },
    ]))));

  // --- downloads and use
  if (filesSection) {
    out.append(h('h2', {}, 'Files'), filesSection);
    return out;
  }
  const files = result.files || [];
  const use = h('button', {
    type: 'button', class: 'use-direction', onclick: () => {
      rememberDirection(result);
      setCurrentDirection(result.id);
      location.assign('/#/playground');
    },
  }, 'Use in the playground');
  out.append(h('h2', {}, 'Files'),
    h('div', { class: 'actions' }, dir ? use : null,
      h('a', { href: exportUrl(result.id), download: '' }, 'everything as a zip')),
    h('ul', { class: 'files' }, files.map((f) => h('li', {},
      h('a', { href: resultFileUrl(result.id, f.name), download: f.name.endsWith('.svg') ? null : '' }, f.name),
      h('span', { class: 'hint' }, ` ${bytes(f.bytes)}`)))));
  if (dir && !chosen) out.append(h('p', { class: 'hint' }, `direction.json: layer ${dir.layer}, position ${dir.position}`));
  return out;
}

/** A download link for bytes made in this page. */
function download(name, bytesOrText, type) {
  const url = URL.createObjectURL(new Blob([bytesOrText], { type }));
  return h('a', { href: url, download: name }, name);
}

/**
 * A directions run of the in-browser engine (web/src/directions.rs's report): the same
 * figures, and its files made here: direction.safetensors (readable by the CLI), the JSON
 * reports, and "Use in the playground" for the in-browser Playground.
 */
export function browserDirectionsResult(r) {
  const d = r.direction;
  const meta = d && { ...d, vector: undefined };
  const model = r.selection.model?.label || r.selection.model?.name || r.selection.model?.file;
  const use = d ? h('button', {
    type: 'button', class: 'use-direction', onclick: () => {
      const entry = rememberBrowserDirection({ model, layer: d.layer, position: d.position, vector: d.vector });
      setCurrentDirection(entry.id);
      location.assign('#/playground');
    },
  }, 'Use in the playground') : null;
  const files = h('div', {},
    h('div', { class: 'actions' }, use),
    h('ul', { class: 'files' },
      d ? h('li', {}, download('direction.safetensors', directionSafetensors(d), 'application/octet-stream'),
        h('span', { class: 'hint' }, ' the vector, as `refusal-lens generate --direction` reads it')) : null,
      d ? h('li', {}, download('direction.json', JSON.stringify(meta, null, 2), 'application/json')) : null,
      h('li', {}, download('selection.json', JSON.stringify(r.selection, null, 2), 'application/json'))));
  return directionsResult({ kind: 'directions', report: { 'selection.json': r.selection, 'direction.json': meta } }, { files });
}
