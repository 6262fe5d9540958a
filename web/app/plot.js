// SVG plots drawn from data: heatmap, line plot, grouped bars. Every plot is a <figure> with
// an <svg viewBox> that scales with its container; colours come from CSS variables (app.css)
// so the plots follow the light/dark theme.

const NS = 'http://www.w3.org/2000/svg';

/** An SVG element with attributes and children (strings become text nodes). */
export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v !== undefined && v !== null && v !== false) el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(typeof c === 'string' || typeof c === 'number' ? String(c) : c);
  }
  return el;
}

/** Number formatting for axes, legends and tables: 3 significant digits, no "-0". */
export function fmt(v, digits = 3) {
  if (v === null || v === undefined || Number.isNaN(v)) return '—';
  if (typeof v !== 'number') return String(v);
  if (Number.isInteger(v)) return String(v);
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 1e5 || a < 1e-3) return v.toExponential(digits - 1).replace('e+', 'e');
  const out = Number(v.toPrecision(digits)).toString();
  return out === '-0' ? '0' : out;
}

/** About `count` round tick values covering [lo, hi]. */
export function ticks(lo, hi, count = 5) {
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) return [];
  if (lo === hi) {
    const d = Math.abs(lo) || 1;
    lo -= d * 0.5;
    hi += d * 0.5;
  }
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((st) => st >= raw) || raw;
  const out = [];
  for (let t = Math.ceil(lo / step - 1e-9) * step; t <= hi + step * 1e-9; t += step) {
    out.push(Math.abs(t) < step * 1e-9 ? 0 : Number(t.toPrecision(12)));
  }
  return out;
}

// A sequential colour scale (dark blue -> teal -> green -> yellow), readable in both themes
// and in greyscale; interpolated in RGB between five stops.
const STOPS = [[32, 36, 96], [37, 99, 150], [34, 150, 140], [126, 196, 92], [246, 226, 90]];

/** Colour of `t` in [0, 1] on the scale. */
export function colour(t) {
  const x = Math.min(1, Math.max(0, t)) * (STOPS.length - 1);
  const i = Math.min(STOPS.length - 2, Math.floor(x));
  const f = x - i;
  const c = STOPS[i].map((a, k) => Math.round(a + (STOPS[i + 1][k] - a) * f));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

function figure(svg, caption, className = '') {
  const fig = document.createElement('figure');
  fig.className = `plot ${className}`.trim();
  fig.append(svg);
  if (caption) {
    const cap = document.createElement('figcaption');
    cap.textContent = caption;
    fig.append(cap);
  }
  return fig;
}

let uid = 0;

/**
 * A heatmap of `cells` on a grid of `cols` (x) by `rows` (y).
 * cells: [{col, row, value, dropped: [reasons], title}] (value NaN/null = not scored);
 * selected: {col, row} or null; better: 'low' | 'high' (said in the legend).
 */
export function heatmap({ title, cols, rows, cells, selected, xLabel, yLabel, unit, better, caption }) {
  // A fixed-width canvas (so text keeps its size whatever the grid), cells as large as fit.
  const W = 620;
  const m = { l: 58, r: 104, t: 30, b: 44 };
  const cw = Math.min(44, (W - m.l - m.r) / cols.length);
  const ch = Math.max(16, Math.min(30, 220 / rows.length));
  const H = m.t + ch * rows.length + m.b;
  const values = cells.map((c) => c.value).filter((v) => Number.isFinite(v));
  let lo = Math.min(...values);
  let hi = Math.max(...values);
  if (!values.length) [lo, hi] = [0, 1];
  const span = hi - lo || 1;
  const id = `hatch${++uid}`;
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': title, class: 'heatmap' },
    s('defs', {},
      s('pattern', { id, width: 6, height: 6, patternUnits: 'userSpaceOnUse', patternTransform: 'rotate(45)' },
        s('line', { x1: 0, y1: 0, x2: 0, y2: 6, class: 'hatch' }))),
    s('text', { x: m.l, y: 18, class: 'plot-title' }, title));
  const colX = (i) => m.l + i * cw;
  const rowY = (j) => m.t + j * ch;
  for (const c of cells) {
    const i = cols.indexOf(c.col);
    const j = rows.indexOf(c.row);
    if (i < 0 || j < 0) continue;
    const ok = Number.isFinite(c.value);
    // the selected cell shows its colour plainly (its outline says what it is)
    const isSelected = selected && selected.col === c.col && selected.row === c.row;
    const hatched = c.dropped?.length && !isSelected;
    const g = s('g', { class: 'cell' + (c.dropped?.length ? ' dropped' : '') },
      s('rect', {
        x: colX(i), y: rowY(j), width: cw, height: ch,
        fill: ok ? colour((c.value - lo) / span) : 'var(--nan)',
        'data-layer': c.col, 'data-position': c.row, 'data-value': ok ? c.value : 'nan',
      }),
      hatched ? s('rect', { x: colX(i), y: rowY(j), width: cw, height: ch, fill: `url(#${id})`, class: 'hatched' }) : null,
      s('title', {}, c.title || `${xLabel} ${c.col}, ${yLabel} ${c.row}: ${fmt(c.value)}`));
    svg.append(g);
  }
  // grid outline
  svg.append(s('rect', { x: m.l, y: m.t, width: cw * cols.length, height: ch * rows.length, class: 'frame' }));
  if (selected) {
    const i = cols.indexOf(selected.col);
    const j = rows.indexOf(selected.row);
    if (i >= 0 && j >= 0) {
      svg.append(s('rect', { x: colX(i) - 1.5, y: rowY(j) - 1.5, width: cw + 3, height: ch + 3, class: 'selected-cell' }));
    }
  }
  // x axis: every layer when they fit, else every 2nd / 5th
  const every = cw >= 16 ? 1 : cw >= 8 ? 2 : 5;
  cols.forEach((c, i) => {
    if (i % every) return;
    svg.append(s('text', { x: colX(i) + cw / 2, y: m.t + ch * rows.length + 14, class: 'tick', 'text-anchor': 'middle' }, c));
  });
  rows.forEach((r, j) => {
    svg.append(s('text', { x: m.l - 6, y: rowY(j) + ch / 2 + 4, class: 'tick', 'text-anchor': 'end' }, r));
  });
  svg.append(s('text', { x: m.l + (cw * cols.length) / 2, y: H - 8, class: 'axis-label', 'text-anchor': 'middle' }, xLabel));
  svg.append(s('text', {
    x: 14, y: m.t + (ch * rows.length) / 2, class: 'axis-label', 'text-anchor': 'middle',
    transform: `rotate(-90 14 ${m.t + (ch * rows.length) / 2})`,
  }, yLabel));
  // legend: vertical colour bar with ticks
  const lx = m.l + cw * cols.length + 18;
  const lh = Math.max(60, ch * rows.length);
  const gid = `grad${uid}`;
  const grad = s('linearGradient', { id: gid, x1: 0, y1: 1, x2: 0, y2: 0 });
  for (let k = 0; k <= 10; k++) grad.append(s('stop', { offset: k / 10, 'stop-color': colour(k / 10) }));
  svg.querySelector('defs').append(grad);
  svg.append(s('rect', { x: lx, y: m.t, width: 12, height: lh, fill: `url(#${gid})`, class: 'legend-bar' }));
  // the scale's ends (the data's min and max), then round ticks that do not crowd them
  const marks = values.length ? [[lo, fmt(lo)], [hi, fmt(hi)]] : [];
  for (const t of ticks(lo, hi, 4)) {
    if (t < lo - 1e-12 || t > hi + 1e-12) continue;
    if (marks.some(([v]) => Math.abs(v - t) / span * lh < 12)) continue;
    marks.push([t, fmt(t)]);
  }
  for (const [t, label] of marks) {
    const y = m.t + lh - ((t - lo) / span) * lh;
    svg.append(s('line', { x1: lx + 12, x2: lx + 16, y1: y, y2: y, class: 'axis' }));
    svg.append(s('text', { x: lx + 19, y: y + 4, class: 'tick' }, label));
  }
  svg.append(s('text', { x: lx, y: m.t + lh + 22, class: 'tick muted' }, unit || ''));
  if (better) svg.append(s('text', { x: lx, y: m.t + lh + 35, class: 'tick muted' }, `${better} is better`));
  return figure(svg, caption, 'heatmap-fig');
}

/** A line plot; series: [{name, points: [[x, y], ...], dashed}]. */
export function linePlot({ title, series, xLabel, yLabel, caption, integerX = true, markX, xDomain, yDomain }) {
  const W = 640;
  const H = 280;
  const m = { l: 58, r: 16, t: 30, b: 62 };
  const all = series.flatMap((se) => se.points).filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
  const xs = all.map((p) => p[0]);
  const ys = all.map((p) => p[1]);
  const [x0, x1] = xDomain || (xs.length ? [Math.min(...xs), Math.max(...xs)] : [0, 1]);
  let [y0, y1] = ys.length ? [Math.min(...ys), Math.max(...ys)] : [0, 1];
  if (yDomain) [y0, y1] = [Math.min(yDomain[0], y0), Math.max(yDomain[1], y1)];
  else if (y0 > 0 && y0 < (y1 - y0) * 0.5) y0 = 0; // start at 0 when that costs little
  const yt = ticks(y0, y1, 5);
  y0 = Math.min(y0, yt[0] ?? y0);
  y1 = Math.max(y1, yt[yt.length - 1] ?? y1);
  const px = (x) => m.l + ((x - x0) / (x1 - x0 || 1)) * (W - m.l - m.r);
  const py = (y) => H - m.b - ((y - y0) / (y1 - y0 || 1)) * (H - m.t - m.b);
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': title, class: 'lineplot' },
    s('text', { x: m.l, y: 18, class: 'plot-title' }, title));
  for (const t of yt) {
    svg.append(s('line', { x1: m.l, x2: W - m.r, y1: py(t), y2: py(t), class: 'grid' }));
    svg.append(s('text', { x: m.l - 6, y: py(t) + 4, class: 'tick', 'text-anchor': 'end' }, fmt(t)));
  }
  let xt = ticks(x0, x1, 10);
  if (integerX) xt = xt.filter((t) => Number.isInteger(t));
  for (const t of xt) {
    svg.append(s('line', { x1: px(t), x2: px(t), y1: H - m.b, y2: H - m.b + 4, class: 'axis' }));
    svg.append(s('text', { x: px(t), y: H - m.b + 16, class: 'tick', 'text-anchor': 'middle' }, fmt(t)));
  }
  if (markX !== undefined && markX !== null) {
    svg.append(s('line', { x1: px(markX), x2: px(markX), y1: m.t, y2: H - m.b, class: 'mark' }));
  }
  svg.append(s('line', { x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b, class: 'axis' }));
  svg.append(s('line', { x1: m.l, x2: m.l, y1: m.t, y2: H - m.b, class: 'axis' }));
  svg.append(s('text', { x: (m.l + W - m.r) / 2, y: H - m.b + 34, class: 'axis-label', 'text-anchor': 'middle' }, xLabel));
  svg.append(s('text', {
    x: 14, y: (m.t + H - m.b) / 2, class: 'axis-label', 'text-anchor': 'middle',
    transform: `rotate(-90 14 ${(m.t + H - m.b) / 2})`,
  }, yLabel));
  series.forEach((se, k) => {
    const pts = se.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
    if (!pts.length) return;
    const d = pts.map(([x, y], i) => `${i ? 'L' : 'M'}${px(x).toFixed(1)},${py(y).toFixed(1)}`).join('');
    svg.append(s('path', { d, class: `series s${k % 6}${se.dashed ? ' dashed' : ''}` }));
    for (const [x, y] of pts) {
      svg.append(s('circle', { cx: px(x), cy: py(y), r: 2.5, class: `dot s${k % 6}` },
        s('title', {}, `${se.name}: ${xLabel} ${fmt(x)}, ${fmt(y)}`)));
    }
  });
  // legend under the x axis label, wrapped into rows
  let lx = m.l;
  let ly = H - m.b + 52;
  for (const [k, se] of series.entries()) {
    const w = 34 + se.name.length * 6;
    if (lx + w > W - m.r && lx > m.l) {
      lx = m.l;
      ly += 16;
    }
    svg.append(s('line', { x1: lx, x2: lx + 16, y1: ly - 4, y2: ly - 4, class: `series s${k % 6}${se.dashed ? ' dashed' : ''}` }));
    svg.append(s('text', { x: lx + 20, y: ly, class: 'tick' }, se.name));
    lx += w;
  }
  svg.setAttribute('viewBox', `0 0 ${W} ${Math.max(H, ly + 8)}`);
  return figure(svg, caption);
}

/**
 * Grouped bars; groups: [{label, bars: [{name, value, interval}]}], one colour per bar name;
 * a bar's `interval` ({low, high}, its 95% interval) is drawn as an error bar.
 * `max` fixes the top of the axis (e.g. 1 for rates).
 */
export function barChart({ title, groups, yLabel, caption, max, percent }) {
  const names = [...new Set(groups.flatMap((g) => g.bars.map((b) => b.name)))];
  const W = 640;
  const gwGuess = (W - 74) / Math.max(1, groups.length);
  const labelLines = groups.map((g) => wrap(g.label, Math.max(6, Math.floor(gwGuess / 6))));
  const nLines = Math.max(1, ...labelLines.map((l) => l.length));
  const m = { l: 58, r: 16, t: 42, b: 30 + nLines * 12 + (names.length > 1 ? 22 : 0) };
  const H = 220 + m.t + m.b;
  const vals = groups.flatMap((g) => g.bars.flatMap((b) => [b.value, b.interval?.high])).filter(Number.isFinite);
  const y0 = Math.min(0, ...vals);
  let y1 = max ?? Math.max(0, ...vals);
  if (y1 === y0) y1 = y0 + 1;
  const yt = ticks(y0, y1, 5);
  const top = Math.max(y1, yt[yt.length - 1]);
  const py = (y) => H - m.b - ((y - y0) / (top - y0)) * (H - m.t - m.b);
  const gw = (W - m.l - m.r) / Math.max(1, groups.length);
  const bw = Math.min(40, (gw * 0.8) / Math.max(1, names.length));
  const label = (v) => (percent ? `${fmt(v * 100)}%` : fmt(v));
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': title, class: 'barchart' },
    s('text', { x: m.l, y: 18, class: 'plot-title' }, title));
  for (const t of yt) {
    svg.append(s('line', { x1: m.l, x2: W - m.r, y1: py(t), y2: py(t), class: 'grid' }));
    svg.append(s('text', { x: m.l - 6, y: py(t) + 4, class: 'tick', 'text-anchor': 'end' }, label(t)));
  }
  groups.forEach((g, i) => {
    const gx = m.l + i * gw + (gw - bw * names.length) / 2;
    g.bars.forEach((b) => {
      const k = names.indexOf(b.name);
      const x = gx + k * bw;
      if (!Number.isFinite(b.value)) {
        svg.append(s('text', { x: x + bw / 2, y: py(0) - 4, class: 'tick muted', 'text-anchor': 'middle' }, 'n/a'));
        return;
      }
      const y = py(Math.max(0, b.value));
      const h = Math.abs(py(b.value) - py(0));
      const iv = b.interval && Number.isFinite(b.interval.low) && Number.isFinite(b.interval.high) ? b.interval : null;
      const range = iv ? ` (95% interval ${label(iv.low)} to ${label(iv.high)})` : '';
      svg.append(s('rect', { x: x + 1, y, width: bw - 2, height: Math.max(0.5, h), class: `bar s${k % 6}`, 'data-value': b.value },
        s('title', {}, `${g.label}, ${b.name}: ${label(b.value)}${range}`)));
      let labelY = y;
      if (iv) {
        const [cx, cap] = [x + bw / 2, Math.min(5, bw / 4)];
        const [yl, yh] = [py(iv.low), py(iv.high)];
        svg.append(s('path', {
          d: `M${cx},${yl}V${yh}M${cx - cap},${yl}H${cx + cap}M${cx - cap},${yh}H${cx + cap}`,
          class: 'error-bar', 'data-low': iv.low, 'data-high': iv.high,
        }));
        labelY = Math.min(y, yh);
      }
      svg.append(s('text', { x: x + bw / 2, y: labelY - 4, class: 'tick bar-value', 'text-anchor': 'middle' }, label(b.value)));
    });
    svg.append(s('text', { x: m.l + i * gw + gw / 2, y: H - m.b + 16, class: 'tick', 'text-anchor': 'middle' },
      labelLines[i].map((line, k) => s('tspan', { x: m.l + i * gw + gw / 2, dy: k ? 12 : 0 }, line))));
  });
  svg.append(s('line', { x1: m.l, x2: W - m.r, y1: py(0), y2: py(0), class: 'axis' }));
  svg.append(s('line', { x1: m.l, x2: m.l, y1: m.t, y2: H - m.b, class: 'axis' }));
  svg.append(s('text', {
    x: 14, y: (m.t + H - m.b) / 2, class: 'axis-label', 'text-anchor': 'middle',
    transform: `rotate(-90 14 ${(m.t + H - m.b) / 2})`,
  }, yLabel));
  let lx = m.l;
  for (const [k, n] of (names.length > 1 ? names : []).entries()) {
    svg.append(s('rect', { x: lx, y: H - 18, width: 12, height: 12, class: `bar s${k % 6}` }));
    svg.append(s('text', { x: lx + 16, y: H - 8, class: 'tick' }, n));
    lx += 30 + n.length * 6.5;
  }
  return figure(svg, caption);
}

/** Words of `text` in lines of at most about `width` characters. */
function wrap(text, width) {
  const lines = [];
  for (const word of String(text).split(/\s+/)) {
    const last = lines[lines.length - 1];
    if (last !== undefined && (last + ' ' + word).length <= width) lines[lines.length - 1] = `${last} ${word}`;
    else lines.push(word);
  }
  return lines;
}
