// A shared result, never recomputed to be shown:
//   /r/<id>    a stored result of the server (GET /api/results/{id}); "Re-run" submits the
//              stored request again and opens the new result.
//   #/s/<...>  a result computed in a browser, carried in the link (fragment.js); "Re-run" runs
//              its request in this browser's engine, once the same model is loaded here.

import { getResult, Job } from './api.js';
import { h, message, JobPanel, shareBar, fragmentShareBar, setMode, progressClock } from './ui.js';
import { readFragment, fragmentLink } from './fragment.js';
import { engine, describe, runInPanel } from './engine.js';
import { browserModelPanel } from './browser-model.js';
import { hasServer, models$ } from './state.js';
import { generateResult, completionColumns } from './generate-view.js';
import { directionsResult, browserDirectionsResult } from './directions-view.js';
import { compareResult, browserCompareResult } from './compare-view.js';
import { reportTables } from './report-view.js';
import { rememberDirection } from './state.js';

const TITLES = {
  generate: 'Completions', directions: 'Refusal direction', eval: 'Evaluation',
  compress: 'Compressed model', compare: 'Compressed vs base', aird: 'AIRD repair',
};

/** The view of a result's report by kind. */
export function resultBody(result) {
  switch (result.kind) {
    case 'generate':
      if (result.report?.['generate.json']) return generateResult(result.report['generate.json']);
      break;
    case 'directions':
      return directionsResult(result);
    case 'compare':
    case 'aird':
      return compareResult(result);
    default:
  }
  return reportTables(result.report);
}

function modelName(fp) {
  if (!fp || typeof fp !== 'object') return fp ?? '?';
  const name = fp.model || fp.name || fp.id;
  return name ? String(name).split('/').pop() : JSON.stringify(fp).slice(0, 80);
}

export async function render(root, { resultId, fragment }) {
  if (fragment) return renderFragment(root, fragment);
  root.append(h('p', { class: 'lede' }, 'loading the result…'));
  let result;
  try {
    result = await getResult(resultId);
  } catch (e) {
    root.replaceChildren(h('h1', {}, 'Result not found'), message(e.message));
    return null;
  }
  if (result.kind === 'directions') rememberDirection(result);
  const panel = new JobPanel();
  const errors = h('div');
  const live = h('div');
  let job = null;
  const rerun = h('button', {
    type: 'button', class: 'rerun', onclick: async () => {
      rerun.disabled = true;
      errors.replaceChildren();
      const req = result.request || {};
      // For completions, stream the new text in beside the stored one.
      let cols = null;
      if (req.kind === 'generate') {
        const stored = result.report?.['generate.json'];
        const variants = stored?.completions?.map((c) => c.variant) || ['none'];
        cols = completionColumns(variants, stored?.direction, { compressed: stored?.compressed });
        live.replaceChildren(h('h2', {}, 'Re-run'), cols.el);
      }
      try {
        job = await Job.submit(req.kind, req.args || {}, (e) => {
          panel.event(e);
          if (e.type === 'token') cols?.append(e.variant, e.text);
          if (e.type === 'failed') errors.replaceChildren(message(e.error));
        });
        panel.attach(job);
        const end = await job.done;
        if (end.type === 'succeeded') location.assign(`/r/${end.result_id}`);
        else rerun.disabled = false;
      } catch (e) {
        errors.replaceChildren(message(e.message));
        rerun.disabled = false;
      }
    },
  }, 'Re-run');

  const when = new Date(result.created_at);
  root.replaceChildren(
    h('h1', {}, `${TITLES[result.kind] || result.kind}`),
    h('div', { class: 'meta' },
      h('span', {}, `kind: ${result.kind}`),
      h('span', {}, `model: ${modelName(result.model)}`),
      h('span', { title: result.created_at }, `created ${Number.isNaN(when.getTime()) ? result.created_at : when.toLocaleString()}`),
      h('span', { class: 'mono' }, `id ${result.id}`)),
    h('div', { class: 'actions' }, rerun, h('span', { class: 'hint' }, 'Shown from the stored result, not recomputed. Re-run submits the same request again.')),
    shareBar(result.id),
    errors, panel.el, live,
    h('div', { class: 'result-body', dataset: { kind: result.kind } }, resultBody(result)),
    h('details', { class: 'more' }, h('summary', {}, 'Request and command line'),
      h('pre', { class: 'formatted' }, JSON.stringify(result.request, null, 2)),
      h('p', { class: 'argv mono' }, (result.argv || []).join(' '))));
  return () => job?.close();
}

/** Whether the loaded model is the one a browser result was computed with. */
function sameModel(a, b) {
  return !!a && !!b && a.file === b.file && a.n_params === b.n_params && a.d_model === b.d_model;
}

async function renderFragment(root, packed) {
  let result;
  try {
    result = await readFragment(packed);
  } catch (e) {
    root.replaceChildren(h('h1', {}, 'Result not readable'), message(e.message));
    return null;
  }
  const report = result.report;
  const isDirections = result.kind === 'directions';
  const isStudy = result.kind === 'compare' || result.kind === 'aird';
  const m = (isDirections ? report.selection?.model
    : result.kind === 'compare' ? report.base?.model
      : result.kind === 'aird' ? report.base : report.model) || {};
  const panel = new JobPanel();
  const errors = h('div');
  const live = h('div');
  const server = await hasServer();
  const loader = browserModelPanel(server ? await models$() : []);
  const need = h('p', { class: 'hint' });
  const rerun = h('button', { type: 'button', class: 'rerun' }, 'Re-run in this browser');
  const sync = () => {
    const ok = sameModel(engine.info, m);
    setMode('browser', engine.info ? (engine.info.backend === 'webgpu' ? 'WebGPU' : 'CPU') : 'no model yet',
      'This result was computed in a browser; a re-run runs in this tab');
    rerun.disabled = !ok || engine.busy;
    loader.el.hidden = ok;
    need.textContent = ok ? `${describe(engine.info)} is loaded.`
      : `Re-running needs ${m.name || m.label || m.file} (${m.file}, ${m.n_layers} layers × ${m.d_model}) loaded in this browser.`;
  };
  const unsubscribe = engine.subscribe(sync);
  rerun.addEventListener('click', async () => {
    rerun.disabled = true;
    errors.replaceChildren();
    try {
      await runInPanel(panel, async () => {
        let again;
        if (isDirections) {
          again = await engine.directions(result.request, progressClock(panel));
          const same = again.direction && report.direction
            && again.direction.layer === report.direction.layer && again.direction.position === report.direction.position;
          live.replaceChildren(h('h2', {}, 'Re-run'),
            message(same ? 'The re-run chose the same direction.' : 'The re-run chose another direction (another backend’s rounding can tip close scores).', same ? 'info' : 'warn'),
            browserDirectionsResult(again));
        } else if (isStudy) {
          again = await (result.kind === 'compare' ? engine.compare : engine.aird).call(engine, result.request, progressClock(panel));
          live.replaceChildren(h('h2', {}, 'Re-run'), browserCompareResult(result.kind, again));
        } else {
          const variants = report.completions.map((c) => c.variant);
          const cols = completionColumns(variants, report.direction, { compressed: report.compressed });
          live.replaceChildren(h('h2', {}, 'Re-run'), cols.el);
          const onStage = progressClock(panel);
          again = await engine.generate(result.request, (e) => (e.type === 'token' ? cols.append(e.variant, e.text) : onStage(e)));
          cols.settle(again);
          const same = again.completions.every((c, i) => c.completion === report.completions[i]?.completion);
          live.append(message(same ? 'The re-run gave the same completions.' : 'The re-run differs from the shared completions (sampling, or another backend’s rounding).', same ? 'info' : 'warn'));
        }
        live.append(fragmentShareBar({ kind: result.kind, request: result.request, report: again }, fragmentLink));
      });
    } catch (e) {
      errors.replaceChildren(message(e.message));
    } finally {
      sync();
    }
  });
  sync();
  root.replaceChildren(
    h('h1', {}, TITLES[result.kind] || result.kind),
    h('div', { class: 'meta' },
      h('span', {}, `kind: ${result.kind}`),
      h('span', {}, `model: ${m.name || m.label || m.file || '?'}`),
      h('span', {}, `computed in a browser (${m.backend === 'webgpu' ? 'WebGPU' : 'CPU'})`)),
    h('div', { class: 'actions' }, rerun, need),
    h('p', { class: 'hint' }, 'Shown from the link itself: nothing was stored on a server, nothing is recomputed until you re-run it.'),
    loader.el, errors, panel.el, live,
    h('div', { class: 'result-body', dataset: { kind: result.kind } },
      isDirections ? browserDirectionsResult(report)
        : isStudy ? browserCompareResult(result.kind, report)
          : resultBody({ kind: result.kind, report: { 'generate.json': report } })),
    h('details', { class: 'more' }, h('summary', {}, 'Request'),
      h('pre', { class: 'formatted' }, JSON.stringify({ ...result.request, direction: result.request.direction && { ...result.request.direction, vector: `[${result.request.direction.vector?.length} numbers]` } }, null, 2))));
  return () => {
    unsubscribe();
    loader.dispose();
    if (engine.generating) engine.cancel();
  };
}
