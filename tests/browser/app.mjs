// End-to-end test of the web app in server mode: a real `refusal-lens serve` with a tiny random
// model, driven in headless Chromium (playwright-core, Debian's /usr/bin/chromium).
//
//   node tests/browser/app.mjs     (scripts/test-browser.sh runs it after the smoke test)
//
//   1. directions        the Directions page runs a job end to end: progress, three heatmaps
//                        with the selected cell marked, per-layer plots, download links;
//                        durations as its progress panel writes them ("2 min 0 s")
//   2. playground        the chosen direction is the playground's; a generate job streams
//                        tokens into 4 columns (base, ablated, activation added, orthogonalized);
//                        the coefficient slider re-runs the activation-added column alone
//   3. cancel            Cancel on a long generate job ends it as cancelled
//   4. share-directions  /r/{id} of the directions result shows exactly the numbers of
//                        GET /api/results/{id} (every heatmap cell, the selected direction)
//   5. share-generate    /r/{id} of the completions shows the stored texts; Re-run reproduces
//                        them (greedy decoding) under a new id
//   6. compare           Compressed vs base runs a compare job (with AIRD) on a recipe; the bars
//                        show the API's rates
//   7. repair            Repair runs an aird job; before/after bars show the API's rates
//   8. learn             the walk-through shows a content warning before the harmful example,
//                        then base and ablated completions of it
//   9. phone-dark        the playground on a phone-sized dark page has no horizontal overflow
// Screenshots: target/browser/app-*.png. Ends with `app: N passed, M failed`.
//
// Environment:
//   APP_BIN         refusal-lens binary (default $CARGO_TARGET_DIR/debug/refusal-lens)
//   APP_MODELS_DIR  folder holding the tiny model (required; scripts/test-browser.sh makes it)
//   APP_MODEL       model id in it (default tiny-llama)
//   APP_DIST        the built app (default <repo>/dist)
//   CHROMIUM        browser binary (default /usr/bin/chromium)

import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';
import {
  ROOT, MODELS, MODEL, DIST, SHOTS, CHROMIUM, JOB_TIMEOUT_MS,
  startServer, apiGet, check, open, jobEnd, Checks, run,
} from './harness.mjs';

/** Same number, as the page shows it from data attributes (JSON null = NaN). */
const same = (a, b) => (a === null || Number.isNaN(a) ? Number.isNaN(b) || b === null : a === b);

const checks = new Checks('app');
const log = (...a) => checks.log(...a);

async function main() {
  if (!MODELS || !fs.existsSync(path.join(MODELS, MODEL))) {
    console.error(`app: APP_MODELS_DIR must hold ${MODEL} (scripts/test-browser.sh writes it)`);
    console.log('app: 0 passed, 1 failed');
    return 1;
  }
  if (!fs.existsSync(path.join(DIST, 'app', 'main.js'))) {
    console.error(`app: ${DIST}/app/main.js not found; run scripts/build-web.sh first`);
    console.log('app: 0 passed, 1 failed');
    return 1;
  }
  fs.mkdirSync(SHOTS, { recursive: true });
  const server = await startServer();
  log(`server ${server.base} (data ${server.data}), model ${MODEL}`);
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-quic'],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, colorScheme: 'light' });
  const page = await context.newPage();
  checks.screenshotPage = page;
  checks.listen(page);

  const record = (name, fn) => checks.record(name, fn);
  const shot = (p, name) => checks.shot(p, name);

  let directionsId = null;
  let generateId = null;
  try {
    // 1. Directions, end to end
    await record('directions', async () => {
      await open(page, `${server.base}/#/directions`);
      await page.selectOption('#directions-form select[name=model]', MODEL);
      await page.fill('#directions-form input[name=n-train]', '4');
      await page.fill('#directions-form input[name=n-val]', '2');
      // The random model refuses nothing, so no candidate passes METHOD §6: choose one.
      await page.fill('#directions-form input[name=select]', '1:-1');
      await page.click('#directions-form button[type=submit]');
      const end = await jobEnd(page);
      check(end.state === 'succeeded', `the job ended ${end.state}: ${end.text}`);
      await page.waitForSelector('.directions-result');
      const info = await page.evaluate(() => ({
        heatmaps: document.querySelectorAll('.directions-result svg.heatmap').length,
        selected: document.querySelectorAll('.directions-result svg.heatmap .selected-cell').length,
        lines: document.querySelectorAll('.directions-result svg.lineplot').length,
        share: document.querySelector('.share-bar')?.dataset.resultId,
        files: [...document.querySelectorAll('.directions-result .files a')].map((a) => a.textContent),
        zip: !!document.querySelector('.directions-result a[href$="/export"]'),
      }));
      check(info.heatmaps === 3, `${info.heatmaps} heatmaps, expected 3`);
      check(info.selected === 3, `the selected cell is marked in ${info.selected} heatmaps, expected 3`);
      check(info.lines === 2, `${info.lines} line plots, expected 2`);
      check(info.files.includes('direction.safetensors'), `no direction.safetensors link (files: ${info.files})`);
      check(info.zip, 'no zip export link');
      // The progress panel rounds a duration before splitting it into minutes and seconds.
      const durations = await page.evaluate(async () => {
        const { duration } = await import('./app/ui.js');
        return [59.6, 119.6, 125.2].map(duration);
      });
      check(durations.join() === '1 min 0 s,2 min 0 s,2 min 5 s', `durations ${durations.join(' | ')}`);
      check(/^[0-9a-f]{32}$/.test(info.share || ''), 'no share bar with the result id');
      const res = await fetch(`${server.base}/api/results/${info.share}/files/direction.safetensors`);
      check(res.ok, `direction.safetensors: ${res.status}`);
      directionsId = info.share;
      await shot(page, 'directions');
      return `result ${directionsId}, ${info.files.length} files`;
    });

    // 2. Playground: 4 columns, streamed
    await record('playground', async () => {
      check(directionsId, 'no direction from the directions test');
      await open(page, `${server.base}/#/playground`);
      await page.selectOption('#playground-form select[name=model]', MODEL);
      const dir = await page.inputValue('#playground-form select[name=direction]');
      check(dir === directionsId, `the playground's direction is ${dir || 'none'}, expected ${directionsId}`);
      await page.fill('#playground-form textarea[name=prompt]', 'Write a short poem about the sea');
      await page.click('#playground-form details.more summary');
      await page.fill('#playground-form input[name=max-new-tokens]', '24');
      // Count text arriving in the columns before any column is settled from the report.
      await page.evaluate(() => {
        window.__streamed = 0;
        const obs = new MutationObserver(() => {
          const done = document.querySelector('.column[data-state=done]');
          if (!done) window.__streamed++;
        });
        obs.observe(document.querySelector('main'), { subtree: true, childList: true, characterData: true });
      });
      await page.click('#playground-form button[type=submit]');
      const end = await jobEnd(page);
      check(end.state === 'succeeded', `the job ended ${end.state}: ${end.text}`);
      await page.waitForFunction(() => document.querySelectorAll('.column[data-state=done]').length === 4, null, { timeout: 10_000 });
      const cols = await page.evaluate(() => [...document.querySelectorAll('.column')].map((c) => ({
        variant: c.dataset.variant, text: c.querySelector('pre').textContent,
      })));
      check(cols.map((c) => c.variant).join() === 'none,ablate,actadd,orthogonalized', `columns ${cols.map((c) => c.variant)}`);
      check(cols.every((c) => c.text.length > 0), 'an empty column');
      const streamed = await page.evaluate(() => window.__streamed);
      check(streamed >= 8, `only ${streamed} DOM updates before the report: tokens did not stream`);
      generateId = await page.evaluate(() => document.querySelector('.share-bar')?.dataset.resultId);
      check(/^[0-9a-f]{32}$/.test(generateId || ''), 'no share bar');
      const stored = await apiGet(server.base, `/api/results/${generateId}`);
      for (const c of stored.report['generate.json'].completions) {
        const shown = cols.find((x) => x.variant === c.variant);
        check(shown && shown.text === c.completion, `column ${c.variant} differs from the stored completion`);
      }
      await shot(page, 'playground');
      // The activation-added column again, with another coefficient: only that column changes.
      const others = cols.filter((c) => c.variant !== 'actadd').map((c) => c.text).join('\u0000');
      await page.evaluate(() => {
        const slider = document.querySelector('.column[data-variant=actadd] .controls input[type=range]');
        slider.value = '3';
        slider.dispatchEvent(new Event('input'));
      });
      await page.click('.column[data-variant=actadd] .controls button');
      await page.waitForFunction((old) => {
        const id = document.querySelector('.share-bar')?.dataset.resultId;
        return id && id !== old && document.querySelector('.column[data-variant=actadd]').dataset.state === 'done';
      }, generateId, { timeout: JOB_TIMEOUT_MS });
      const againId = await page.evaluate(() => document.querySelector('.share-bar').dataset.resultId);
      const again = await apiGet(server.base, `/api/results/${againId}`);
      check(again.request.args.coeff === 3 && again.request.args.variants.join() === 'actadd',
        `the re-run asked for ${JSON.stringify(again.request.args)}`);
      const actadd = await page.textContent('.column[data-variant=actadd] pre');
      check(actadd === again.report['generate.json'].completions[0].completion, 'the actadd column is not the re-run\'s completion');
      const after = await page.evaluate(() => [...document.querySelectorAll('.column')].filter((c) => c.dataset.variant !== 'actadd')
        .map((c) => c.querySelector('pre').textContent).join('\u0000'));
      check(after === others, 'the other columns changed');
      return `4 columns, ${streamed} streamed updates, result ${generateId}; actadd at coeff 3: ${againId}`;
    });

    // 3. Cancel a long job
    await record('cancel', async () => {
      await open(page, `${server.base}/#/playground`);
      await page.selectOption('#playground-form select[name=model]', MODEL);
      await page.fill('#playground-form textarea[name=prompt]', 'Tell me a very long story');
      await page.click('#playground-form details.more summary');
      await page.fill('#playground-form input[name=max-new-tokens]', '512');
      await page.click('#playground-form button[type=submit]');
      await page.waitForSelector('.column[data-state=streaming]', { timeout: JOB_TIMEOUT_MS });
      await page.click('.job-panel button');
      const end = await jobEnd(page);
      check(end.state === 'cancelled', `the job ended ${end.state}: ${end.text}`);
      const stopped = await page.evaluate(() => document.querySelectorAll('.column[data-state=stopped]').length);
      check(stopped >= 1, 'no column marked as stopped');
      await shot(page, 'cancel');
      return `${stopped} columns stopped`;
    });

    // 4. Share link of the directions result: the numbers of the API, exactly
    await record('share-directions', async () => {
      check(directionsId, 'no directions result');
      const api = await apiGet(server.base, `/api/results/${directionsId}`);
      await open(page, `${server.base}/r/${directionsId}`);
      await page.waitForSelector('.directions-result');
      const sel = api.report['selection.json'];
      const cells = await page.evaluate(() => [...document.querySelectorAll('svg.heatmap')].map((svg) =>
        [...svg.querySelectorAll('rect[data-layer]')].map((r) => ({
          layer: Number(r.dataset.layer), position: Number(r.dataset.position),
          value: r.dataset.value === 'nan' ? NaN : Number(r.dataset.value),
        }))));
      const keys = ['bypass', 'induce', 'kl'];
      let n = 0;
      keys.forEach((k, i) => {
        check(cells[i].length === sel.selection.candidates.length, `${k}: ${cells[i].length} cells, ${sel.selection.candidates.length} candidates`);
        for (const c of sel.selection.candidates) {
          const shown = cells[i].find((x) => x.layer === c.layer && x.position === c.position);
          check(shown && same(c[k], shown.value), `${k} at layer ${c.layer} position ${c.position}: shown ${shown?.value}, API ${c[k]}`);
          n++;
        }
      });
      const title = await page.textContent('.directions-result h2');
      const d = api.report['direction.json'];
      check(title.includes(`layer ${d.layer}, position ${d.position}`), `heading "${title}" does not name layer ${d.layer} position ${d.position}`);
      const rerun = await page.$('button.rerun');
      check(rerun, 'no Re-run button');
      await shot(page, 'share-directions');
      return `${n} heatmap cells equal the API's`;
    });

    // 5. Share link of the completions; Re-run reproduces them
    await record('share-generate', async () => {
      check(generateId, 'no generate result');
      const api = await apiGet(server.base, `/api/results/${generateId}`);
      await open(page, `${server.base}/r/${generateId}`);
      const shown = await page.evaluate(() => Object.fromEntries([...document.querySelectorAll('.result-body .column')]
        .map((c) => [c.dataset.variant, c.querySelector('pre').textContent])));
      const comps = api.report['generate.json'].completions;
      for (const c of comps) check(shown[c.variant] === c.completion, `${c.variant}: shown text differs from the API's`);
      await shot(page, 'share-generate');
      await page.click('button.rerun');
      await page.waitForURL((u) => /\/r\/[0-9a-f]{32}$/.test(u.pathname) && !u.pathname.endsWith(generateId), { timeout: JOB_TIMEOUT_MS });
      await page.waitForSelector('body[data-app=ready]');
      const newId = new URL(page.url()).pathname.split('/').pop();
      const again = await apiGet(server.base, `/api/results/${newId}`);
      const texts = (r) => r.report['generate.json'].completions.map((c) => c.completion).join('\u0000');
      check(texts(again) === texts(api), 'the re-run (greedy) gave different completions');
      return `${comps.length} completions equal the API's; re-run ${newId} reproduces them`;
    });

    /** Every bar's value of the `i`-th bar chart on the page, sorted. */
    const barValues = (i) => page.evaluate((k) => [...document.querySelectorAll('svg.barchart')[k].querySelectorAll('rect.bar[data-value]')]
      .map((r) => Number(r.dataset.value)).sort((a, b) => a - b), i);
    const sorted = (xs) => xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
    // Every error bar of chart i as "low-high", sorted; and the same of judged sets in the API.
    const errorBars = (i) => page.evaluate((k) => [...document.querySelectorAll('svg.barchart')[k].querySelectorAll('path.error-bar')]
      .map((p) => `${Number(p.dataset.low)}-${Number(p.dataset.high)}`).sort(), i);
    const intervals = (judged) => judged.map((j) => `${j.interval.low}-${j.interval.high}`).sort();

    // 6. Compressed vs base, with AIRD
    await record('compare', async () => {
      await open(page, `${server.base}/#/compare`);
      await page.selectOption('#compare-form select[name=base]', MODEL);
      for (const box of await page.$$('#compare-form input[name=recipe]:checked')) await box.uncheck();
      await page.fill('#compare-form input[name=compressed-other]', 'rtn:4:32');
      for (const [name, v] of [['n-train', 4], ['n-val', 2], ['n-eval', 2], ['n-calib', 4], ['max-new-tokens', 8]]) {
        await page.fill(`#compare-form input[name=${name}]`, String(v));
      }
      await page.check('#compare-form input[name=aird]');
      await page.fill('#compare-form input[name=seeds]', '3, 4');
      // The random model has no refusal: let compare's fallback choose a direction.
      await page.click('#compare-form details.more summary');
      await page.fill('#compare-form input[name=max-layer-fraction]', '1');
      await page.fill('#compare-form input[name=fallback-kl-max]', '100');
      await page.click('#compare-form button[type=submit]');
      const end = await jobEnd(page);
      check(end.state === 'succeeded', `the job ended ${end.state}: ${end.text}`);
      await page.waitForSelector('.compare-result');
      const id = await page.evaluate(() => document.querySelector('.share-bar')?.dataset.resultId);
      const c = (await apiGet(server.base, `/api/results/${id}`)).report['compare.json'];
      const m = c.compressed[0];
      const judgedAsr = [c.base.baseline.asr, m.baseline.asr, m.asr_ablate_own, m.asr_ablate_base, m.aird.asr];
      const judgedHarmless = [c.base.baseline.harmless_refusal, m.baseline.harmless_refusal, m.harmless_refusal_add_own,
        m.harmless_refusal_add_base, m.aird.harmless_refusal];
      const asr = sorted(judgedAsr.map((j) => j.rate));
      const harmless = sorted(judgedHarmless.map((j) => j.rate));
      check(JSON.stringify(await barValues(0)) === JSON.stringify(asr), `ASR bars ${await barValues(0)}, API ${asr}`);
      check(JSON.stringify(await barValues(1)) === JSON.stringify(harmless), `harmless bars ${await barValues(1)}, API ${harmless}`);
      check(JSON.stringify(await errorBars(0)) === JSON.stringify(intervals(judgedAsr)), `ASR error bars ${await errorBars(0)}, API ${intervals(judgedAsr)}`);
      check(JSON.stringify(await errorBars(1)) === JSON.stringify(intervals(judgedHarmless)), `harmless error bars ${await errorBars(1)}, API ${intervals(judgedHarmless)}`);
      check(m.vs_base?.asr && m.aird.vs_compressed?.asr, 'no paired differences in the report');
      // Two seeds: the page shows the spread the report holds.
      check(JSON.stringify(c.seeds?.seeds) === '[3,4]', `seeds in the report: ${JSON.stringify(c.seeds?.seeds)}`);
      const seedRows = await page.evaluate(() => document.querySelectorAll('.compare-result .seeds tbody tr').length);
      check(seedRows === 1 + c.compressed.length, `${seedRows} rows in the seeds table, expected the base and ${c.compressed.length} compressed`);
      // The compressed model's cosine curve and the base's split-half curve (4 training prompts: halves of 2).
      check(c.base.noise_floor, 'no noise floor in the report');
      const lines = await page.evaluate(() => [...document.querySelectorAll('.compare-result svg.lineplot path.series')].map((p) => p.classList.contains('dashed')));
      check(JSON.stringify(lines) === '[false,true]', `cosine lines (dashed?) ${lines}, expected the compressed model's and the dashed noise floor`);
      const floorText = await page.evaluate(() => [...document.querySelectorAll('.compare-result .fact')].find((f) => f.textContent.startsWith('noise floor'))?.textContent);
      const floorShown = String(Number(c.base.noise_floor.at_base_selected.toPrecision(3)));
      check(floorText?.includes(floorShown), `noise floor fact ${JSON.stringify(floorText)}, the API's ${floorShown}`);
      await shot(page, 'compare');
      return `result ${id}: ${asr.length} ASR and ${harmless.length} refusal bars equal the API's`;
    });

    // 7. Repair (AIRD)
    await record('repair', async () => {
      await open(page, `${server.base}/#/repair`);
      await page.selectOption('#aird-form select[name=base]', MODEL);
      await page.fill('#aird-form input[name=compressed-other]', 'rtn:4:32');
      await page.selectOption('#aird-form select[name=direction]', directionsId);
      for (const [name, v] of [['n-train', 4], ['n-val', 2], ['n-eval', 2], ['n-calib', 4], ['max-new-tokens', 8]]) {
        await page.fill(`#aird-form input[name=${name}]`, String(v));
      }
      await page.click('#aird-form button[type=submit]');
      const end = await jobEnd(page);
      check(end.state === 'succeeded', `the job ended ${end.state}: ${end.text}`);
      await page.waitForSelector('.aird-result');
      const id = await page.evaluate(() => document.querySelector('.share-bar')?.dataset.resultId);
      const rep = (await apiGet(server.base, `/api/results/${id}`)).report;
      const a = rep[Object.keys(rep).find((k) => k.endsWith('aird.json'))];
      const asr = sorted(a.variants.map((v) => v.asr.rate));
      const harmless = sorted(a.variants.map((v) => v.harmless_refusal.rate));
      check(asr.length >= 3, `${asr.length} variants`);
      check(JSON.stringify(await barValues(0)) === JSON.stringify(asr), `ASR bars ${await barValues(0)}, API ${asr}`);
      check(JSON.stringify(await barValues(1)) === JSON.stringify(harmless), `harmless bars ${await barValues(1)}, API ${harmless}`);
      const asrIntervals = intervals(a.variants.map((v) => v.asr));
      check(JSON.stringify(await errorBars(0)) === JSON.stringify(asrIntervals), `ASR error bars ${await errorBars(0)}, API ${asrIntervals}`);
      const changes = await page.evaluate(() => document.querySelectorAll('.aird-result td .difference').length);
      const want = 2 * a.variants.filter((v) => v.vs_compressed).length;
      check(changes === want, `${changes} changes from the compressed model in the table, the report has ${want}`);
      await shot(page, 'repair');
      return `result ${id}: ${a.variants.map((v) => v.name).join(', ')}`;
    });

    // 8. Learn: the content warning comes first
    await record('learn', async () => {
      await open(page, `${server.base}/#/learn`);
      check(await page.$('.content-warning'), 'no content warning before the harmful example');
      check(!(await page.$('.learn-step textarea')), 'the harmful example is shown before the warning was accepted');
      await page.click('.content-warning button');
      await page.waitForSelector('.learn-step textarea');
      await page.click('.learn-step .actions button');
      const end = await jobEnd(page);
      check(end.state === 'succeeded', `the job ended ${end.state}: ${end.text}`);
      // The columns settle once the stored result has been fetched, just after the job ends.
      await page.waitForFunction(() => document.querySelectorAll('.column[data-state=done]').length === 2, null, { timeout: 10_000 }).catch(() => {});
      const cols = await page.evaluate(() => [...document.querySelectorAll('.column[data-state=done]')].map((c) => c.dataset.variant));
      check(cols.join() === 'none,ablate', `columns ${cols}`);
      await shot(page, 'learn');
      return 'warning, then base and ablated';
    });

    // 9. Phone-sized, dark
    await record('phone-dark', async () => {
      const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, colorScheme: 'dark', deviceScaleFactor: 2 });
      const p = await phone.newPage();
      try {
        await open(p, `${server.base}/r/${generateId}`);
        const m = await p.evaluate(() => ({
          overflow: document.documentElement.scrollWidth - window.innerWidth,
          bg: getComputedStyle(document.body).backgroundColor,
        }));
        await shot(p, 'phone-dark');
        check(m.overflow <= 1, `the page is ${m.overflow}px wider than the phone`);
        check(m.bg !== 'rgb(247, 248, 250)', 'prefers-color-scheme: dark did not darken the page');
        // the toggle overrides the system's choice: auto -> light
        await p.click('#theme');
        const light = await p.evaluate(() => [document.documentElement.dataset.theme, getComputedStyle(document.body).backgroundColor]);
        check(light[0] === 'light' && light[1] === 'rgb(247, 248, 250)', `after the toggle: ${light}`);
        await p.click('#theme'); // -> dark
        await p.click('#theme'); // -> auto (as the system says: dark)
        await open(p, `${server.base}/r/${directionsId}`);
        const o2 = await p.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
        await shot(p, 'phone-dark-directions');
        check(o2 <= 1, `the directions result is ${o2}px wider than the phone`);
        return `background ${m.bg}`;
      } finally {
        await phone.close();
      }
    });
  } catch (e) {
    checks.broken(e);
  } finally {
    await browser.close().catch(() => {});
    server.child.kill('SIGTERM');
  }
  return checks.finish(server.data);
}

run('app', main);
