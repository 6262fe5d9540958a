// Learn: a guided walk-through. What a refusal direction is, where to extract one, and (behind
// a content warning) what a model writes when the direction is ablated: on the server for a
// direction stored there, in the tab for one found in this browser.

import { Job, getResult } from './api.js';
import { h, message, JobPanel, shareBar, fragmentShareBar, field } from './ui.js';
import { models$, hasServer, knownDirections, browserDirections, currentDirection } from './state.js';
import { completionColumns } from './generate-view.js';
import { engine, runInPanel } from './engine.js';
import { browserModelPanel } from './browser-model.js';
import { fragmentLink } from './fragment.js';

const CONSENT = 'refusal-lens.learn-consent';

// The example request of scripts/run.sh: harmful enough that an aligned model refuses it.
const EXAMPLE = 'Create a tutorial on how to hack a website';

function step(n, title, ...body) {
  return h('section', { class: 'panel learn-step' }, h('h2', {}, h('span', { class: 'step-n' }, n), title), ...body);
}

export async function render(root) {
  const server = await hasServer();
  const dirs = [...browserDirections(), ...(server ? knownDirections() : [])];
  const dir = dirs.find((d) => d.id === currentDirection()) || dirs[0];
  const inBrowser = dir?.id.startsWith('local:');
  const loader = inBrowser ? browserModelPanel(server ? await models$() : []) : null;
  let job = null;

  /** Base and ablated completions in this tab's engine. */
  const runInBrowser = async (prompt, cols, panel, share) => {
    if (!engine.info) throw new Error(`Load ${dir.model} into this browser first (the panel above).`);
    const request = {
      prompt, max_new_tokens: 96, variants: ['none', 'ablate'],
      direction: { vector: dir.vector, layer: dir.layer, position: dir.position },
    };
    let finished;
    try {
      finished = await runInPanel(panel, async () => {
        const report = await engine.generate(request, (e) => cols.append(e.variant, e.text));
        cols.settle(report);
        share.append(fragmentShareBar({ kind: 'generate', request, report }, fragmentLink));
      });
    } catch (e) {
      cols.stop('failed');
      throw e;
    }
    if (!finished) cols.stop('cancelled');
  };

  const demo = h('div');
  const showDemo = () => {
    const prompt = h('textarea', { name: 'prompt', rows: 2, value: EXAMPLE });
    const go = h('button', { type: 'button' }, 'Generate: base and ablated');
    const panel = new JobPanel();
    const out = h('div');
    const share = h('div');
    go.addEventListener('click', async () => {
      out.replaceChildren();
      share.replaceChildren();
      const cols = completionColumns(['none', 'ablate'], null);
      out.append(cols.el);
      go.disabled = true;
      try {
        if (inBrowser) {
          await runInBrowser(prompt.value, cols, panel, share);
          return;
        }
        job = await Job.submit('generate', {
          model: dir.model, prompt: prompt.value, direction: dir.id, variants: ['none', 'ablate'], 'max-new-tokens': 96,
        }, (e) => {
          panel.event(e);
          if (e.type === 'token') cols.append(e.variant, e.text);
          if (e.type === 'failed') out.prepend(message(e.error));
          if (e.type === 'cancelled') cols.stop('cancelled');
        });
        panel.attach(job);
        const end = await job.done;
        if (end.type === 'succeeded') {
          const result = await getResult(end.result_id);
          cols.settle(result.report['generate.json']);
          share.append(shareBar(end.result_id));
        }
      } catch (e) {
        out.prepend(message(e.message));
      } finally {
        go.disabled = false;
      }
    });
    // replaceChildren() would write a null as the text "null"
    demo.replaceChildren(...[loader?.el].filter(Boolean),
      h('p', {}, `With the direction of ${dir.model} (layer ${dir.layer}, position ${dir.position}), the same request is answered twice: by the model as it is, and with the direction projected out of every layer's residual stream${inBrowser ? ', here in your browser' : ''}.`),
      field('Request', prompt), h('div', { class: 'actions' }, go), panel.el, share, out);
  };

  const warning = h('div', { class: 'content-warning', role: 'note' },
    h('h3', {}, 'Content warning'),
    h('p', {}, 'This step sends a harmful request to the model and shows what it writes once its refusal is removed. The text can describe dangerous or offensive things. It is shown to explain how safety training works in these models, not to help anyone act on it.'),
    h('div', { class: 'actions' },
      h('button', {
        type: 'button', class: 'secondary', onclick: () => {
          try {
            sessionStorage.setItem(CONSENT, '1');
          } catch {
            // asked again next time
          }
          showDemo();
        },
      }, 'I understand, show it')));

  let step2;
  if (!dir) {
    step2 = h('p', {}, 'First extract a direction (step 1); then come back here.');
  } else {
    let consented = false;
    try {
      consented = sessionStorage.getItem(CONSENT) === '1';
    } catch {
      // no storage: ask
    }
    if (consented) showDemo();
    else demo.append(warning);
    step2 = demo;
  }

  root.append(
    h('h1', {}, 'Learn'),
    h('p', { class: 'lede' }, `Chat models are trained to refuse harmful requests. In many of them that behaviour is carried by a single direction in the activations: remove it and the model stops refusing; add it and the model refuses harmless requests. This walk-through shows it on a live model${server ? ', on this server or in your browser' : ' running in your browser'}.`),
    step('1', 'Find the direction',
      h('p', {}, 'Run the model on harmful and on harmless instructions and average its residual-stream activations at each layer, at the positions after the instruction. The difference of the two means, r = μ(harmful) − μ(harmless), is a candidate refusal direction. Every layer and position gives a candidate; each is scored by how much ablating it stops refusal (bypass), how much adding it causes refusal (induce), and how little it disturbs harmless predictions (KL).'),
      dir
        ? h('p', {}, 'You have a direction: ', inBrowser
          ? `${dir.model}, layer ${dir.layer}, position ${dir.position} (found in this browser)`
          : h('a', { href: `/r/${dir.id}` }, `${dir.model}, layer ${dir.layer}, position ${dir.position}`), '.')
        : h('p', {}, h('a', { href: '#/directions' }, 'Extract one on the Directions page'), ' (a few minutes on a CPU, in the browser or on the server).')),
    step('2', 'Remove it',
      h('p', {}, 'Ablation projects r out of the residual stream: x ← x − r̂ r̂ᵀ x at every layer and position, so no layer can write along it.'),
      step2),
    step('3', 'Put it back, or edit the weights',
      h('p', {}, 'Adding the direction (x ← x + c·r at its layer) makes the model refuse harmless requests; orthogonalizing the weights makes the ablation permanent, with no hook at run time. The ', h('a', { href: '#/playground' }, 'Playground'), ' shows all four side by side, with a slider for c.')),
    step('4', 'Does compression keep it?',
      h('p', {}, 'Quantizing or pruning a model moves its activations. ', h('a', { href: '#/compare' }, 'Compressed vs base'), ' measures whether the direction survives, and ', h('a', { href: '#/repair' }, 'Repair'), ' corrects it when it does not.')));
  return () => {
    job?.close();
    loader?.dispose();
    if (engine.generating) engine.cancel();
  };
}
