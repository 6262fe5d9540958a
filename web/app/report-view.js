// Any report as tables of its numbers: scalars as a key/value table, arrays of objects as
// tables with a column per field, nested objects as sections. Used for the result kinds
// that have no dedicated view yet, and under the figures of those that do.

import { h, table } from './ui.js';
import { fmt } from './plot.js';

const isScalar = (v) => v === null || ['number', 'string', 'boolean'].includes(typeof v);

function scalarText(v) {
  if (v === null) return '—';
  if (typeof v === 'number') return fmt(v, 4);
  if (typeof v === 'boolean') return v ? 'yes' : 'no';
  return v;
}

function cell(v) {
  if (isScalar(v)) return scalarText(v);
  if (Array.isArray(v) && v.every((x) => typeof x === 'number')) {
    return v.length > 12 ? `[${v.slice(0, 12).map((x) => fmt(x)).join(', ')}, … ${v.length} values]` : `[${v.map((x) => fmt(x)).join(', ')}]`;
  }
  if (Array.isArray(v) && v.every(isScalar)) return v.map(scalarText).join(', ');
  const s = JSON.stringify(v);
  return s.length > 120 ? `${s.slice(0, 117)}…` : s;
}

/** Rows {key, value} of an object's scalar (and short array) fields. */
function scalarRows(obj) {
  return Object.entries(obj)
    .filter(([, v]) => isScalar(v) || (Array.isArray(v) && v.every(isScalar)))
    .map(([k, v]) => ({ key: k, value: v }));
}

/** A section for `value` named `name`; depth limits nesting. */
export function reportSection(name, value, depth = 0) {
  const head = h(depth ? 'h4' : 'h3', { class: 'report-name' }, name);
  if (isScalar(value)) return h('div', {}, head, h('p', {}, scalarText(value)));
  if (Array.isArray(value)) {
    if (value.length && value.every((x) => x && typeof x === 'object' && !Array.isArray(x))) {
      const keys = [...new Set(value.flatMap((x) => Object.keys(x)))];
      const numeric = (k) => value.every((x) => x[k] === undefined || x[k] === null || typeof x[k] === 'number');
      const shown = value.slice(0, 500);
      return h('div', { class: 'report-block' }, head,
        h('div', { class: 'table-wrap' }, table(shown, keys.map((k) => ({
          key: (x) => (numeric(k) ? x[k] : cell(x[k])), label: k, num: numeric(k),
        })))),
        value.length > shown.length ? h('p', { class: 'hint' }, `first ${shown.length} of ${value.length} rows`) : null);
    }
    return h('div', { class: 'report-block' }, head, h('p', { class: 'mono' }, cell(value)));
  }
  const rows = scalarRows(value);
  const nested = Object.entries(value).filter(([, v]) => !(isScalar(v) || (Array.isArray(v) && v.every(isScalar))));
  return h('div', { class: 'report-block' }, head,
    rows.length ? h('div', { class: 'table-wrap' }, table(rows, [
      { key: 'key', label: 'field' },
      { key: (r) => (typeof r.value === 'number' ? r.value : cell(r.value)), label: 'value', num: true },
    ], { className: 'kv' })) : null,
    depth < 4 ? nested.map(([k, v]) => reportSection(`${name} › ${k}`, v, depth + 1))
      : h('pre', { class: 'mono' }, JSON.stringify(Object.fromEntries(nested), null, 1)));
}

/** Every report file of a result. */
export function reportTables(report) {
  return h('div', { class: 'report-tables' },
    Object.entries(report || {}).map(([file, value]) => reportSection(file, value)));
}
