// A stored result, as its share link (/r/<id>) shows it: read from GET /api/results/{id},
// never recomputed. "Re-run" submits the stored request again and opens the new result.

import { getResult, Job } from './api.js';
import { h, message, JobPanel, shareBar } from './ui.js';
import { generateResult, completionColumns } from './generate-view.js';
import { directionsResult } from './directions-view.js';
import { compareResult } from './compare-view.js';
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

export async function render(root, { resultId }) {
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
        const variants = result.report?.['generate.json']?.completions?.map((c) => c.variant) || ['none'];
        cols = completionColumns(variants, result.report?.['generate.json']?.direction);
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
