// Directions: run the extraction with live progress per stage, then draw the selection: a
// `directions` job on the server (drawn from the stored result), or a run of the in-browser
// engine (drawn from its report, shared as a #/s/ link).

import { Job, getResult } from './api.js';
import { h, field, message, JobPanel, shareBar, fragmentShareBar, progressClock } from './ui.js';
import { modelPicker, flagDefaults } from './playground.js';
import { directionsResult, browserDirectionsResult } from './directions-view.js';
import { models$, hasServer, rememberDirection, setCurrentDirection } from './state.js';
import { engine, runInPanel } from './engine.js';
import { modelChooser, sizeForMode } from './browser-model.js';
import { fragmentLink } from './fragment.js';

/**
 * Prompt counts for a run in a tab: one WebAssembly thread is about 10x slower than the CLI
 * on two cores (SmolLM2, 16+16 training and 4+4 validation prompts: 30 min in a tab).
 */
const IN_TAB = { 'n-train': 16, 'n-val': 2 };

/** The in-browser engine's request for the form's flags: the same names as a server job's. */
function browserRequest({ model, positions, ...args }) {
  return positions === 'last' ? { ...args, positions: [-1] } : args;
}

export async function render(root) {
  const server = await hasServer();
  const defaults = server ? await flagDefaults('directions') : await engine.defaults('directions');
  const chooser = modelChooser(server ? await modelPicker('model') : null, server ? await models$() : [],
    () => fitToMode());
  const model = chooser.select;
  const num = (name, attrs = {}) => h('input', { name, type: 'number', value: defaults[name] ?? '', ...attrs });
  const nTrain = num('n-train', { min: 1 });
  const nVal = num('n-val', { min: 1 });
  const select = h('input', { name: 'select', placeholder: 'automatic (METHOD §6)', pattern: '\\d+:-?\\d+' });
  const seed = num('seed', { min: 0 });
  const batch = num('batch-size', { min: 1 });
  const klMax = num('kl-max', { step: 'any', min: 0 });
  const maxFrac = num('max-layer-fraction', { step: 'any', min: 0, max: 1 });
  const induceMin = num('induce-min', { step: 'any' });
  const positions = h('select', { name: 'positions' },
    h('option', { value: 'all' }, 'every post-instruction position (METHOD §6)'),
    h('option', { value: 'last' }, 'the last token only (fewer candidates, faster)'));
  const positionsField = field('Positions to score', positions, 'in-browser runs only');
  /** Smaller runs in a tab; the server's sizes back on the server. */
  const fitToMode = () => {
    const tab = chooser.inBrowser();
    positionsField.hidden = !tab;
    sizeForMode(tab, [nTrain, nVal].map((input) => [input, defaults[input.name], IN_TAB[input.name]]));
  };

  const go = h('button', { type: 'submit' }, 'Extract direction');
  const panel = new JobPanel();
  const errors = h('div');
  const share = h('div');
  const out = h('div');
  let job = null;

  const form = h('form', { class: 'panel', id: 'directions-form' },
    h('div', { class: 'form-grid' },
      field('Model', model),
      field('Training prompts per set', nTrain, 'harmful and harmless each'),
      field('Validation prompts per set', nVal),
      field('Choose the direction', select, 'LAYER:POSITION, e.g. 12:-1'),
      positionsField),
    h('details', { class: 'more' }, h('summary', {}, 'Selection settings'),
      h('div', { class: 'form-grid' },
        field('Seed', seed), field('Batch size', batch), field('KL max', klMax),
        field('Max layer fraction', maxFrac), field('Induce min', induceMin))),
    h('div', { class: 'actions' }, go,
      h('span', { class: 'hint' }, 'Uses the built-in harmful and harmless prompt sets. Every candidate (layer × position) is scored on the validation prompts; this takes minutes on a CPU, longer in a browser.')));

  /** Runs in this browser's engine. */
  const runInBrowser = async (args) => {
    if (!engine.info) {
      errors.replaceChildren(message('Load a model into this browser first (the panel above), or choose a server model.'));
      return;
    }
    const request = browserRequest(args);
    go.disabled = true;
    try {
      await runInPanel(panel, async () => {
        const report = await engine.directions(request, progressClock(panel));
        if (!report.direction) {
          errors.replaceChildren(message('No candidate passed the filters. Every candidate’s scores are shown below: enter a layer and position under “Choose the direction” and run it again.', 'info'));
        }
        share.replaceChildren(fragmentShareBar({ kind: 'directions', request, report }, fragmentLink));
        out.replaceChildren(browserDirectionsResult(report));
      });
    } catch (e) {
      errors.replaceChildren(message(e.message));
    } finally {
      go.disabled = false;
    }
  };

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    errors.replaceChildren();
    share.replaceChildren();
    out.replaceChildren();
    const args = { model: model.value };
    for (const input of [nTrain, nVal, seed, batch, klMax, maxFrac, induceMin]) {
      if (input.value !== '' && String(input.value) !== String(defaults[input.name])) args[input.name] = Number(input.value);
    }
    // n-train / n-val are always sent: they decide the run's cost.
    args['n-train'] = Number(nTrain.value);
    args['n-val'] = Number(nVal.value);
    if (select.value.trim()) args.select = select.value.trim();
    if (chooser.inBrowser()) {
      runInBrowser({ ...args, positions: positions.value });
      return;
    }
    go.disabled = true;
    try {
      job = await Job.submit('directions', args, (e) => {
        panel.event(e);
        if (e.type === 'failed') {
          errors.replaceChildren(message(e.error));
          if (/--select/.test(e.error)) {
            errors.append(message('No candidate passed the filters. Every candidate’s scores are shown below: enter a layer and position under “Choose the direction” and run it again.', 'info'));
          }
        }
      });
      panel.attach(job);
      const end = await job.done;
      if (end.type === 'failed' && end.result_id) {
        // The selection table the run stored before failing.
        const result = await getResult(end.result_id);
        share.replaceChildren(shareBar(result.id));
        out.replaceChildren(directionsResult(result));
      }
      if (end.type === 'succeeded') {
        const result = await getResult(end.result_id);
        rememberDirection(result);
        setCurrentDirection(result.id);
        share.replaceChildren(shareBar(result.id),
          h('p', { class: 'hint' }, 'This direction is now the playground’s direction.'));
        out.replaceChildren(directionsResult(result));
      }
    } catch (e) {
      errors.replaceChildren(message(e.message));
      panel.el.hidden = true;
    } finally {
      go.disabled = false;
    }
  });

  root.append(
    h('h1', {}, 'Directions'),
    h('p', { class: 'lede' }, 'A refusal direction is the difference between the mean activations on harmful and harmless instructions, at one layer and one position after the instruction. Every candidate is scored: how much ablating it bypasses refusal, how much adding it induces refusal, and how much it disturbs harmless predictions (KL).'),
    chooser.loader.el, form, errors, panel.el, share, out);
  fitToMode();
  return () => {
    job?.close();
    chooser.dispose();
  };
}
