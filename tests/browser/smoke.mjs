// Browser smoke test for the Refusal Lens web build.
//
//   node tests/browser/smoke.mjs            (after scripts/build-web.sh; or use scripts/test-browser.sh)
//
// Serves dist/ and the tiny random model (SMOKE_MODEL_DIR) on 127.0.0.1, drives Debian's Chromium
// headless through playwright-core (no browser download, ever) and, with the wasm module, loads
// the model's files through the app's loader (`load_engine`) and computes the last-position
// logits of two prompts of different lengths in one batch (so left padding and its mask are
// exercised):
//   1. webgpu            Chromium with --enable-unsafe-webgpu (SwiftShader's Vulkan on a GPU-less
//                        machine), on WebGPU
//   2. cpu-only          a second Chromium WITHOUT that flag, where requestAdapter() gives null:
//                        the CPU-only browser, on Burn's flex backend
//   3. no-adapter-error  in that CPU-only browser, loading on WebGPU must reject with a readable
//                        error (not a panic), and the CPU path must still work afterwards
//   4. cpu-after-webgpu  on the CPU in the WebGPU page, after the WebGPU run
// Each result must be non-empty and finite; the CPU results must match the WebGPU one, and all
// must match the native engine's logits when SMOKE_EXPECTED (default target/smoke-expected.json,
// written by `cargo run -p refusal-tests --bin write-tiny-model -- MODELS_DIR --logits OUT.json
// PROMPT...`) exists; its prompts are the ones run.
// Ends with a line `browser: N passed, M failed`; exit status 1 if anything failed.
//
// Environment:
//   SMOKE_MODEL_DIR   the tiny model's Hugging Face folder (required; scripts/test-browser.sh)
//   SMOKE_DIST        folder to serve (default: <repo>/dist)
//   SMOKE_EXPECTED    native logits JSON (default: <repo>/target/smoke-expected.json):
//                     {"prompts": [...], "logits": [...], "shape": [..], "atol"?, "rtol"?}
//   SMOKE_REQUIRE_EXPECTED=1   fail (instead of skipping) when that file is absent
//   SMOKE_ATOL, SMOKE_RTOL     tolerance |a-b| <= atol + rtol*|b| (default 1e-4, 1e-4)
//   SMOKE_TIMEOUT_S   limit for one load and forward (default 600; SwiftShader is slow)
//   CHROMIUM          browser binary (default /usr/bin/chromium)
//   SMOKE_HEADFUL=1   show the browser window

import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { serveStatic } from './harness.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '..', '..');
const DIST = path.resolve(process.env.SMOKE_DIST || path.join(ROOT, 'dist'));
const MODEL_DIR = process.env.SMOKE_MODEL_DIR;
// Without native logits to take the prompts from: two of different lengths all the same.
const FALLBACK_PROMPTS = ['Hi', 'Write a haiku about the sea, then explain its imagery in two lines.'];
const EXPECTED = path.resolve(process.env.SMOKE_EXPECTED || path.join(ROOT, 'target', 'smoke-expected.json'));
const SHOTS = path.join(ROOT, 'target', 'browser');
const ATOL = Number(process.env.SMOKE_ATOL || 1e-4);
const RTOL = Number(process.env.SMOKE_RTOL || 1e-4);
const CALL_TIMEOUT_MS = Number(process.env.SMOKE_TIMEOUT_S || 600) * 1000;
const LOAD_TIMEOUT_MS = 120_000;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

// BROWSER.md: the usual headless flags; playwright-core makes its own fresh --user-data-dir.
const BASE_FLAGS = [
  '--no-sandbox', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--disable-quic',
];
const WEBGPU_FLAGS = [...BASE_FLAGS, '--enable-unsafe-webgpu'];

const log = (...a) => console.log('browser:', ...a);

// ------------------------------------------------------------------ helpers
function withTimeout(promise, ms, what) {
  let timer;
  const limit = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer after ${ms / 1000} s`)), ms);
  });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

function checkLogits(values, what) {
  if (!Array.isArray(values) || values.length === 0) throw new Error(`${what}: no logits returned`);
  const bad = values.findIndex((v) => typeof v !== 'number' || !Number.isFinite(v));
  if (bad >= 0) throw new Error(`${what}: logit ${bad} is ${values[bad]}`);
  if (values.every((v) => v === 0)) throw new Error(`${what}: all ${values.length} logits are 0`);
}

/** Compare two logit vectors; returns the max abs difference or throws. */
function compare(actual, expected, what, atol = ATOL, rtol = RTOL) {
  if (actual.length !== expected.length) {
    throw new Error(`${what}: ${actual.length} logits, expected ${expected.length}`);
  }
  let maxDiff = 0;
  let worst = -1;
  for (let i = 0; i < actual.length; i++) {
    const d = Math.abs(actual[i] - expected[i]);
    if (d > maxDiff) maxDiff = d;
    if (!(d <= atol + rtol * Math.abs(expected[i])) && worst < 0) worst = i;
  }
  if (worst >= 0) {
    throw new Error(`${what}: logit ${worst} is ${actual[worst]}, expected ${expected[worst]} ` +
      `(max |diff| ${maxDiff.toExponential(2)} > atol ${atol} + rtol ${rtol})`);
  }
  return maxDiff;
}

function loadExpected() {
  if (!fs.existsSync(EXPECTED)) return null;
  const json = JSON.parse(fs.readFileSync(EXPECTED, 'utf8'));
  if (!Array.isArray(json.logits)) throw new Error(`${EXPECTED}: no "logits" array`);
  if (!Array.isArray(json.prompts) || json.prompts.length < 2) {
    throw new Error(`${EXPECTED}: "prompts" must list the batch's prompts (two or more)`);
  }
  return {
    logits: json.logits,
    prompts: json.prompts,
    shape: json.shape,
    atol: json.atol ?? ATOL,
    rtol: json.rtol ?? RTOL,
  };
}

async function openPage(flags, url, name, consoleLines) {
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: process.env.SMOKE_HEADFUL !== '1',
    args: flags,
  });
  const page = await browser.newPage({ viewport: { width: 1000, height: 640 } });
  page.on('console', (m) => consoleLines.push(`[${name} console.${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => consoleLines.push(`[${name} pageerror] ${e.message}`));
  page.on('crash', () => consoleLines.push(`[${name}] page crashed`));
  await page.goto(url);
  await page.waitForSelector('body[data-app]', { timeout: LOAD_TIMEOUT_MS });
  // The app loads the engine in its worker only; the smoke test drives the module directly.
  const err = await page.evaluate(async () => {
    try {
      const refusal = await import('./refusal-web.js');
      await refusal.default();
      window.refusal = refusal;
      return null;
    } catch (e) {
      return String((e && e.stack) || e);
    }
  });
  if (err) throw new Error(`${name}: the page failed to load the wasm module: ${err}`);
  const adapter = await page.evaluate(async () => {
    if (!('gpu' in navigator)) return null;
    const a = await navigator.gpu.requestAdapter();
    return a ? `${a.info.vendor}/${a.info.architecture}` : null;
  });
  return { browser, page, adapter };
}

/** Load the model's files in the page on WebGPU or the CPU and return the batch's logits. */
async function smokeForward(page, webgpu, prompts, what) {
  const t0 = Date.now();
  const ticker = setInterval(() => log(`  ... ${what} still running (${Math.round((Date.now() - t0) / 1000)} s)`), 30_000);
  try {
    const values = await withTimeout(
      page.evaluate(async ({ gpu, names, prompts }) => {
        const contents = await Promise.all(names.map(async (name) => {
          const res = await fetch(`model/${name}`);
          if (!res.ok) throw new Error(`model/${name}: ${res.status}`);
          return new Uint8Array(await res.arrayBuffer());
        }));
        const engine = await window.refusal.load_engine(gpu, names, contents, () => {});
        try {
          return Array.from(await engine.prompts_logits(prompts));
        } finally {
          engine.free();
        }
      }, { gpu: webgpu, names: modelFiles(), prompts }),
      CALL_TIMEOUT_MS, what);
    return { values, seconds: (Date.now() - t0) / 1000 };
  } finally {
    clearInterval(ticker);
  }
}

/** The model folder's files, as the app's loader is given them. */
function modelFiles() {
  return fs.readdirSync(MODEL_DIR).filter((name) => fs.statSync(path.join(MODEL_DIR, name)).isFile());
}

// ------------------------------------------------------------------ main
async function main() {
  if (!fs.existsSync(path.join(DIST, 'index.html'))) {
    console.error(`browser: ${DIST}/index.html not found; run scripts/build-web.sh first`);
    console.log('browser: 0 passed, 1 failed');
    return 1;
  }
  if (!MODEL_DIR || !fs.existsSync(path.join(MODEL_DIR, 'config.json'))) {
    console.error('browser: SMOKE_MODEL_DIR must be the tiny model\'s folder (scripts/test-browser.sh)');
    console.log('browser: 0 passed, 1 failed');
    return 1;
  }
  fs.mkdirSync(SHOTS, { recursive: true });

  let expected = null;
  const results = [];
  const consoleLines = [];
  let passed = 0;
  let failed = 0;
  const record = async (name, fn) => {
    try {
      const detail = await fn();
      passed++;
      log(`PASS ${name}${detail ? ': ' + detail : ''}`);
    } catch (e) {
      failed++;
      log(`FAIL ${name}: ${e.message}`);
    }
  };

  try {
    expected = loadExpected();
  } catch (e) {
    failed++;
    log(`FAIL expected logits: ${e.message}`);
  }
  if (!expected) {
    if (process.env.SMOKE_REQUIRE_EXPECTED === '1') {
      failed++;
      log(`FAIL expected logits: ${path.relative(ROOT, EXPECTED)} not found (SMOKE_REQUIRE_EXPECTED=1)`);
    } else {
      log(`native logits: ${path.relative(ROOT, EXPECTED)} not found, comparing WebGPU against CPU only`);
    }
  }
  const prompts = expected ? expected.prompts : FALLBACK_PROMPTS;
  const vsNative = (values, what) => {
    if (!expected) return '';
    const d = compare(values, expected.logits, `${what} vs native`, expected.atol, expected.rtol);
    return `, max |${what} - native| ${d.toExponential(2)}`;
  };

  const server = await serveStatic({ '/': DIST, '/model/': MODEL_DIR });
  const url = `http://127.0.0.1:${server.address().port}/`;
  log(`serving ${path.relative(ROOT, DIST) || DIST} at ${url}`);

  const browsers = [];
  let gpuPage = null;
  let gpuLogits = null;
  try {
    // 1. WebGPU
    await record('webgpu', async () => {
      const { browser, page, adapter } = await openPage(WEBGPU_FLAGS, url, 'webgpu', consoleLines);
      browsers.push(browser);
      gpuPage = page;
      if (!adapter) throw new Error('no WebGPU adapter, even with --enable-unsafe-webgpu');
      const { values, seconds } = await smokeForward(page, true, prompts, 'webgpu forward');
      checkLogits(values, 'webgpu');
      gpuLogits = values;
      return `adapter ${adapter}, ${values.length} logits in ${seconds.toFixed(1)} s${vsNative(values, 'webgpu')}`;
    });

    // 2. A browser with no WebGPU adapter at all: the CPU path must start on its own.
    let cpuPage = null;
    await record('cpu-only', async () => {
      const { browser, page, adapter } = await openPage(BASE_FLAGS, url, 'cpu-only', consoleLines);
      browsers.push(browser);
      cpuPage = page;
      if (adapter) log(`  note: this browser has a WebGPU adapter (${adapter}) even without the flag`);
      const { values, seconds } = await smokeForward(page, false, prompts, 'cpu-only forward');
      checkLogits(values, 'cpu-only');
      let detail = `${adapter ? 'adapter ' + adapter : 'no WebGPU adapter'}, ${values.length} logits in ${seconds.toFixed(1)} s`;
      if (gpuLogits) detail += `, max |cpu - webgpu| ${compare(values, gpuLogits, 'cpu vs webgpu').toExponential(2)}`;
      return detail + vsNative(values, 'cpu');
    });
    // 3. Same CPU-only browser: asking for WebGPU must fail with a readable error (no panic,
    //    no "unreachable"), and the CPU path must keep working afterwards.
    await record('no-adapter-error', async () => {
      if (!cpuPage) throw new Error('the CPU-only page did not open');
      const outcome = await smokeForward(cpuPage, true, prompts, 'no-adapter WebGPU load').then(
        () => ({ ok: true }),
        (e) => ({ ok: false, message: String(e.message || e) }),
      );
      if (outcome.ok) return 'this browser has a WebGPU adapter after all; nothing to check';
      if (!/WebGPU initialization failed/.test(outcome.message)) {
        throw new Error(`unexpected rejection: ${outcome.message}`);
      }
      const { values } = await smokeForward(cpuPage, false, prompts, 'cpu after failed WebGPU init');
      checkLogits(values, 'cpu after failed WebGPU init');
      return `rejected with "${outcome.message.slice(0, 60)}…", CPU still runs`;
    });
    if (cpuPage) {
      await cpuPage.screenshot({ path: path.join(SHOTS, 'smoke-cpu-only.png') }).catch(() => {});
    }

    // 4. CPU in the page that already runs WebGPU (switching device at run time).
    await record('cpu-after-webgpu', async () => {
      if (!gpuPage) throw new Error('the WebGPU page did not open');
      const { values, seconds } = await smokeForward(gpuPage, false, prompts, 'cpu-after-webgpu forward');
      checkLogits(values, 'cpu-after-webgpu');
      let detail = `${values.length} logits in ${seconds.toFixed(1)} s`;
      if (gpuLogits) detail += `, max |cpu - webgpu| ${compare(values, gpuLogits, 'cpu vs webgpu').toExponential(2)}`;
      return detail + vsNative(values, 'cpu');
    });

    const shotPage = gpuPage;
    if (shotPage) {
      await shotPage.screenshot({ path: path.join(SHOTS, 'smoke.png'), fullPage: true });
      log(`screenshot: ${path.relative(ROOT, path.join(SHOTS, 'smoke.png'))}`);
    }
  } catch (e) {
    failed++;
    log(`FAIL harness: ${e.stack || e.message}`);
  } finally {
    for (const b of browsers) await b.close().catch(() => {});
    server.close();
  }

  if (failed && consoleLines.length) {
    log('browser console (last 40 lines):');
    for (const line of consoleLines.slice(-40)) console.log('  ' + line);
  }
  console.log(`browser: ${passed} passed, ${failed} failed`);
  return failed ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (e) => {
    console.error(e);
    console.log('browser: 0 passed, 1 failed');
    process.exit(1);
  },
);
