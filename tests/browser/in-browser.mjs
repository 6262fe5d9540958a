// End-to-end test of the web app's in-browser mode: the engine in a Web Worker, on WebGPU
// (SwiftShader) and on the CPU, checked against the native engine and the server.
//
//   node tests/browser/in-browser.mjs     (scripts/test-browser.sh runs it after app.mjs)
//
//   1. logits-webgpu     the Playground loads the tiny model from the server's files into the
//   2. logits-cpu        tab; its logits for a prompt equal the native engine's (APP_EXPECTED)
//   3. generate          with a direction file (from a server directions job), the four
//                        columns equal the server's `generate` job token for token (same text)
//   4. compressed        a recipe (2-bit RTN) compressed in the tab and repaired by AIRD: the
//                        six columns equal the server's `generate --compressed` job's; Cancel
//                        while compressing ends the worker, and the model comes back
//   5. cancel            Cancel stops a long in-browser generation; the engine still answers
//   6. share-static      Share packs the result into a #/s/ link; on a static host (no API)
//                        the link shows the same texts; loading the model there from its URL
//                        and re-running gives the same completions; a second load comes from
//                        the Cache API
//   7. directions        on a static host, the Directions page runs METHOD §3-6 in the tab: three
//                        heatmaps with the chosen cell; its direction.safetensors equals the
//                        CLI's for the same prompts; its #/s/ link shows the same selection;
//                        "Use in the playground" gives four in-browser columns, and Learn
//                        shows base and ablated in the tab after its content warning
//   8. directions-cancel Cancel stops a directions run; the model is loaded again by itself;
//                        scoring the last token only gives one candidate per layer
//   9. drop-files        the tiny model's files dropped on the loader load and give native logits;
//                        so does its folder picked whole (other files and subfolders left out)
//  10. bad-file          a broken .gguf picked from disk gives an error naming the file
//  11. compare-tab       on a static host, Compressed vs base compresses the model in the tab
//                        (2-bit RTN) and runs METHOD §9 with AIRD: directions, cosines, rates,
//                        completions and the AIRD fit equal the server's `compare` job's; its
//                        #/s/ link shows the same result
//  12. repair-tab        on a static host, Repair runs AIRD and its two baselines in the tab,
//                        with alpha chosen of 0 and 1 on the validation prompts: the choice
//                        and the five variants' rates, completions and KL equal the server's
//                        `aird` job's
// Screenshots: target/browser/in-browser-*.png. Ends with `in-browser: N passed, M failed`.
//
// Environment: as app.mjs, plus
//   APP_EXPECTED   {"prompts": [one], "logits"} from `cargo run -p refusal-tests --bin
//                  write-tiny-model -- MODELS_DIR --logits OUT.json PROMPT` (required)
//   APP_ATOL, APP_RTOL   logits tolerance |a-b| <= atol + rtol*|b| (default 1e-4, 1e-4)

import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import {
  ROOT, BIN, MODELS, MODEL, DIST, SHOTS, CHROMIUM, JOB_TIMEOUT_MS,
  startServer, apiGet, check, open, jobEnd, loadInBrowser, serveStatic, Checks, run,
} from './harness.mjs';

const EXPECTED = process.env.APP_EXPECTED;
const ATOL = Number(process.env.APP_ATOL || 1e-4);
const RTOL = Number(process.env.APP_RTOL || 1e-4);
/** Clicks Share and reads the result back from its #/s/ link: {link, report}. */
async function sharedReport(page) {
  await page.click('.share-bar button.share');
  await page.waitForSelector('.share-bar .share-link[href]', { state: 'attached' });
  const link = await page.getAttribute('.share-bar .share-link', 'href');
  const report = await page.evaluate(async (l) => {
    const { readFragment, fragmentOf } = await import(new URL('app/fragment.js', location.href).href);
    return (await readFragment(fragmentOf(new URL(l).hash))).report;
  }, link);
  return { link, report };
}

const fmt = (v) => (Number.isFinite(v) ? v.toPrecision(3) : String(v));

/** Sets the Playground's max new tokens (in its folded "Generation settings"). */
async function setMaxTokens(page, n) {
  await page.evaluate(() => { document.querySelector('#playground-form details.more').open = true; });
  await page.fill('#playground-form input[name=max-new-tokens]', String(n));
}

/** Each column's text, by variant. */
const columnTexts = (page, scope = 'main') => page.evaluate((sel) => Object.fromEntries(
  [...document.querySelectorAll(`${sel} .column`)].map((c) => [c.dataset.variant, c.querySelector('pre.completion').textContent])), scope);

/** Submits a job through the API and waits for its stored result. */
async function runJob(base, kind, args) {
  const res = await fetch(`${base}/api/jobs`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ kind, args }),
  });
  if (!res.ok) throw new Error(`POST /api/jobs ${kind}: ${res.status} ${await res.text()}`);
  const { id } = await res.json();
  const until = Date.now() + JOB_TIMEOUT_MS;
  for (;;) {
    const job = await apiGet(base, `/api/jobs/${id}`);
    if (job.state === 'succeeded') return apiGet(base, `/api/results/${job.result_id}`);
    check(!['failed', 'cancelled'].includes(job.state), `${kind} job ${job.state}: ${job.error || ''}`);
    check(Date.now() < until, `${kind} job still ${job.state}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** The f32 vector of a direction.safetensors. */
function directionVector(bytes) {
  const buf = Buffer.from(bytes);
  const n = Number(buf.readBigUInt64LE(0));
  const t = JSON.parse(buf.subarray(8, 8 + n).toString()).direction;
  const [a, b] = t.data_offsets;
  const data = buf.subarray(8 + n + a, 8 + n + b);
  return Array.from({ length: (b - a) / 4 }, (_, i) => data.readFloatLE(4 * i));
}

function compareLogits(got, want) {
  check(got.length === want.length, `${got.length} logits, expected ${want.length}`);
  let worst = 0;
  for (let i = 0; i < want.length; i++) {
    const err = Math.abs(got[i] - want[i]);
    check(Number.isFinite(got[i]) && err <= ATOL + RTOL * Math.abs(want[i]),
      `logit ${i}: ${got[i]} vs native ${want[i]}`);
    worst = Math.max(worst, err);
  }
  return worst;
}

const checks = new Checks('in-browser');
const log = (...a) => checks.log(...a);

async function main() {
  if (!MODELS || !fs.existsSync(path.join(MODELS, MODEL)) || !EXPECTED || !fs.existsSync(EXPECTED)) {
    console.error('in-browser: APP_MODELS_DIR must hold the tiny model and APP_EXPECTED its native logits (scripts/test-browser.sh)');
    console.log('in-browser: 0 passed, 1 failed');
    return 1;
  }
  const expected = JSON.parse(fs.readFileSync(EXPECTED, 'utf8'));
  if (expected.prompts?.length !== 1) {
    console.error(`in-browser: ${EXPECTED} must hold the logits of exactly one prompt`);
    console.log('in-browser: 0 passed, 1 failed');
    return 1;
  }
  const [nativePrompt] = expected.prompts;
  fs.mkdirSync(SHOTS, { recursive: true });
  // Only this run's screenshots (a failure's picture from an earlier run would mislead).
  for (const f of fs.readdirSync(SHOTS)) if (f.startsWith('in-browser-')) fs.rmSync(path.join(SHOTS, f));
  const server = await startServer();
  const host = await serveStatic({ '/': DIST, '/models/': MODELS });
  const staticBase = `http://127.0.0.1:${host.address().port}`;
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'refusal-lens-in-browser-'));
  log(`server ${server.base}, static host ${staticBase}, model ${MODEL}`);
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-quic', '--enable-unsafe-webgpu'],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  checks.screenshotPage = page;
  const listen = (p) => checks.listen(p);
  listen(page);

  const record = (name, fn) => checks.record(name, fn);
  const shot = (p, name) => checks.shot(p, name);

  let shared = null;
  let directionId = null;
  try {
    for (const backend of ['webgpu', 'cpu']) {
      await record(`logits-${backend}`, async () => {
        await open(page, `${server.base}/#/playground`);
        const { needs } = await loadInBrowser(page, { kind: 'server', value: MODEL, backend });
        check(/2 layers × 64/.test(needs) && /memory/.test(needs), `the header check shows: ${needs}`);
        const mode = await page.textContent('#mode');
        check(mode.includes(backend === 'webgpu' ? 'WebGPU' : 'CPU'), `the mode badge says "${mode}"`);
        const got = await page.evaluate(async (p) => Array.from(await window.refusalEngine.logits(p)), nativePrompt);
        const worst = compareLogits(got, expected.logits);
        await shot(page, `loaded-${backend}`);
        return `${got.length} logits, largest difference ${worst.toExponential(2)}`;
      });
    }

    await record('generate', async () => {
      const dir = await runJob(server.base, 'directions', { model: MODEL, 'n-train': 4, 'n-val': 2, select: '1:-1' });
      directionId = dir.id;
      const st = await fetch(`${server.base}/api/results/${dir.id}/files/direction.safetensors`);
      check(st.ok, `direction.safetensors: ${st.status}`);
      const dirFile = path.join(scratch, 'direction.safetensors');
      fs.writeFileSync(dirFile, Buffer.from(await st.arrayBuffer()));
      const prompt = 'Write a short poem about the sea';
      const serverRun = await runJob(server.base, 'generate', { model: MODEL, prompt, direction: dir.id, 'max-new-tokens': 12 });
      const want = Object.fromEntries(serverRun.report['generate.json'].completions.map((c) => [c.variant, c.completion]));

      // The CPU engine of logits-cpu is still loaded in this page.
      check(await page.evaluate(() => window.refusalEngine.info?.backend) === 'cpu', 'the CPU model is not loaded');
      await page.setInputFiles('#playground-form input[name=direction-file]', dirFile);
      await page.fill('#playground-form textarea[name=prompt]', prompt);
      await setMaxTokens(page, 12);
      await page.click('#playground-form button[type=submit]');
      const end = await jobEnd(page);
      check(end.state === 'succeeded', `the run ended ${end.state}: ${end.text}`);
      const got = await columnTexts(page);
      check(Object.keys(got).length === 4, `${Object.keys(got).length} columns, expected 4`);
      for (const v of Object.keys(want)) {
        check(got[v] === want[v], `${v}: the browser wrote ${JSON.stringify(got[v])}, the server ${JSON.stringify(want[v])}`);
      }
      await page.click('.share-bar button.share');
      await page.waitForSelector('.share-bar .share-link[href]', { state: 'attached' });
      shared = { link: await page.getAttribute('.share-bar .share-link', 'href'), texts: got };
      check(/#\/s\/[A-Za-z0-9_-]+$/.test(shared.link), `the share link is ${shared.link}`);
      await shot(page, 'generate');
      return `4 columns equal the server's; share link of ${shared.link.length} characters`;
    });

    await record('compressed', async () => {
      const prompt = 'Write a short poem about the sea';
      const dirFile = path.join(scratch, 'direction.safetensors');
      check(fs.existsSync(dirFile), 'no direction file from the generate test');
      check(directionId, 'no direction from the generate test');
      const args = { model: MODEL, prompt, direction: directionId, compressed: 'rtn:2:32', 'aird-prompts': 8, 'max-new-tokens': 8 };
      const serverRun = await runJob(server.base, 'generate', args);
      const want = Object.fromEntries(serverRun.report['generate.json'].completions.map((c) => [c.variant, c.completion]));
      check(Object.keys(want).length === 6, `the server gave ${Object.keys(want)}`);

      await setMaxTokens(page, 8);
      await page.fill('#playground-form input[name=compressed]', 'rtn:2:32');
      await page.dispatchEvent('#playground-form input[name=compressed]', 'input');
      await page.fill('#playground-form input[name=aird-prompts]', '8');
      await page.click('#playground-form button[type=submit]');
      const end = await jobEnd(page);
      check(end.state === 'succeeded', `the run ended ${end.state}: ${end.text}`);
      const got = await columnTexts(page);
      check(Object.keys(got).join() === Object.keys(want).join(), `columns ${Object.keys(got)}, the server's ${Object.keys(want)}`);
      for (const v of Object.keys(want)) {
        check(got[v] === want[v], `${v}: the browser wrote ${JSON.stringify(got[v])}, the server ${JSON.stringify(want[v])}`);
      }
      const about = await page.textContent('main .column[data-variant="compressed+aird"] .about');
      check(/rtn:2:32/.test(about) && /AIRD at layer 1/.test(about), `the AIRD column says: ${about}`);
      await shot(page, 'compressed');
      await page.fill('#playground-form input[name=compressed]', '');
      await page.dispatchEvent('#playground-form input[name=compressed]', 'input');

      // Cancel at the first progress message: the worker computes without yielding there, so
      // the engine ends it and loads the model again.
      const cancelled = await page.evaluate(async () => {
        const e = window.refusalEngine;
        const req = { prompt: 'Hi', max_new_tokens: 2, variants: ['compressed'], compressed: 'wanda:0.5', n_calib: 8 };
        let reloading = null;
        const outcome = await e.generate(req, (ev) => {
          if (ev.type !== 'progress' || reloading) return;
          e.cancel();
          reloading = e.reloading;
        }).then(() => 'finished', (err) => err.constructor.name);
        const ended = !!reloading;
        await reloading;
        const again = await e.generate({ prompt: 'Hi', max_new_tokens: 2 }, () => {});
        return { outcome, ended, loaded: !!e.info, again: again.completions.length };
      });
      check(cancelled.outcome === 'Cancelled', `the run ended: ${cancelled.outcome}`);
      check(cancelled.ended, 'Cancel while compressing did not end the worker (it would wait for the first token)');
      check(cancelled.loaded && cancelled.again === 1, `after Cancel: ${JSON.stringify(cancelled)}`);
      return `6 columns equal the server's (${JSON.stringify(got['compressed+aird'])} after AIRD); `
        + 'Cancel while compressing, then the model answered again';
    });

    await record('cancel', async () => {
      await setMaxTokens(page, 400);
      await page.click('#playground-form button[type=submit]');
      await page.waitForFunction(() => (document.querySelector('main .job-panel progress')?.value || 0) >= 3, null, { timeout: 60_000 });
      await page.click('main .job-panel button:text("Cancel")');
      const end = await jobEnd(page);
      check(end.state === 'cancelled', `the run ended ${end.state}: ${end.text}`);
      const done = await page.evaluate(() => document.querySelector('main .job-panel progress').value);
      await setMaxTokens(page, 3);
      await page.click('#playground-form button[type=submit]');
      const again = await jobEnd(page);
      check(again.state === 'succeeded', `after Cancel, a new run ended ${again.state}: ${again.text}`);
      return `stopped after ${done} tokens of 1600; the next run succeeded`;
    });

    await record('share-static', async () => {
      check(shared, 'no share link from the generate test');
      const link = `${staticBase}/${new URL(shared.link).hash}`;
      const p = await context.newPage();
      listen(p);
      try {
        await open(p, link);
        const shown = await columnTexts(p, '.result-body');
        for (const [v, text] of Object.entries(shared.texts)) {
          check(shown[v] === text, `${v} shows ${JSON.stringify(shown[v])}, expected ${JSON.stringify(text)}`);
        }
        check(await p.isDisabled('button.rerun'), 'Re-run is enabled before the model is loaded');
        await p.selectOption('.browser-model select[name=source-kind]', 'url');
        await p.fill('.browser-model input[name=model-url]', `${staticBase}/models/${MODEL}/`);
        await p.dispatchEvent('.browser-model input[name=model-url]', 'change');
        await p.selectOption('.browser-model select[name=backend]', 'cpu');
        await p.waitForFunction(() => [...document.querySelectorAll('.browser-model button')]
          .some((b) => b.textContent === 'Download and load' && !b.disabled), null, { timeout: 60_000 });
        await p.click('.browser-model button:text("Download and load")');
        await p.waitForFunction(() => !document.querySelector('button.rerun').disabled, null, { timeout: JOB_TIMEOUT_MS });
        await p.click('button.rerun');
        await p.waitForSelector('main .message', { timeout: JOB_TIMEOUT_MS });
        const verdict = await p.textContent('main .message');
        check(/same completions/.test(verdict), `the re-run says: ${verdict}`);
        await shot(p, 'share-static');

        // A second visit loads from the Cache API.
        await open(p, `${staticBase}/#/playground`);
        check((await p.textContent('#mode')).startsWith('browser'), 'the static host is not in browser mode');
        const again = await p.$('.browser-model button:text("again")');
        check(again, 'no "Load … again" button on the second visit');
        await again.click();
        await p.waitForSelector('.browser-model .loaded-model[data-loaded=cpu]', { timeout: JOB_TIMEOUT_MS });
        const state = await p.textContent('.browser-model .job-detail');
        check(/cache/.test(state), `the second load says: ${state}`);
        return `texts equal; re-run identical; second load: ${state}`;
      } catch (e) {
        await shot(p, 'share-static-page').catch(() => {});
        throw e;
      } finally {
        await p.close();
      }
    });

    await record('directions', async () => {
      const p = await context.newPage();
      listen(p);
      try {
        await open(p, `${staticBase}/#/directions`);
        await loadInBrowser(p, { kind: 'url', value: `${staticBase}/models/${MODEL}/`, backend: 'cpu' });
        await p.fill('#directions-form input[name=n-train]', '4');
        await p.fill('#directions-form input[name=n-val]', '2');
        await p.fill('#directions-form input[name=select]', '1:-1');
        await p.click('#directions-form button[type=submit]');
        const end = await jobEnd(p);
        check(end.state === 'succeeded', `the run ended ${end.state}: ${end.text}`);
        const info = await p.evaluate(async () => {
          const a = [...document.querySelectorAll('.directions-result .files a')].find((x) => x.textContent === 'direction.safetensors');
          const bytes = a ? Array.from(new Uint8Array(await (await fetch(a.href)).arrayBuffer())) : null;
          return {
            heatmaps: document.querySelectorAll('.directions-result svg.heatmap').length,
            selected: document.querySelectorAll('.directions-result svg.heatmap .selected-cell').length,
            cells: document.querySelectorAll('.directions-result svg.heatmap rect[data-value]').length,
            title: document.querySelector('.directions-result h2').textContent,
            bytes,
          };
        });
        check(info.heatmaps === 3 && info.selected === 3, `${info.heatmaps} heatmaps, ${info.selected} marked cells`);
        check(info.bytes, 'no direction.safetensors download');
        await shot(p, 'directions');

        // The CLI on the same model and prompts.
        const out = path.join(scratch, 'cli-direction');
        execFileSync(BIN, ['directions', '--model', path.join(MODELS, MODEL), '--n-train', '4', '--n-val', '2',
          '--select', '1:-1', '--out', out], { stdio: 'ignore' });
        const want = directionVector(fs.readFileSync(path.join(out, 'direction.safetensors')));
        const got = directionVector(info.bytes);
        check(got.length === want.length, `${got.length} dimensions, the CLI's has ${want.length}`);
        const scale = Math.max(...want.map(Math.abs));
        const worst = Math.max(...got.map((v, i) => Math.abs(v - want[i])));
        check(worst <= 1e-4 * scale, `the direction differs from the CLI's by ${worst} (scale ${scale})`);

        // Its share link, opened elsewhere, shows the same selection.
        await p.click('.share-bar button.share');
        await p.waitForSelector('.share-bar .share-link[href]', { state: 'attached' });
        const link = await p.getAttribute('.share-bar .share-link', 'href');
        const q = await context.newPage();
        listen(q);
        try {
          await open(q, link);
          const seen = await q.evaluate(() => ({
            cells: document.querySelectorAll('.result-body svg.heatmap rect[data-value]').length,
            title: document.querySelector('.result-body h2').textContent,
          }));
          check(seen.title === info.title && seen.cells === info.cells, `the link shows ${JSON.stringify(seen)}, the run ${info.title} with ${info.cells} cells`);
        } finally {
          await q.close();
        }

        // Use it in the Playground, in the tab.
        await p.click('.directions-result button.use-direction');
        await p.waitForSelector('body[data-page=playground][data-app=ready]');
        const dir = await p.inputValue('#playground-form select[name=direction]');
        check(dir.startsWith('local:'), `the playground's direction is ${dir || 'none'}`);
        await p.fill('#playground-form textarea[name=prompt]', 'Write a short poem about the sea');
        await setMaxTokens(p, 6);
        await p.click('#playground-form button[type=submit]');
        const gen = await jobEnd(p);
        check(gen.state === 'succeeded', `the playground run ended ${gen.state}: ${gen.text}`);
        const cols = await columnTexts(p);
        check(Object.keys(cols).length === 4, `${Object.keys(cols).length} columns`);

        // Learn walks through it in the tab, behind its content warning (same document: the
        // model stays loaded).
        await p.click('nav.pages a[data-page=learn]');
        await p.waitForSelector('body[data-page=learn][data-app=ready]');
        check(await p.isVisible('.content-warning'), 'no content warning before the harmful example');
        await p.click('.content-warning button');
        await p.click('.learn-step button:text("Generate: base and ablated")');
        const learn = await jobEnd(p);
        check(learn.state === 'succeeded', `the Learn run ended ${learn.state}: ${learn.text}`);
        const learnCols = await columnTexts(p);
        check(Object.keys(learnCols).join() === 'none,ablate', `Learn shows ${Object.keys(learnCols)}`);
        return `${info.title}; largest difference from the CLI ${worst.toExponential(2)}; 4 columns with it; Learn in the tab`;
      } finally {
        await p.close();
      }
    });

    await record('directions-cancel', async () => {
      const p = await context.newPage();
      listen(p);
      try {
        await open(p, `${staticBase}/#/directions`);
        await loadInBrowser(p, { kind: 'url', value: `${staticBase}/models/${MODEL}/`, backend: 'cpu' });
        await p.fill('#directions-form input[name=n-train]', '64');
        await p.fill('#directions-form input[name=n-val]', '16');
        await p.click('#directions-form button[type=submit]');
        await p.waitForFunction(() => document.querySelector('main .job-panel')?.dataset.state === 'progress', null, { timeout: 60_000 });
        await p.click('main .job-panel button:text("Cancel")');
        const end = await jobEnd(p);
        check(end.state === 'cancelled', `the run ended ${end.state}: ${end.text}`);
        await p.waitForSelector('.browser-model .loaded-model[data-loaded=cpu]', { timeout: 60_000 });

        // Scoring the last token only: one candidate per layer.
        await p.fill('#directions-form input[name=n-train]', '4');
        await p.fill('#directions-form input[name=n-val]', '2');
        await p.selectOption('#directions-form select[name=positions]', 'last');
        await p.click('#directions-form button[type=submit]');
        const again = await jobEnd(p);
        check(again.state === 'succeeded', `the last-token run ended ${again.state}: ${again.text}`);
        const cells = await p.evaluate(() => [...document.querySelectorAll('.directions-result svg.heatmap')]
          .map((svg) => svg.querySelectorAll('rect[data-value]').length));
        check(cells.join() === '2,2,2', `the last-token heatmaps have ${cells} cells, expected 2 each (2 layers)`);
        return 'cancelled; the model came back from the cache; a last-token run scores 2 candidates';
      } finally {
        await p.close();
      }
    });

    await record('drop-files', async () => {
      // A checkpoint folder's files dropped on the loader, as a user drags them from disk.
      await open(page, `${staticBase}/#/playground`);
      await page.selectOption('.browser-model select[name=source-kind]', 'files');
      const names = fs.readdirSync(path.join(MODELS, MODEL));
      await page.evaluate(async ({ base, names }) => {
        const dt = new DataTransfer();
        for (const n of names) dt.items.add(new File([await (await fetch(`${base}/${n}`)).blob()], n));
        const zone = document.querySelector('.browser-model .drop-zone');
        zone.dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
      }, { base: `${staticBase}/models/${MODEL}`, names });
      await page.selectOption('.browser-model select[name=backend]', 'cpu');
      await page.waitForFunction(() => [...document.querySelectorAll('.browser-model button')]
        .some((b) => b.textContent === 'Download and load' && !b.disabled), null, { timeout: 60_000 });
      await page.click('.browser-model button:text("Download and load")');
      await page.waitForSelector('.browser-model .loaded-model[data-loaded=cpu]', { timeout: JOB_TIMEOUT_MS });
      const got = await page.evaluate(async (p) => Array.from(await window.refusalEngine.logits(p)), nativePrompt);
      const worst = compareLogits(got, expected.logits);

      // The whole folder picked, with what a Hub folder also holds: a README and a subfolder
      // with another export, whose model.safetensors must not count twice.
      const folder = path.join(scratch, MODEL);
      fs.cpSync(path.join(MODELS, MODEL), folder, { recursive: true });
      fs.writeFileSync(path.join(folder, 'README.md'), '# tiny\n');
      fs.mkdirSync(path.join(folder, 'other'));
      fs.copyFileSync(path.join(folder, 'model.safetensors'), path.join(folder, 'other', 'model.safetensors'));
      await open(page, `${staticBase}/#/playground`);
      await page.selectOption('.browser-model select[name=source-kind]', 'files');
      await page.setInputFiles('.browser-model input[name=model-folder]', folder);
      await page.selectOption('.browser-model select[name=backend]', 'cpu');
      await page.waitForFunction(() => [...document.querySelectorAll('.browser-model button')]
        .some((b) => b.textContent === 'Download and load' && !b.disabled), null, { timeout: 60_000 });
      await page.click('.browser-model button:text("Download and load")');
      await page.waitForSelector('.browser-model .loaded-model[data-loaded=cpu]', { timeout: JOB_TIMEOUT_MS });
      const fromFolder = compareLogits(
        await page.evaluate(async (p) => Array.from(await window.refusalEngine.logits(p)), nativePrompt), expected.logits);
      return `${names.length} files dropped (${names.join(', ')}); logits within ${worst.toExponential(2)} of native; `
        + `the folder picked: within ${fromFolder.toExponential(2)}`;
    });

    await record('bad-file', async () => {
      const bad = path.join(scratch, 'broken.gguf');
      fs.writeFileSync(bad, Buffer.concat([Buffer.from('GGUF'), Buffer.from([3, 0, 0, 0]), Buffer.alloc(40, 0xff)]));
      await open(page, `${staticBase}/#/playground`);
      await page.selectOption('.browser-model select[name=source-kind]', 'files');
      await page.setInputFiles('.browser-model input[name=model-files]', bad);
      await page.waitForSelector('.browser-model .message.error', { timeout: 30_000 });
      const text = await page.textContent('.browser-model .message.error');
      check(/broken\.gguf/.test(text) && /GGUF/.test(text), `the error says: ${text}`);
      return text;
    });

    // The same run in the tab (static host) and on the server: 2-bit RTN needs no
    // calibration, batches of 8 on both sides; the random model has no refusal, so compare's
    // fallback chooses its directions.
    const study = { 'n-train': 4, 'n-val': 2, 'n-eval': 2, 'max-new-tokens': 4 };
    const fillStudy = async (p, form) => {
      for (const [name, v] of Object.entries(study)) await p.fill(`${form} input[name=${name}]`, String(v));
      for (const box of await p.$$(`${form} input[name=recipe][type=checkbox]:checked`)) await box.uncheck();
      await p.fill(`${form} input[name=compressed-other]`, 'rtn:2:32');
      await p.dispatchEvent(`${form} input[name=compressed-other]`, 'input');
    };
    const near = (a, b, what, tol = 1e-3) => check((a === null && b === null) || Math.abs(a - b) <= tol * (1 + Math.abs(b)),
      `${what}: the tab ${a}, the server ${b}`);
    const sameJudged = (a, b, what) => {
      check(a.n_refused === b.n_refused && a.rate === b.rate, `${what}: the tab ${a.n_refused}/${a.n_prompts} refused, the server ${b.n_refused}/${b.n_prompts}`);
      a.samples.forEach((x, i) => check(x.completion === b.samples[i]?.completion,
        `${what}, sample ${i}: the tab wrote ${JSON.stringify(x.completion)}, the server ${JSON.stringify(b.samples[i]?.completion)}`));
    };

    await record('compare-tab', async () => {
      const serverRun = await runJob(server.base, 'compare', {
        base: MODEL, compressed: ['rtn:2:32'], ...study, 'batch-size': 8, positions: [-1], aird: true,
        'max-layer-fraction': 1, 'fallback-kl-max': 100,
      });
      const want = serverRun.report['compare.json'];
      const p = await context.newPage();
      listen(p);
      try {
        await open(p, `${staticBase}/#/compare`);
        await loadInBrowser(p, { kind: 'url', value: `${staticBase}/models/${MODEL}/`, backend: 'cpu' });
        await fillStudy(p, '#compare-form');
        check(await p.inputValue('#compare-form select[name=positions]') === 'last', 'the tab does not score the last position only by default');
        await p.check('#compare-form input[name=aird]');
        await p.click('#compare-form details.more summary');
        await p.fill('#compare-form input[name=max-layer-fraction]', '1');
        await p.fill('#compare-form input[name=fallback-kl-max]', '100');
        await p.click('#compare-form button[type=submit]');
        const end = await jobEnd(p);
        check(end.state === 'succeeded', `the run ended ${end.state}: ${end.text}`);
        const lines = await p.evaluate(() => document.querySelectorAll('.compare-result svg.lineplot path.series').length);
        check(lines === 2, `${lines} cosine curves, expected the compressed model's and the base's split-half`);
        await shot(p, 'compare-tab');
        const { link, report: got } = await sharedReport(p);

        const [g, w] = [got.base.direction, want.base.direction];
        check(g.layer === w.layer && g.position === w.position, `the base direction: the tab ${g.layer}:${g.position}, the server ${w.layer}:${w.position}`);
        sameJudged(got.base.baseline.asr, want.base.baseline.asr, 'base ASR');
        for (const end of ['low', 'high']) near(got.base.baseline.asr.interval[end], want.base.baseline.asr.interval[end], `the base ASR's interval, ${end}`, 1e-9);
        check(got.base.noise_floor && want.base.noise_floor, 'no noise floor');
        got.base.noise_floor.cosines.forEach((c, i) => near(c, want.base.noise_floor.cosines[i], `noise floor ${i}`));
        const [gc, wc] = [got.compressed[0], want.compressed[0]];
        check(gc.direction.layer === wc.direction.layer && gc.direction.position === wc.direction.position, 'the compressed model\'s direction differs');
        check(gc.cosines.length === wc.cosines.length, `${gc.cosines.length} cosines, the server ${wc.cosines.length}`);
        gc.cosines.forEach((c, i) => near(c, wc.cosines[i], `cosine ${i}`));
        near(gc.decomposition.share_along, wc.decomposition.share_along, 'share along the base direction');
        for (const k of ['asr_ablate_own', 'harmless_refusal_add_own', 'asr_ablate_base', 'harmless_refusal_add_base']) sameJudged(gc[k], wc[k], k);
        near(gc.aird.fit.lambda, wc.aird.fit.lambda, 'AIRD lambda');
        near(gc.aird.fit.u_norm, wc.aird.fit.u_norm, 'AIRD |u|');
        sameJudged(gc.aird.asr, wc.aird.asr, 'ASR after AIRD');
        for (const rate of ['asr', 'harmless_refusal']) {
          const [g, w] = [gc.aird.vs_compressed[rate], wc.aird.vs_compressed[rate]];
          near(g.estimate, w.estimate, `AIRD's change of ${rate}`, 1e-9);
          for (const end of ['low', 'high']) near(g.interval[end], w.interval[end], `AIRD's change of ${rate}, ${end}`, 1e-9);
        }
        near(gc.aird.kl_to_compressed, wc.aird.kl_to_compressed, 'KL after AIRD', 1e-2);

        // The link shows the same result elsewhere.
        const q = await context.newPage();
        listen(q);
        try {
          await open(q, link);
          const shown = await q.evaluate(() => ({
            lines: document.querySelectorAll('.result-body svg.lineplot path.series').length,
            title: document.querySelector('.result-body h2')?.textContent,
          }));
          check(shown.lines === 2 && shown.title === `Base: layer ${g.layer}, position ${g.position}`, `the link shows ${JSON.stringify(shown)}`);
        } finally {
          await q.close();
        }
        return `base ${g.layer}:${g.position}, cosine at it ${fmt(gc.cosine_at_base_selected)}, AIRD lambda ${fmt(gc.aird.fit.lambda)}: equal to the server's`;
      } finally {
        await p.close();
      }
    });

    await record('repair-tab', async () => {
      const serverRun = await runJob(server.base, 'aird', {
        base: MODEL, compressed: 'rtn:2:32', layer: 1, ...study, 'batch-size': 8, 'alpha-grid': [0, 1],
      });
      const want = serverRun.report[Object.keys(serverRun.report).find((k) => k.endsWith('aird.json'))];
      const p = await context.newPage();
      listen(p);
      try {
        await open(p, `${staticBase}/#/repair`);
        await loadInBrowser(p, { kind: 'url', value: `${staticBase}/models/${MODEL}/`, backend: 'cpu' });
        await fillStudy(p, '#aird-form');
        // the difference in means at layer 1, as the server job computes it
        await p.selectOption('#aird-form select[name=direction]', '');
        await p.fill('#aird-form input[name=layer]', '1');
        await p.fill('#aird-form input[name=alpha]', '0, 1');
        await p.click('#aird-form button[type=submit]');
        const end = await jobEnd(p);
        check(end.state === 'succeeded', `the run ended ${end.state}: ${end.text}`);
        const bars = await p.evaluate(() => document.querySelectorAll('.aird-result svg.barchart').length);
        check(bars === 2, `${bars} bar charts`);
        await shot(p, 'repair-tab');
        const { report: got } = await sharedReport(p);
        check(got.variants.map((v) => v.name).join() === want.variants.map((v) => v.name).join(), `variants ${got.variants.map((v) => v.name)}`);
        got.variants.forEach((v, i) => {
          const u = want.variants[i];
          sameJudged(v.asr, u.asr, `${v.name} ASR`);
          sameJudged(v.harmless_refusal, u.harmless_refusal, `${v.name} harmless refusal`);
          near(v.kl_to_compressed, u.kl_to_compressed, `${v.name} KL`, 1e-2);
        });
        near(got.fit.lambda, want.fit.lambda, 'lambda');
        near(got.drift.cosine, want.drift.cosine, 'drift cosine');
        const [ga, wa] = [got.alpha_selection, want.alpha_selection];
        check(ga && wa && ga.alpha === wa.alpha && ga.scores.length === 2, `alpha chosen: the tab ${JSON.stringify(ga)}, the server ${JSON.stringify(wa)}`);
        ga.scores.forEach((x, i) => check(x.asr === wa.scores[i].asr && x.harmless_refusal === wa.scores[i].harmless_refusal, `alpha ${x.alpha} scores differ`));
        const chosen = await p.textContent('.aird-result');
        check(chosen.includes(`${ga.alpha} (chosen)`), 'the page does not show the chosen alpha');
        return `5 variants equal the server's; lambda ${fmt(got.fit.lambda)}, drift cosine ${fmt(got.drift.cosine)}; alpha ${ga.alpha} chosen of 0, 1 as on the server`;
      } finally {
        await p.close();
      }
    });
  } catch (e) {
    checks.broken(e);
  } finally {
    await browser.close().catch(() => {});
    server.child.kill('SIGTERM');
    host.close();
  }
  fs.rmSync(scratch, { recursive: true, force: true });
  return checks.finish(server.data);
}

run('in-browser', main);
