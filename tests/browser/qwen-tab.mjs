// The refusing model in a tab: Qwen2.5-Coder-0.5B (Q4_K_M) loaded into the in-browser CPU
// engine of headless Chromium from a static host, then Compressed vs base and Repair run on it
// in the tab with the page's own settings for a tab. A measurement, not a CI test (a run takes
// tens of minutes on 2 cores): scripts/bench-browser.sh runs it.
//
//   1. load      the model loads; the engine's WebAssembly memory stays within QWEN_TAB_MEMORY
//   2. compare   Compressed vs base (the page's default recipe, with AIRD) succeeds in the tab
//   3. repair    Repair (the page's default recipe) at the layer compare chose succeeds
// Each prints its wall time and the engine's memory after it; the numbers also go to
// target/browser/qwen-tab.json. Screenshots: target/browser/qwen-tab-*.png.
// Ends with `qwen-tab: N passed, M failed`.
//
// Environment:
//   QWEN_GGUF         the model file (required)
//   QWEN_TAB_MEMORY   the bound on the engine's memory after loading, bytes (default 1 GiB)
//   QWEN_TAB_TIMEOUT_MS  per run (default 3 h)
//   APP_DIST, CHROMIUM  as for the other browser tests

import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';
import {
  DIST, SHOTS, CHROMIUM, check, open, jobEnd, loadInBrowser, serveStatic, Checks, run,
} from './harness.mjs';

const GGUF = process.env.QWEN_GGUF;
const MEMORY_BOUND = Number(process.env.QWEN_TAB_MEMORY || 2 ** 30);
const TIMEOUT_MS = Number(process.env.QWEN_TAB_TIMEOUT_MS || 3 * 3600_000);
const MiB = (b) => `${(b / 2 ** 20).toFixed(0)} MiB`;

/** The engine's WebAssembly memory after its last call, in bytes. */
const engineMemory = (page) => page.evaluate(async () => {
  const { engine } = await import(new URL('app/engine.js', location.href).href);
  return engine.memoryBytes;
});

async function main() {
  check(GGUF && fs.existsSync(GGUF), `QWEN_GGUF (${GGUF}) is not a file`);
  const checks = new Checks('qwen-tab');
  const host = await serveStatic({ '/': DIST, '/models/': path.dirname(GGUF) });
  const base = `http://127.0.0.1:${host.address().port}`;
  const url = `${base}/models/${path.basename(GGUF)}`;
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-quic'],
  });
  const page = await (await browser.newContext({ viewport: { width: 1280, height: 900 } })).newPage();
  checks.screenshotPage = page;
  checks.listen(page);
  const measured = { model: path.basename(GGUF), file_bytes: fs.statSync(GGUF).size };
  const timed = async (name, fn) => {
    const started = Date.now();
    const detail = await fn();
    const seconds = (Date.now() - started) / 1000;
    const memory = await engineMemory(page);
    measured[name] = { seconds, memory_bytes: memory, ...detail };
    return `${seconds.toFixed(0)} s, engine memory ${MiB(memory)}`;
  };
  let layer = null;
  try {
    await checks.record('load', () => timed('load', async () => {
      await open(page, `${base}/#/compare`);
      const { state } = await loadInBrowser(page, { kind: 'url', value: url, backend: 'cpu' });
      await checks.shot(page, 'loaded');
      const memory = await engineMemory(page);
      check(memory <= MEMORY_BOUND, `the engine holds ${MiB(memory)} after loading, more than ${MiB(MEMORY_BOUND)}`);
      return { state };
    }));

    await checks.record('compare', () => timed('compare', async () => {
      await page.check('#compare-form input[name=aird]');
      const recipes = await page.$$eval('#compare-form input[name=recipe]:checked', (xs) => xs.map((x) => x.value));
      await page.click('#compare-form button[type=submit]');
      const end = await jobEnd(page, 'main', TIMEOUT_MS);
      await checks.shot(page, 'compare');
      check(end.state === 'succeeded', `the run ended ${end.state}: ${end.text.slice(0, 300)}`);
      const text = await page.textContent('.compare-result h2');
      const m = /layer (\d+)/.exec(text || '');
      check(m, `no base direction in the result (${text})`);
      layer = Number(m[1]);
      return { recipes, base_direction: text };
    }));

    await checks.record('repair', () => timed('repair', async () => {
      check(layer !== null, 'compare gave no layer');
      // The same document (a new one would end the engine's worker, and the model with it).
      await page.evaluate(() => { location.hash = '#/repair'; });
      await page.waitForSelector('#aird-form');
      await page.waitForSelector('.browser-model .loaded-model[data-loaded=cpu]');
      await page.selectOption('#aird-form select[name=direction]', '');
      await page.fill('#aird-form input[name=layer]', String(layer));
      const recipe = await page.$eval('#aird-form input[name=recipe]:checked', (x) => x.value);
      await page.click('#aird-form button[type=submit]');
      const end = await jobEnd(page, 'main', TIMEOUT_MS);
      await checks.shot(page, 'repair');
      check(end.state === 'succeeded', `the run ended ${end.state}: ${end.text.slice(0, 300)}`);
      return { recipe, layer };
    }));
  } catch (e) {
    checks.broken(e);
  } finally {
    fs.mkdirSync(SHOTS, { recursive: true });
    fs.writeFileSync(path.join(SHOTS, 'qwen-tab.json'), JSON.stringify(measured, null, 2));
    await browser.close();
    host.close();
  }
  return checks.finish();
}

run('qwen-tab', main);
