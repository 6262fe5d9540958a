// DOM helpers and the pieces every page shares: the job progress panel, share buttons,
// messages, tables of numbers.

import { fmt } from './plot.js';
import { canDelete, deleteResult, shareUrl } from './api.js';

/** An HTML element: h('div', {class: 'x', onclick: f}, 'text', child). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'value') el.value = v; // the property: a <textarea> has no value attribute
    else if (k in el && typeof v !== 'string') el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

/** A labelled form field around `input`. */
export function field(label, input, hint) {
  return h('label', { class: 'field' }, h('span', { class: 'field-label' }, label), input,
    hint ? h('span', { class: 'hint' }, hint) : null);
}

export function message(text, kind = 'error') {
  return h('div', { class: `message ${kind}`, role: kind === 'error' ? 'alert' : 'status' }, text);
}

/** Seconds as "42 s" or "2 min 5 s", rounded to the second before splitting (119.6 s is
 * "2 min 0 s", not "1 min 60 s"). */
export function duration(s) {
  if (!Number.isFinite(s)) return '';
  const total = Math.round(s);
  if (total < 60) return `${total} s`;
  return `${Math.floor(total / 60)} min ${total % 60} s`;
}

const STAGES = {
  extract: 'extracting activations',
  refusal_tokens: 'finding refusal tokens',
  baseline: 'baseline scores',
  select: 'scoring candidates',
  generate: 'generating',
  judge: 'judge model reading completions',
  cross_entropy: 'cross-entropy',
  compress: 'compressing',
  aird: 'recording AIRD activations',
};

/**
 * The progress panel of a running job: state line, a bar per stage with ETA, Cancel.
 * `panel.attach(job)` follows a Job (api.js); `panel.event(e)` must get each of its events.
 */
export class JobPanel {
  constructor() {
    this.state = h('span', { class: 'job-state' }, 'idle');
    this.bar = h('progress', { max: 1, value: 0 });
    this.detail = h('span', { class: 'job-detail' });
    this.cancelButton = h('button', { type: 'button', class: 'secondary', disabled: true, onclick: () => this.cancel() }, 'Cancel');
    this.el = h('div', { class: 'job-panel', hidden: true, 'aria-live': 'polite' },
      h('div', { class: 'job-line' }, this.state, this.detail, this.cancelButton), this.bar);
    this.job = null;
  }

  attach(job) {
    this.job = job;
    this.el.hidden = false;
    this.el.dataset.state = 'queued';
    this.state.textContent = 'submitted';
    this.detail.textContent = '';
    this.bar.removeAttribute('value');
    this.cancelButton.disabled = false;
    this.started = performance.now();
  }

  /** Progress the events do not carry (e.g. tokens of a generate job). */
  progress(done, total, text) {
    this.bar.max = Math.max(1, total);
    this.bar.value = Math.min(done, total);
    this.detail.textContent = text;
  }

  async cancel() {
    if (!this.job) return;
    this.cancelButton.disabled = true;
    this.state.textContent = 'cancelling…';
    try {
      await this.job.cancel();
    } catch (e) {
      this.detail.textContent = e.message;
    }
  }

  event(e) {
    this.el.dataset.state = e.type;
    switch (e.type) {
      case 'queued':
        this.state.textContent = 'queued';
        this.detail.textContent = e.ahead ? `${e.ahead} job${e.ahead > 1 ? 's' : ''} ahead` : '';
        break;
      case 'started':
        this.state.textContent = 'running';
        this.detail.textContent = 'loading the model…';
        break;
      case 'progress': {
        this.state.textContent = STAGES[e.stage] || e.stage;
        this.bar.max = Math.max(1, e.total);
        this.bar.value = e.done;
        const eta = Number.isFinite(e.eta_s) && e.done < e.total ? `, about ${duration(e.eta_s)} left` : '';
        this.detail.textContent = `${e.done} / ${e.total} · ${duration(e.elapsed_s)}${eta}`;
        break;
      }
      case 'token':
        this.state.textContent = 'generating';
        break;
      case 'succeeded':
        this.state.textContent = 'done';
        this.detail.textContent = `in ${duration((performance.now() - this.started) / 1000)}`;
        this.bar.max = 1;
        this.bar.value = 1;
        this.cancelButton.disabled = true;
        break;
      case 'failed':
        this.state.textContent = 'failed';
        this.detail.textContent = e.error;
        this.cancelButton.disabled = true;
        break;
      case 'cancelled':
        this.state.textContent = 'cancelled';
        this.detail.textContent = '';
        this.cancelButton.disabled = true;
        break;
      default:
    }
  }
}

/** Progress events of the in-browser engine as the job panel reads them (elapsed, ETA). */
export function progressClock(panel) {
  let stage = null;
  let since = 0;
  return (e) => {
    const now = performance.now() / 1000;
    if (e.stage !== stage) {
      stage = e.stage;
      since = now;
    }
    const elapsed = now - since;
    const eta = e.done > 0 ? (elapsed / e.done) * (e.total - e.done) : NaN;
    panel.event({ type: 'progress', stage: e.stage, done: e.done, total: e.total, elapsed_s: elapsed, eta_s: eta });
  };
}

/** Copy `text` to the clipboard (with a fallback for pages without clipboard access). */
export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const area = h('textarea', { value: text, readonly: true, style: 'position:fixed;opacity:0' });
    document.body.append(area);
    area.select();
    const ok = document.execCommand && document.execCommand('copy');
    area.remove();
    return !!ok;
  }
}

/** The header's badge: where the page's models run ("server mode", "browser mode · WebGPU"). */
export function setMode(kind, detail, title) {
  const el = document.getElementById('mode');
  if (!el) return;
  el.textContent = detail ? `${kind} mode · ${detail}` : `${kind} mode`;
  el.title = title;
  el.dataset.mode = kind;
}

/**
 * Share controls for a result computed in this browser: Share packs it into a fragment link
 * (fragment.js), shown and copied.
 */
export function fragmentShareBar(result, makeLink) {
  const note = h('span', { class: 'hint share-note' });
  const link = h('a', { class: 'share-link', hidden: true });
  const copy = h('button', {
    type: 'button', class: 'share', onclick: async () => {
      const url = await makeLink(result);
      link.href = url;
      link.dataset.share = url;
      link.textContent = `link (${bytes(url.length)})`;
      link.hidden = false;
      note.textContent = (await copyText(url)) ? 'link copied: the result travels inside it' : 'copy the link by hand';
    },
  }, 'Share');
  return h('div', { class: 'share-bar', dataset: { fragment: '1' } }, copy, link, note);
}

/** Share controls for a stored result: the link, a Copy button, open/export links. */
export function shareBar(resultId, { exportLink = true, extra = [] } = {}) {
  const url = shareUrl(resultId);
  const note = h('span', { class: 'hint share-note' });
  const copy = h('button', {
    type: 'button', class: 'share', onclick: async () => {
      note.textContent = (await copyText(url)) ? 'link copied' : 'copy the link by hand';
    },
  }, 'Share');
  const remove = canDelete(resultId) ? h('button', {
    type: 'button', class: 'delete-result', onclick: async (e) => {
      if (!window.confirm('Delete this result from the server? Its link will stop working.')) return;
      try {
        await deleteResult(resultId);
        e.target.closest('.share-bar').replaceChildren(h('span', { class: 'hint' }, 'Result deleted.'));
      } catch (err) {
        note.textContent = `not deleted: ${err.message}`;
      }
    },
  }, 'Delete') : null;
  return h('div', { class: 'share-bar', dataset: { resultId } },
    copy,
    h('a', { href: `/r/${resultId}`, class: 'share-link', 'data-share': url }, `/r/${resultId.slice(0, 8)}…`),
    exportLink ? h('a', { href: `/api/results/${resultId}/export`, download: '' }, 'Download zip') : null,
    ...extra, remove, note);
}

/** A table; columns: [{key, label, num}] (num: right-aligned, formatted). */
export function table(rows, columns, { className = '' } = {}) {
  return h('table', { class: `data ${className}`.trim() },
    h('thead', {}, h('tr', {}, columns.map((c) => h('th', { class: c.num ? 'num' : '' }, c.label)))),
    h('tbody', {}, rows.map((r) => h('tr', {}, columns.map((c) => {
      const v = typeof c.key === 'function' ? c.key(r) : r[c.key];
      return h('td', { class: c.num ? 'num' : '' }, v instanceof Node ? v : c.num ? fmt(v) : (v ?? '—'));
    })))));
}

/** Human-readable byte counts. */
export function bytes(n) {
  if (!Number.isFinite(n)) return '';
  const u = ['B', 'kB', 'MB', 'GB'];
  let i = 0;
  while (n >= 1000 && i < u.length - 1) {
    n /= 1000;
    i++;
  }
  return `${i ? n.toFixed(1) : n} ${u[i]}`;
}
