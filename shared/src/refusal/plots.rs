//! SVG figures of a selection run: layer x position heatmaps of the three scores, and per-layer
//! curves. Plain SVG text, so the CLI writes it to files and the browser puts it in the page.
//!
//! Hand-written rather than through a plotting crate: the figures are a grid of rectangles and
//! a few polylines, and SVG text needs no font metrics, which plotting crates pull in.

use std::fmt::Write;

use super::select::Selection;

const CELL_W: f64 = 22.0;
const CELL_H: f64 = 26.0;
const LEFT: f64 = 70.0;
const TOP: f64 = 46.0;
const LEGEND_W: f64 = 140.0;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// How values map to colours.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ColorScale {
    /// Blue below zero, white at zero, red above, symmetric in the largest magnitude.
    Diverging,
    /// White at the minimum to dark red at the maximum.
    Sequential,
}

fn lerp(a: u8, b: u8, t: f64) -> u8 {
    (a as f64 + (b as f64 - a as f64) * t.clamp(0.0, 1.0)).round() as u8
}

fn color(value: f64, scale: ColorScale, lo: f64, hi: f64) -> String {
    if !value.is_finite() {
        return "#bbbbbb".into();
    }
    let (r, g, b) = match scale {
        ColorScale::Diverging => {
            let m = lo.abs().max(hi.abs()).max(1e-12);
            let t = value / m;
            if t >= 0.0 {
                (lerp(255, 178, t), lerp(255, 24, t), lerp(255, 43, t))
            } else {
                (lerp(255, 33, -t), lerp(255, 102, -t), lerp(255, 172, -t))
            }
        }
        ColorScale::Sequential => {
            let t = if hi > lo {
                (value - lo) / (hi - lo)
            } else {
                0.0
            };
            (lerp(255, 127, t), lerp(247, 0, t), lerp(236, 0, t))
        }
    };
    format!("#{r:02x}{g:02x}{b:02x}")
}

/// A layer x position grid of `values` (layer-major, `positions.len()` per layer). Cells in
/// `dropped` get a cross, the `selected` cell a thick outline, non-finite cells are grey.
#[allow(clippy::too_many_arguments)]
pub fn heatmap(
    title: &str,
    n_layers: usize,
    positions: &[isize],
    values: &[f64],
    dropped: &[bool],
    selected: Option<usize>,
    scale: ColorScale,
) -> String {
    let n_pos = positions.len();
    let finite = values.iter().copied().filter(|v| v.is_finite());
    let lo = finite.clone().fold(f64::INFINITY, f64::min);
    let hi = finite.fold(f64::NEG_INFINITY, f64::max);
    let width = LEFT + n_layers as f64 * CELL_W + LEGEND_W;
    let height = TOP + n_pos as f64 * CELL_H + 50.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = write!(
        s,
        r#"<text x="{LEFT}" y="20" font-size="14" font-weight="bold">{}</text>"#,
        escape(title)
    );
    for (p, pos) in positions.iter().enumerate() {
        let y = TOP + p as f64 * CELL_H + CELL_H / 2.0 + 4.0;
        let _ = write!(
            s,
            r#"<text x="{}" y="{y}" text-anchor="end">pos {pos}</text>"#,
            LEFT - 6.0
        );
    }
    for l in 0..n_layers {
        let x = LEFT + l as f64 * CELL_W;
        for (p, pos) in positions.iter().enumerate() {
            let i = l * n_pos + p;
            let v = values.get(i).copied().unwrap_or(f64::NAN);
            let y = TOP + p as f64 * CELL_H;
            let _ = write!(
                s,
                r#"<rect x="{x}" y="{y}" width="{CELL_W}" height="{CELL_H}" fill="{}" stroke="white"><title>layer {l}, position {}: {v:.4}</title></rect>"#,
                color(v, scale, lo, hi),
                pos
            );
            if dropped.get(i).copied().unwrap_or(false) {
                let _ = write!(
                    s,
                    r##"<path d="M{} {} L{} {} M{} {} L{} {}" stroke="#555" stroke-width="0.8"/>"##,
                    x + 5.0,
                    y + 5.0,
                    x + CELL_W - 5.0,
                    y + CELL_H - 5.0,
                    x + CELL_W - 5.0,
                    y + 5.0,
                    x + 5.0,
                    y + CELL_H - 5.0
                );
            }
            if selected == Some(i) {
                let _ = write!(
                    s,
                    r#"<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="black" stroke-width="3"/>"#,
                    x + 1.5,
                    y + 1.5,
                    CELL_W - 3.0,
                    CELL_H - 3.0
                );
            }
        }
        if l % 2 == 0 || n_layers <= 16 {
            let _ = write!(
                s,
                r#"<text x="{}" y="{}" text-anchor="middle">{l}</text>"#,
                x + CELL_W / 2.0,
                TOP + n_pos as f64 * CELL_H + 14.0
            );
        }
    }
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">layer</text>"#,
        LEFT + n_layers as f64 * CELL_W / 2.0,
        TOP + n_pos as f64 * CELL_H + 32.0
    );
    // Legend: the colour at the extremes (and zero for a diverging scale).
    let lx = LEFT + n_layers as f64 * CELL_W + 20.0;
    let mut stops = vec![lo, hi];
    if scale == ColorScale::Diverging && lo < 0.0 && hi > 0.0 {
        stops.insert(1, 0.0);
    }
    for (k, v) in stops.iter().enumerate() {
        let y = TOP + k as f64 * 20.0;
        let _ = write!(
            s,
            r##"<rect x="{lx}" y="{y}" width="14" height="14" fill="{}" stroke="#999"/><text x="{}" y="{}">{v:.3}</text>"##,
            color(*v, scale, lo, hi),
            lx + 20.0,
            y + 11.0
        );
    }
    let y = TOP + stops.len() as f64 * 20.0 + 10.0;
    let _ = write!(
        s,
        r#"<text x="{lx}" y="{y}">x = dropped</text><text x="{lx}" y="{}">box = selected</text>"#,
        y + 16.0
    );
    s.push_str("</svg>\n");
    s
}

const PALETTE: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
];

/// Curves over layers, one per named series (values indexed by layer; non-finite points are
/// skipped), with an optional vertical marker at `mark_layer`.
pub fn layer_curves(
    title: &str,
    y_label: &str,
    series: &[(String, Vec<f64>)],
    mark_layer: Option<usize>,
) -> String {
    let (w, h) = (560.0, 320.0);
    let (left, right, top, bottom) = (60.0, 130.0, 36.0, 40.0);
    let n = series
        .iter()
        .map(|(_, v)| v.len())
        .max()
        .unwrap_or(0)
        .max(2);
    let all = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .filter(|v| v.is_finite());
    let lo = all.clone().fold(0.0f64, f64::min);
    let hi = all.fold(f64::NEG_INFINITY, f64::max).max(lo + 1e-9);
    let x = |l: usize| left + (w - left - right) * l as f64 / (n - 1) as f64;
    let y = |v: f64| top + (h - top - bottom) * (1.0 - (v - lo) / (hi - lo));
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="white"/>"#
    );
    let _ = write!(
        s,
        r#"<text x="{left}" y="20" font-size="14" font-weight="bold">{}</text>"#,
        escape(title)
    );
    let _ = write!(
        s,
        r##"<path d="M{left} {top} L{left} {} L{} {}" fill="none" stroke="#333"/>"##,
        h - bottom,
        w - right,
        h - bottom
    );
    for k in 0..=4 {
        let v = lo + (hi - lo) * k as f64 / 4.0;
        let _ = write!(
            s,
            r##"<text x="{}" y="{}" text-anchor="end">{}</text><line x1="{left}" x2="{}" y1="{}" y2="{}" stroke="#eee"/>"##,
            left - 4.0,
            y(v) + 4.0,
            format_tick(v),
            w - right,
            y(v),
            y(v)
        );
    }
    for l in (0..n).step_by(n.div_ceil(12).max(1)) {
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{l}</text>"#,
            x(l),
            h - bottom + 14.0
        );
    }
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">layer</text><text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">{}</text>"#,
        (left + w - right) / 2.0,
        h - 8.0,
        (top + h - bottom) / 2.0,
        (top + h - bottom) / 2.0,
        escape(y_label)
    );
    if let Some(m) = mark_layer {
        let _ = write!(
            s,
            r##"<line x1="{}" x2="{}" y1="{top}" y2="{}" stroke="#999" stroke-dasharray="4 3"/>"##,
            x(m),
            x(m),
            h - bottom
        );
    }
    for (k, (name, values)) in series.iter().enumerate() {
        let colour = PALETTE[k % PALETTE.len()];
        let points: Vec<String> = values
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(|(l, &v)| format!("{:.1},{:.1}", x(l), y(v)))
            .collect();
        let _ = write!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="1.6"/>"#,
            points.join(" ")
        );
        let ly = top + 14.0 * k as f64;
        let _ = write!(
            s,
            r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{colour}" stroke-width="2"/><text x="{}" y="{}">{}</text>"#,
            w - right + 10.0,
            w - right + 28.0,
            w - right + 32.0,
            ly + 4.0,
            escape(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn format_tick(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Every figure of a selection run, by file name: heatmaps of bypass, induce and KL, and the
/// per-layer direction norms and harmful/harmless separations.
pub fn selection_figures(selection: &Selection) -> Vec<(&'static str, String)> {
    let n_layers = selection.n_layers;
    let positions = &selection.positions;
    let pick = |f: fn(&super::select::CandidateScore) -> f64| -> Vec<f64> {
        selection.candidates.iter().map(f).collect()
    };
    let dropped: Vec<bool> = selection
        .candidates
        .iter()
        .map(|c| !c.dropped.is_empty())
        .collect();
    let grid = |title: &str, values: Vec<f64>, scale| {
        heatmap(
            title,
            n_layers,
            positions,
            &values,
            &dropped,
            selection.selected,
            scale,
        )
    };
    let per_position = |f: fn(&super::select::CandidateScore) -> f64| -> Vec<(String, Vec<f64>)> {
        positions
            .iter()
            .enumerate()
            .map(|(p, pos)| {
                let values = (0..n_layers)
                    .map(|l| f(&selection.candidates[l * positions.len() + p]))
                    .collect();
                (format!("pos {pos}"), values)
            })
            .collect()
    };
    let mark = selection.selected().map(|c| c.layer);
    vec![
        (
            "bypass.svg",
            grid(
                "Bypass: harmful refusal score with the direction ablated (lower is better)",
                pick(|c| c.bypass),
                ColorScale::Diverging,
            ),
        ),
        (
            "induce.svg",
            grid(
                "Induce: harmless refusal score with the direction added",
                pick(|c| c.induce),
                ColorScale::Diverging,
            ),
        ),
        (
            "kl.svg",
            grid(
                "KL(base || ablated) on harmless prompts",
                pick(|c| c.kl),
                ColorScale::Sequential,
            ),
        ),
        (
            "norm.svg",
            layer_curves(
                "Norm of the candidate direction per layer",
                "|mu - nu|",
                &per_position(|c| c.norm),
                mark,
            ),
        ),
        (
            "separation.svg",
            layer_curves(
                "Harmful vs harmless projections on the direction (validation)",
                "mean gap / pooled std",
                &per_position(|c| c.separation),
                mark,
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heatmaps_mark_the_selection_and_grey_out_missing_values() {
        let svg = heatmap(
            "t <&>",
            2,
            &[-2, -1],
            &[f64::NAN, -1.0, 0.5, 2.0],
            &[true, false, false, false],
            Some(3),
            ColorScale::Diverging,
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("t &lt;&amp;&gt;"));
        assert!(svg.contains("#bbbbbb"), "NaN cell is grey");
        assert!(svg.contains("stroke-width=\"3\""), "selected cell outlined");
        // The largest magnitude gets the full red.
        assert!(svg.contains("#b2182b"));
        assert_eq!(svg.matches("<path").count(), 1, "one dropped cell");
    }

    #[test]
    fn curves_skip_non_finite_points() {
        let svg = layer_curves("t", "y", &[("a".into(), vec![1.0, f64::NAN, 3.0])], Some(1));
        let points = svg
            .split("points=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert_eq!(points.split(' ').count(), 2);
    }
}
