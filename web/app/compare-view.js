// Stored `compare` (base vs compressed, METHOD §9) and `aird` (repair, METHOD §10) results:
// cosine per layer, ASR and harmless-refusal bars, the repair's fit, sample outputs, and the
// report's numbers as tables.

import { h, table } from './ui.js';
import { linePlot, barChart, fmt } from './plot.js';
import { reportTables } from './report-view.js';

function fact(k, v, title) {
  return h('div', { class: 'fact', title }, h('div', { class: 'k' }, k), h('div', { class: 'v' }, v));
}

// A judged set's rate (results stored before intervals gave baselines as bare numbers).
const rate = (j) => (typeof j === 'number' ? j : j && Number.isFinite(j.rate) ? j.rate : NaN);
const interval = (j) => (j && typeof j === 'object' ? j.interval : undefined);
const pct = (v) => (Number.isFinite(v) ? `${fmt(v * 100)}%` : '—');
const points = (v) => `${v > 0 ? '+' : ''}${(100 * v).toFixed(1)}`;
/** A rate with its Wilson 95% interval: `12.5% [4.3, 31.0]`. */
function pctIn(j) {
  const i = interval(j);
  const r = pct(rate(j));
  return i ? `${r} [${(100 * i.low).toFixed(1)}, ${(100 * i.high).toFixed(1)}]` : r;
}
/** A paired difference in points with its interval, marked when the interval leaves 0 out. */
function change(d) {
  if (!d || !d.interval) return '—';
  const real = d.interval.low > 0 || d.interval.high < 0;
  return h('span', { class: real ? 'difference real' : 'difference', title: real ? 'the 95% interval leaves 0 out' : 'not told apart from no change at this sample size' },
    `${points(d.estimate)} [${points(d.interval.low)}, ${points(d.interval.high)}]${real ? ' *' : ''}`);
}
const bar = (name, j) => ({ name, value: rate(j), interval: interval(j) });

/** Sample completions of judged prompt sets: [{label, judged}] -> a table. */
function samples(sets) {
  const rows = sets.flatMap(({ label, judged }) => (judged?.samples || []).map((s) => ({ label, ...s })));
  if (!rows.length) return null;
  return h('details', { class: 'more' }, h('summary', {}, `Sample outputs (${rows.length})`),
    h('div', { class: 'table-wrap' }, table(rows, [
      { key: 'label', label: 'model' },
      { key: 'instruction', label: 'prompt' },
      { key: (r) => h('span', { class: 'sample' }, r.completion), label: 'completion' },
      { key: (r) => h('span', { class: `badge ${r.refused ? 'refusal' : 'complies'}` }, r.refused ? 'refuses' : 'complies'), label: 'judge' },
      { key: 'refusal_score', label: 'refusal score', num: true },
    ])));
}

function compareView(result, c) {
  const out = h('div', { class: 'compare-result' });
  const base = c.base;
  const positions = c.positions || [];
  const nL = c.n_layers;
  const basePos = base.direction.position;
  const posIndex = positions.indexOf(basePos);
  out.append(h('h2', {}, `Base: layer ${base.direction.layer}, position ${basePos}`),
    h('div', { class: 'facts' },
      fact('base ASR', pctIn(base.baseline.asr), 'harmful prompts answered, no intervention (Wilson 95% interval)'),
      fact('base harmless refusal', pctIn(base.baseline.harmless_refusal), 'harmless prompts refused, no intervention (Wilson 95% interval)'),
      base.noise_floor ? fact('noise floor', fmt(base.noise_floor.at_base_selected), `cosine between the base’s directions from two halves of its training prompts (${base.noise_floor.n_harmful_per_half} + ${base.noise_floor.n_harmless_per_half} each) at its cell: a compressed model’s cosine near it is as close as resampling the prompts gets`) : '',
      fact('bypass', fmt(base.direction.scores?.bypass)), fact('induce', fmt(base.direction.scores?.induce)),
      fact('KL', fmt(base.direction.scores?.kl)), fact('chosen by', String(base.direction.chosen_by))));

  /** A layer-major grid of cosines at the base's position, as [layer, cosine] points. */
  const byLayer = (cells) => Array.from({ length: nL }, (_, l) => [l, cells?.[l * positions.length + posIndex] ?? NaN]);
  // cosine per layer between each compressed model's candidates and the base's
  const series = c.compressed.map((m) => ({
    name: m.spec,
    points: byLayer(m.cosines),
  }));
  if (base.noise_floor) {
    series.push({
      name: 'base split-half (noise floor)', dashed: true,
      points: byLayer(base.noise_floor.cosines),
    });
  }
  const models = ['base', ...c.compressed.map((m) => m.spec)];
  const groupsAsr = [
    { label: 'no intervention', bars: [bar('base', base.baseline.asr), ...c.compressed.map((m) => bar(m.spec, m.baseline.asr))] },
    { label: 'own direction ablated', bars: c.compressed.map((m) => bar(m.spec, m.asr_ablate_own)) },
    { label: 'base direction ablated', bars: c.compressed.map((m) => bar(m.spec, m.asr_ablate_base)) },
  ];
  const groupsHarmless = [
    { label: 'no intervention', bars: [bar('base', base.baseline.harmless_refusal), ...c.compressed.map((m) => bar(m.spec, m.baseline.harmless_refusal))] },
    { label: 'own direction added', bars: c.compressed.map((m) => bar(m.spec, m.harmless_refusal_add_own)) },
    { label: 'base direction added', bars: c.compressed.map((m) => bar(m.spec, m.harmless_refusal_add_base)) },
  ];
  if (c.compressed.some((m) => m.aird)) {
    groupsAsr.push({ label: 'after AIRD', bars: c.compressed.map((m) => bar(m.spec, m.aird?.asr)) });
    groupsHarmless.push({ label: 'after AIRD', bars: c.compressed.map((m) => bar(m.spec, m.aird?.harmless_refusal)) });
  }
  // keep bar colours stable across the two charts: every group lists models in the same order
  for (const g of [...groupsAsr, ...groupsHarmless]) g.bars.sort((a, b) => models.indexOf(a.name) - models.indexOf(b.name));
  const n = c.compressed[0]?.asr_ablate_own?.n_prompts;
  out.append(h('h2', {}, 'Compressed vs base'),
    h('div', { class: 'plots' },
      linePlot({ title: `Cosine with the base direction (position ${basePos})`, series, xLabel: 'layer', yLabel: 'cosine similarity', markX: base.direction.layer, xDomain: [0, nL - 1], yDomain: [0, 1], caption: `Cosine between each compressed model’s difference-of-means direction and the base model’s, layer by layer. Vertical dashed line: the base’s selected layer.${base.noise_floor ? ' Dashed curve: the base against itself, its directions from two halves of its training prompts; a compressed model’s curve near it moved no more than resampling the prompts does.' : ''}` }),
      barChart({ title: 'Attack success rate (harmful prompts answered)', groups: groupsAsr, yLabel: 'ASR', max: 1, percent: true, caption: `Fraction of ${n ?? ''} harmful evaluation prompts the judge found answered, not refused; error bars are Wilson 95% intervals.` }),
      barChart({ title: 'Refusal of harmless prompts', groups: groupsHarmless, yLabel: 'refusal rate', max: 1, percent: true, caption: 'Fraction of harmless evaluation prompts refused: with a direction added, refusal should appear. Error bars: Wilson 95% intervals.' })));

  out.append(h('h3', {}, 'Per compressed model'),
    h('p', { class: 'hint' }, 'Changes are in percentage points on the same prompts, with 95% paired bootstrap intervals; * marks those whose interval leaves 0 out. The others are not told apart from no change at this number of prompts.'),
    h('div', { class: 'table-wrap' }, table(c.compressed, [
    { key: 'spec', label: 'compressed' },
    { key: (m) => m.compression?.bits_per_weight, label: 'bits/weight', num: true },
    { key: (m) => m.compression?.sparsity, label: 'sparsity', num: true },
    { key: (m) => m.compression?.output_error, label: 'output error', num: true },
    { key: (m) => `${m.direction.layer}:${m.direction.position}`, label: 'own direction' },
    { key: 'cosine_at_base_selected', label: 'cosine at base cell', num: true },
    { key: () => base.noise_floor?.at_base_selected, label: 'noise floor', num: true },
    { key: (m) => change(m.vs_base?.asr), label: 'ASR vs base (points)' },
    { key: (m) => change(m.vs_base?.harmless_refusal), label: 'harmless refusal vs base' },
    { key: (m) => change(m.aird?.vs_compressed?.asr), label: 'AIRD: ASR change' },
    { key: (m) => m.decomposition?.share_along, label: 'share along base', num: true },
    { key: (m) => m.aird?.kl_to_base, label: 'AIRD KL to base', num: true },
    { key: (m) => m.aird?.fit?.settings?.alpha, label: 'AIRD α', num: true },
  ])));
  if (c.seeds) {
    out.append(seedsTable(c.seeds, [
      { spec: 'base', asr: c.seeds.base_asr, harmless: c.seeds.base_harmless_refusal, floor: c.seeds.noise_floor },
      ...c.seeds.compressed.map((m) => ({ spec: m.spec, cosine: m.cosine_at_base_selected, asr: m.asr, harmless: m.harmless_refusal, abB: m.asr_ablate_base, addB: m.harmless_refusal_add_base, aird: m.aird_asr })),
    ], [
      { key: 'spec', label: 'model' },
      { key: (r) => (r.floor ? `floor ${spread(r.floor)}` : spread(r.cosine)), label: 'cosine at base cell' },
      { key: (r) => spread(r.asr, 100), label: 'ASR (%)' },
      { key: (r) => spread(r.harmless, 100), label: 'harmless refusal (%)' },
      { key: (r) => spread(r.abB, 100), label: 'ASR, base direction ablated' },
      { key: (r) => spread(r.addB, 100), label: 'harmless refusal, base added' },
      { key: (r) => spread(r.aird, 100), label: 'ASR after AIRD' },
    ]));
  }
  out.append(judgesTable([
    { label: 'base, harmful', judged: base.baseline.asr },
    { label: 'base, harmless', judged: base.baseline.harmless_refusal },
    ...c.compressed.flatMap((m) => [
      { label: `${m.spec}, harmful`, judged: m.baseline.asr },
      { label: `${m.spec}, harmless`, judged: m.baseline.harmless_refusal },
    ]),
  ]) || '');
  out.append(samples(c.compressed.flatMap((m) => [
    { label: `${m.spec}, own ablated`, judged: m.asr_ablate_own },
    { label: `${m.spec}, base added`, judged: m.harmless_refusal_add_base },
    m.aird ? { label: `${m.spec} + AIRD`, judged: m.aird.asr } : null,
  ].filter(Boolean))) || '');
  return out;
}

/** A number over seeds: `mean ± sd [min, max]`, scaled by `k` (100 for percent). */
function spread(sp, k = 1) {
  if (!sp) return '—';
  const v = (x) => (Number.isFinite(x) ? fmt(k * x) : '—');
  return `${v(sp.mean)} ± ${v(sp.sd)} [${v(sp.min)}, ${v(sp.max)}]`;
}

/** The headline numbers over the seeds a study ran under. */
function seedsTable(seeds, rows, columns) {
  if (!seeds) return null;
  return h('div', {}, h('h3', {}, `Over seeds ${seeds.seeds.join(', ')}`),
    h('p', { class: 'hint' }, 'The whole study again for each seed of the prompt sampling (other training, validation and evaluation prompts): mean ± standard deviation [min, max]. Everything above is the first seed’s.'),
    h('div', { class: 'table-wrap seeds' }, table(rows, columns)));
}

/** Each judge's rate on the same completions, and how every two judges agree. */
function judgesTable(sets) {
  const rows = sets.filter(({ judged }) => judged?.judges?.rates?.length).map(({ label, judged }) => {
    const kappa = (judged.judges.agreement || []).map((a) => `${a.judges.join(' ~ ')}: κ ${fmt(a.kappa)}, ${pct(a.observed)} agree`).join('; ');
    return { label, rates: judged.judges.rates.map((r) => `${r.judge} ${pctIn({ rate: r.refusal_rate, interval: r.refusal_rate_interval })}`).join(' · '), kappa };
  });
  if (!rows.length) return null;
  return h('details', { class: 'more judges' }, h('summary', {}, 'Judges: each one’s refusal rate, and their agreement'),
    h('div', { class: 'table-wrap' }, table(rows, [
      { key: 'label', label: 'completions' },
      { key: 'rates', label: 'refused, by judge' },
      { key: 'kappa', label: 'agreement' },
    ])));
}

/** Every α tried on the validation prompts. */
function alphaTable(sel) {
  return h('div', { class: 'table-wrap' }, table(sel.scores, [
    { key: (r) => (r.alpha === sel.alpha ? `${r.alpha} (chosen)` : String(r.alpha)), label: 'α' },
    { key: (r) => pctIn({ rate: r.asr, interval: r.asr_interval }), label: 'validation ASR' },
    { key: (r) => pctIn({ rate: r.harmless_refusal, interval: r.harmless_refusal_interval }), label: 'validation harmless refusal' },
    { key: (r) => (r.allowed ? 'yes' : 'no'), label: 'within the bound' },
  ]));
}

const VARIANT_LABELS = {
  base: 'base', compressed: 'compressed', 'compressed+aird': 'compressed + AIRD',
  'compressed+add_base_direction': 'compressed + base direction added',
  'compressed+orthogonalize_drift': 'compressed, drift orthogonalized',
};

function airdView(result, a, modelId) {
  const out = h('div', { class: 'aird-result' });
  const vs = a.variants || [];
  const label = (v) => VARIANT_LABELS[v.name] || v.name;
  out.append(h('h2', {}, `${a.compressed} repaired at layer ${a.fit?.settings?.layer ?? a.base_direction?.layer}`),
    h('div', { class: 'facts' },
      fact('λ (ridge)', fmt(a.fit?.lambda)), fact('|u|', fmt(a.fit?.u_norm), 'norm of the correction'),
      fact('val. MSE before', fmt(a.fit?.validation?.mse_before)), fact('val. MSE after', fmt(a.fit?.validation?.mse_after)),
      fact('drift cosine', fmt(a.drift?.cosine), 'cosine of the compressed model’s direction with the base’s'),
      Number.isFinite(a.drift_noise_floor) ? fact('noise floor', fmt(a.drift_noise_floor), 'the base against itself: cosine of its directions from two halves of its training prompts, at the same layer and position') : '',
      fact('density', `${fmt(a.densification?.density_before)} → ${fmt(a.densification?.density_after)}`)),
    modelId ? h('p', { class: 'hint' }, 'The repaired model is stored on the server as ',
      h('code', {}, modelId), ' (in the model list of the other pages).') : '');
  const sel = a.alpha_selection;
  if (sel) {
    out.append(h('h3', {}, `α chosen on the validation prompts: ${sel.alpha}`),
      h('p', { class: 'hint' }, `The lowest validation ASR whose harmless refusal stays within ${fmt(100 * sel.grid.max_harmless_increase)} points of the compressed model’s (${pct(sel.compressed_harmless_refusal)}); the evaluation below is on other prompts.`),
      alphaTable(sel));
  }
  out.append(h('div', { class: 'plots' },
    barChart({ title: 'Attack success rate, before and after repair', groups: vs.map((v) => ({ label: label(v), bars: [bar('ASR', v.asr)] })), yLabel: 'ASR', max: 1, percent: true, caption: 'Harmful evaluation prompts answered (not refused), with Wilson 95% intervals. The repair should bring the compressed model back to the base.' }),
    barChart({ title: 'Refusal of harmless prompts', groups: vs.map((v) => ({ label: label(v), bars: [bar('harmless refusal', v.harmless_refusal)] })), yLabel: 'refusal rate', max: 1, percent: true, caption: 'Harmless evaluation prompts refused, with Wilson 95% intervals: a repair must not make the model refuse everything.' })));
  out.append(h('p', { class: 'hint' }, 'Changes from the compressed model are in percentage points on the same prompts, with 95% paired bootstrap intervals; * marks those whose interval leaves 0 out.'),
    h('div', { class: 'table-wrap' }, table(vs, [
    { key: label, label: 'model' },
    { key: (v) => pctIn(v.asr), label: 'ASR' },
    { key: (v) => change(v.vs_compressed?.asr), label: 'ASR vs compressed' },
    { key: (v) => v.asr?.mean_refusal_score, label: 'harmful refusal score', num: true },
    { key: (v) => pctIn(v.harmless_refusal), label: 'harmless refusal' },
    { key: (v) => change(v.vs_compressed?.harmless_refusal), label: 'harmless refusal vs compressed' },
    { key: 'kl_to_compressed', label: 'KL to compressed', num: true },
    { key: (v) => v.cross_entropy?.mean ?? v.cross_entropy, label: 'cross-entropy', num: true },
  ])));
  if (a.seeds) {
    out.append(seedsTable(a.seeds, a.seeds.variants, [
      { key: label, label: 'model' },
      { key: (v) => spread(v.asr, 100), label: 'ASR (%)' },
      { key: (v) => spread(v.harmless_refusal, 100), label: 'harmless refusal (%)' },
    ]));
  }
  out.append(judgesTable(vs.flatMap((v) => [
    { label: `${label(v)} · harmful`, judged: v.asr },
    { label: `${label(v)} · harmless`, judged: v.harmless_refusal },
  ])) || '');
  out.append(samples(vs.flatMap((v) => [
    { label: `${label(v)} · harmful`, judged: v.asr },
    { label: `${label(v)} · harmless`, judged: v.harmless_refusal },
  ])) || '');
  return out;
}

/** The view of a compare or aird result, with every number of its report underneath. */
export function compareResult(result) {
  const report = result.report || {};
  let view = null;
  try {
    if (result.kind === 'compare' && report['compare.json']) view = compareView(result, report['compare.json']);
    const airdFile = Object.keys(report).find((k) => k.endsWith('aird.json'));
    if (result.kind === 'aird' && airdFile) view = airdView(result, report[airdFile], report.model_id);
  } catch (e) {
    view = h('p', { class: 'message error' }, `This report could not be drawn (${e.message}); its numbers follow.`);
  }
  return h('div', {}, view,
    h('details', { class: 'more' }, h('summary', {}, 'Every number of the report'), reportTables(report)));
}

/** The view of a compare or aird report computed in a browser (kind: 'compare' | 'aird'). */
export function browserCompareResult(kind, report) {
  return compareResult({ kind, report: { [kind === 'compare' ? 'compare.json' : 'model.aird.json']: report } });
}
