// What the app's browser tests share: the paths and settings they run with, a real
// `refusal-lens serve` on a free port, and small page helpers.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

export const HERE = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(HERE, '..', '..');
export const TARGET = process.env.CARGO_TARGET_DIR || path.join(os.homedir(), '.cache', 'refusal-lens', 'target');
export const BIN = process.env.APP_BIN || path.join(TARGET, 'debug', 'refusal-lens');
export const MODELS = process.env.APP_MODELS_DIR;
export const MODEL = process.env.APP_MODEL || 'tiny-llama';
export const DIST = path.resolve(process.env.APP_DIST || path.join(ROOT, 'dist'));
export const SHOTS = path.join(ROOT, 'target', 'browser');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const JOB_TIMEOUT_MS = 180_000;

/** `refusal-lens serve` on a free port; resolves with {base, child, data}. */
export function startServer() {
  const data = fs.mkdtempSync(path.join(os.tmpdir(), 'refusal-lens-app-'));
  const child = spawn(BIN, ['serve', '--addr', '127.0.0.1:0', '--no-fetch', '--data-dir', data,
    '--models-dir', MODELS, '--web-dir', DIST], { stdio: ['ignore', 'pipe', fs.openSync(path.join(data, 'server.log'), 'w')] });
  return new Promise((resolve, reject) => {
    const lines = readline.createInterface({ input: child.stdout });
    const timer = setTimeout(() => reject(new Error(`the server did not start; see ${data}/server.log`)), 60_000);
    lines.once('line', (line) => {
      clearTimeout(timer);
      const base = line.replace(/^listening on /, '').trim();
      // keep draining stdout (commands print their summaries there)
      lines.on('line', () => {});
      resolve({ base, child, data });
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`the server exited with ${code}; see ${data}/server.log`));
    });
  });
}

export async function apiGet(base, p) {
  const res = await fetch(base + p);
  if (!res.ok) throw new Error(`GET ${p}: ${res.status} ${await res.text()}`);
  return res.json();
}

export function check(cond, what) {
  if (!cond) throw new Error(what);
}

/** Open `url` and wait until the app rendered its page. */
export async function open(page, url) {
  await page.goto('about:blank'); // a fresh document even when only the #hash would change
  await page.goto(url);
  await page.waitForSelector('body[data-app=ready], body[data-app=error]', { timeout: 30_000 });
  const state = await page.evaluate(() => document.body.dataset.app);
  if (state !== 'ready') throw new Error(`the page failed: ${await page.textContent('main')}`);
}

/** The job panel's final state (succeeded, failed, cancelled), waiting up to `timeout` ms. */
export async function jobEnd(page, scope = 'main', timeout = JOB_TIMEOUT_MS) {
  await page.waitForFunction((sel) => {
    const p = document.querySelector(`${sel} .job-panel`);
    return p && ['succeeded', 'failed', 'cancelled'].includes(p.dataset.state);
  }, scope, { timeout });
  return page.evaluate((sel) => {
    const p = document.querySelector(`${sel} .job-panel`);
    return { state: p.dataset.state, text: p.textContent };
  }, scope);
}

/** Loads a model through the page's "Run a model in this browser" panel. */
export async function loadInBrowser(page, { kind, value, backend }) {
  await page.selectOption('main form select[name=model]', 'browser:');
  await page.selectOption('.browser-model select[name=source-kind]', kind);
  if (kind === 'server') await page.selectOption('.browser-model select[name=server-model]', value);
  if (kind === 'url') {
    await page.fill('.browser-model input[name=model-url]', value);
    await page.dispatchEvent('.browser-model input[name=model-url]', 'change');
  }
  await page.selectOption('.browser-model select[name=backend]', backend);
  await page.waitForFunction(() => {
    const b = [...document.querySelectorAll('.browser-model button')].find((x) => x.textContent === 'Download and load');
    return b && !b.disabled;
  }, null, { timeout: 60_000 });
  const needs = await page.textContent('.browser-model .needs');
  await page.click('.browser-model button:text("Download and load")');
  await page.waitForSelector(`.browser-model .loaded-model[data-loaded=${backend}]`, { timeout: JOB_TIMEOUT_MS });
  return { needs, state: await page.textContent('.browser-model .job-detail') };
}

/** The panel's final state after a run. */
async function runEnd(page) {
  await page.waitForFunction(() => ['succeeded', 'failed', 'cancelled']
    .includes(document.querySelector('main .job-panel')?.dataset.state), null, { timeout: JOB_TIMEOUT_MS });
  return page.evaluate(() => {
    const p = document.querySelector('main .job-panel');
    return { state: p.dataset.state, text: p.textContent };
  });
}

// ------------------------------------------------------------------ a static host
const MIME = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8', '.wasm': 'application/wasm',
  '.json': 'application/json', '.css': 'text/css', '.png': 'image/png', '.svg': 'image/svg+xml',
  '.ico': 'image/x-icon', '.txt': 'text/plain; charset=utf-8',
};

/**
 * A static file host on 127.0.0.1 (a free port), as a user would put the app on one:
 * `mounts` maps URL prefixes ('/', '/models/') to folders. GET and HEAD, with single byte
 * ranges. Resolves with the http.Server; its URL is `http://127.0.0.1:${server.address().port}`.
 */
export function serveStatic(mounts) {
  const prefixes = Object.keys(mounts).sort((a, b) => b.length - a.length);
  const server = http.createServer((req, res) => {
    let rel;
    try {
      rel = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    } catch {
      res.writeHead(400).end();
      return;
    }
    const prefix = prefixes.find((p) => rel.startsWith(p));
    const root = path.resolve(mounts[prefix]);
    rel = rel.slice(prefix.length);
    if (rel === '' || rel.endsWith('/')) rel += 'index.html';
    const file = path.join(root, path.normalize(rel));
    if (!file.startsWith(root + path.sep)) {
      res.writeHead(403).end();
      return;
    }
    fs.readFile(file, (err, body) => {
      if (err) {
        res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
        return;
      }
      const headers = {
        'content-type': MIME[path.extname(file)] || 'application/octet-stream',
        'cache-control': 'no-store',
        'accept-ranges': 'bytes',
        // Cross-origin isolation, so SharedArrayBuffer (wasm threads) is available too.
        'cross-origin-opener-policy': 'same-origin',
        'cross-origin-embedder-policy': 'require-corp',
      };
      const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range || '');
      if (range) {
        const total = body.length;
        const start = Number(range[1]);
        const end = Math.min(range[2] ? Number(range[2]) : total - 1, total - 1);
        body = body.subarray(start, end + 1);
        headers['content-range'] = `bytes ${start}-${end}/${total}`;
        res.writeHead(206, { ...headers, 'content-length': body.length });
      } else {
        res.writeHead(200, { ...headers, 'content-length': body.length });
      }
      res.end(req.method === 'HEAD' ? undefined : body);
    });
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve(server));
  });
}

// ------------------------------------------------------------------ named checks
/**
 * The checks of one test file, named `label` in its output: `record(name, fn)` runs one,
 * counting it passed or failed (a failure screenshots `screenshot()`'s page as
 * `<label>-<name>-failure.png`); `listen(page)` keeps a page's console for the report.
 */
export class Checks {
  constructor(label) {
    this.label = label;
    this.passed = 0;
    this.failed = 0;
    this.consoleLines = [];
    this.screenshotPage = null;
  }

  log(...a) {
    console.log(`${this.label}:`, ...a);
  }

  listen(page) {
    page.on('console', (m) => this.consoleLines.push(`[console.${m.type()}] ${m.text()}`));
    page.on('pageerror', (e) => this.consoleLines.push(`[pageerror] ${e.message}`));
  }

  async shot(page, name) {
    const file = path.join(SHOTS, `${this.label}-${name}.png`);
    await page.screenshot({ path: file, fullPage: true });
    this.log(`  screenshot ${path.relative(ROOT, file)}`);
  }

  async record(name, fn) {
    try {
      const detail = await fn();
      this.passed++;
      this.log(`PASS ${name}${detail ? ': ' + detail : ''}`);
    } catch (e) {
      this.failed++;
      this.log(`FAIL ${name}: ${e.message}`);
      if (this.screenshotPage) await this.shot(this.screenshotPage, `${name}-failure`).catch(() => {});
    }
  }

  /** A failure outside any check (the harness itself). */
  broken(e) {
    this.failed++;
    this.log(`FAIL harness: ${e.stack || e.message}`);
  }

  /** The summary line (with the console and the server log after a failure); the exit status. */
  finish(serverData) {
    if (this.failed) {
      this.log('browser console (last 30 lines):');
      for (const line of this.consoleLines.slice(-30)) console.log('  ' + line);
      if (serverData) this.log(`server log: ${serverData}/server.log`);
    } else if (serverData) {
      fs.rmSync(serverData, { recursive: true, force: true });
    }
    console.log(`${this.label}: ${this.passed} passed, ${this.failed} failed`);
    return this.failed ? 1 : 0;
  }
}

/** Runs a test file's `main` (which returns its exit status) and exits with it. */
export function run(label, main) {
  main().then(
    (code) => process.exit(code),
    (e) => {
      console.error(e);
      console.log(`${label}: 0 passed, 1 failed`);
      process.exit(1);
    },
  );
}
