//! The progress chart: x = experiment number, y = mean rank (lower is better). Kept runs are green
//! and labelled with their description, the baseline blue, discarded runs grey; crashed (red ×) and
//! cancelled (orange ▽) runs have no metric and sit in a band above the plot. A green step line is
//! the best kept result so far (it restarts where the fingerprint changes: scores across
//! fingerprints are not comparable); a dashed purple line marks each fingerprint change.
//!
//! The SVG is written by hand (a few dozen elements); the PNG is the same SVG rasterised by resvg
//! with a bundled font, so it shows the same text on a machine with no fonts installed.

use std::fmt::Write as _;

use anyhow::{Context, Result};

use super::html::escape;
use super::{Kind, Report, short_label};

/// DejaVu Sans reduced to Latin-1 and common punctuation (see assets/fonts/LICENSE-DejaVu.txt).
const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans-subset.ttf");
const FONT_FAMILY: &str = "DejaVu Sans, Verdana, Arial, sans-serif";

pub const WIDTH: f64 = 1100.0;
pub const HEIGHT: f64 = 640.0;
/// The PNG is drawn at this multiple of the SVG's size.
pub const PNG_SCALE: f32 = 2.0;

const PLOT_LEFT: f64 = 80.0;
const PLOT_RIGHT: f64 = WIDTH - 30.0;
const PLOT_TOP: f64 = 104.0;
const PLOT_BOTTOM: f64 = HEIGHT - 130.0;
/// The band above the plot where runs without a metric are drawn.
const BAND_TOP: f64 = 66.0;
const BAND_Y: f64 = 80.0;
const BAND_BOTTOM: f64 = 94.0;

const GREEN: &str = "#1a9641";
const BLUE: &str = "#2b6cb0";
const GREY: &str = "#9e9e9e";
const RED: &str = "#d62728";
const ORANGE: &str = "#f08c00";
const PURPLE: &str = "#7b3fb5";

/// Characters of a kept run's description shown next to its point.
const LABEL_CHARS: usize = 40;

struct Scale {
    n: usize,
    lo: f64,
    hi: f64,
}

impl Scale {
    fn x(&self, number: usize) -> f64 {
        PLOT_LEFT + (number as f64 - 0.5) / self.n.max(1) as f64 * (PLOT_RIGHT - PLOT_LEFT)
    }
    fn y(&self, v: f64) -> f64 {
        PLOT_BOTTOM - (v - self.lo) / (self.hi - self.lo) * (PLOT_BOTTOM - PLOT_TOP)
    }
}

/// A step of 1, 2 or 5 × 10^k giving about `target` intervals over `range`.
fn nice_step(range: f64, target: f64) -> f64 {
    let raw = (range / target).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    mag * if norm < 1.5 {
        1.0
    } else if norm < 3.0 {
        2.0
    } else if norm < 7.0 {
        5.0
    } else {
        10.0
    }
}

/// The chart as a standalone SVG document (no XML declaration, so it also inlines into HTML).
pub fn svg(report: &Report) -> String {
    let entries = &report.entries;
    let values: Vec<f64> = entries.iter().filter_map(|e| e.run.mean_rank()).filter(|v| v.is_finite()).collect();
    let (mut lo, mut hi) = values.iter().fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    if values.is_empty() {
        (lo, hi) = (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(hi.abs() * 0.02).max(0.5);
    let (lo, hi) = ((lo - pad).max(0.0), hi + pad);
    let s = Scale { n: entries.len(), lo, hi };

    let mut o = String::with_capacity(16 * 1024);
    let _ = write!(
        o,
        r##"<svg xmlns="http://www.w3.org/2000/svg" class="progress-chart" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="{FONT_FAMILY}" font-size="12" role="img" aria-labelledby="chart-title">
<title id="chart-title">autoresearch progress: mean rank per experiment (lower is better)</title>
<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>
<text x="{PLOT_LEFT}" y="28" font-size="18" font-weight="bold" fill="#222">autoresearch progress{}</text>
<text x="{PLOT_LEFT}" y="50" font-size="12" fill="#555">{}</text>
"##,
        report.branch.as_deref().map(|b| format!(" · {}", escape(&short_label(b, 60)))).unwrap_or_default(),
        escape(&report.headline()),
    );

    // The no-metric band and the plot frame.
    let _ = write!(
        o,
        r##"<rect class="no-metric-band" x="{PLOT_LEFT}" y="{BAND_TOP}" width="{w}" height="{bh}" fill="#fbeeee"/>
<text x="{lx}" y="{ly}" text-anchor="end" font-size="10" fill="#a33">no metric</text>
<rect class="plot-area" x="{PLOT_LEFT}" y="{PLOT_TOP}" width="{w}" height="{ph}" fill="#fcfcfc" stroke="#bbb"/>
"##,
        w = PLOT_RIGHT - PLOT_LEFT,
        bh = BAND_BOTTOM - BAND_TOP,
        ph = PLOT_BOTTOM - PLOT_TOP,
        lx = PLOT_LEFT - 6.0,
        ly = BAND_Y + 4.0,
    );

    // Y grid and ticks.
    let step = nice_step(hi - lo, 6.0);
    let mut v = (lo / step).ceil() * step;
    o.push_str(r##"<g class="y-axis" font-size="11" fill="#444">"##);
    while v <= hi + 1e-9 {
        let y = s.y(v);
        let label = if step >= 1.0 { format!("{v:.0}") } else { format!("{v:.*}", (-step.log10()).ceil() as usize) };
        let _ = write!(
            o,
            r##"<line x1="{PLOT_LEFT}" y1="{y:.1}" x2="{PLOT_RIGHT}" y2="{y:.1}" stroke="#e4e4e4"/><text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"##,
            PLOT_LEFT - 6.0,
            y + 4.0
        );
        v += step;
    }
    let _ = write!(
        o,
        r##"</g>
<text class="y-label" transform="translate(24 {:.1}) rotate(-90)" text-anchor="middle" font-size="13" fill="#222">mean rank (lower is better)</text>
"##,
        (PLOT_TOP + PLOT_BOTTOM) / 2.0
    );

    // X ticks.
    let xstep = nice_step(entries.len().max(1) as f64, 12.0).max(1.0).round() as usize;
    o.push_str(r##"<g class="x-axis" font-size="11" fill="#444" text-anchor="middle">"##);
    for n in (1..=entries.len()).filter(|n| *n == 1 || n % xstep == 0) {
        let x = s.x(n);
        let _ = write!(
            o,
            r##"<line x1="{x:.1}" y1="{PLOT_BOTTOM}" x2="{x:.1}" y2="{:.1}" stroke="#888"/><text x="{x:.1}" y="{:.1}">{n}</text>"##,
            PLOT_BOTTOM + 5.0,
            PLOT_BOTTOM + 18.0
        );
    }
    let _ = write!(
        o,
        r##"</g>
<text class="x-label" x="{:.1}" y="{:.1}" text-anchor="middle" font-size="13" fill="#222">experiment #</text>
"##,
        (PLOT_LEFT + PLOT_RIGHT) / 2.0,
        PLOT_BOTTOM + 40.0
    );
    if entries.is_empty() {
        let _ = write!(
            o,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="14" fill="#777">no runs in the ledger yet</text>"##,
            (PLOT_LEFT + PLOT_RIGHT) / 2.0,
            (PLOT_TOP + PLOT_BOTTOM) / 2.0
        );
    }

    // Fingerprint changes.
    for w in entries.windows(2) {
        if w[0].run.fingerprint != w[1].run.fingerprint {
            let x = (s.x(w[0].run.number) + s.x(w[1].run.number)) / 2.0;
            let _ = writeln!(
                o,
                r#"<g class="fingerprint-change" data-fingerprint="{fp}"><line x1="{x:.1}" y1="{BAND_TOP}" x2="{x:.1}" y2="{PLOT_BOTTOM}" stroke="{PURPLE}" stroke-width="1.5" stroke-dasharray="6 4"/><text x="{:.1}" y="{:.1}" font-size="11" fill="{PURPLE}">fingerprint → {fp}</text></g>"#,
                x + 4.0,
                PLOT_TOP + 14.0,
                fp = escape(&w[1].fingerprint),
            );
        }
    }

    // Best kept so far, one step line per fingerprint segment.
    let mut segments: Vec<Vec<&super::Entry>> = vec![];
    for e in entries {
        match segments.last_mut() {
            Some(seg) if seg[0].run.fingerprint == e.run.fingerprint => seg.push(e),
            _ => segments.push(vec![e]),
        }
    }
    for seg in &segments {
        let mut d = String::new();
        let mut best = f64::MAX;
        for e in seg {
            let Some(v) = e.run.mean_rank().filter(|_| e.sets_the_bar) else { continue };
            if d.is_empty() {
                let _ = write!(d, "M{:.1} {:.1}", s.x(e.run.number), s.y(v));
                best = v;
            } else if v < best {
                let _ = write!(d, " H{:.1} V{:.1}", s.x(e.run.number), s.y(v));
                best = v;
            }
        }
        if !d.is_empty() {
            let _ =
                write!(d, " H{:.1}", s.x(seg.last().map(|e| e.run.number).unwrap_or(1)).max(s.x(seg[0].run.number)));
            let _ = writeln!(
                o,
                r#"<path class="best-so-far" d="{d}" fill="none" stroke="{GREEN}" stroke-width="2" stroke-opacity="0.7"/>"#
            );
        }
    }

    // The runs: discarded first, so kept points draw on top; their labels after all points.
    let mut labels = String::new();
    let order = [Kind::Discarded, Kind::Cancelled, Kind::Crashed, Kind::Baseline, Kind::Kept];
    for kind in order {
        for e in entries.iter().filter(|e| e.kind == kind) {
            let x = s.x(e.run.number);
            let title = escape(&format!(
                "#{} {} · {} · {}{}",
                e.run.number,
                e.run.id,
                e.status(),
                e.run.mean_rank().map(|m| format!("mean rank {m:.2} · ")).unwrap_or_default(),
                short_label(&e.run.description, 200)
            ));
            let _ = write!(
                o,
                r#"<g class="run {}" data-run="{}" data-number="{}"><title>{title}</title>"#,
                kind.as_str(),
                escape(&e.run.id),
                e.run.number
            );
            let y = e.run.mean_rank().filter(|v| v.is_finite()).map(|v| s.y(v));
            match (kind, y) {
                (Kind::Kept, Some(y)) => {
                    let _ = write!(
                        o,
                        r##"<circle cx="{x:.1}" cy="{y:.1}" r="6" fill="{GREEN}" stroke="#0d5e26" stroke-width="1.2"/>"##
                    );
                    label(&mut labels, x, y, &short_label(&e.run.description, LABEL_CHARS), "#0d5e26");
                }
                (Kind::Baseline, Some(y)) => {
                    let _ = write!(
                        o,
                        r##"<rect x="{:.1}" y="{:.1}" width="11" height="11" fill="{BLUE}" stroke="#1a4a80"/>"##,
                        x - 5.5,
                        y - 5.5
                    );
                    label(&mut labels, x, y, "baseline", "#1a4a80");
                }
                (Kind::Discarded, Some(y)) => {
                    let _ = write!(o, r##"<circle cx="{x:.1}" cy="{y:.1}" r="4.5" fill="#cfcfcf" stroke="{GREY}"/>"##);
                }
                (Kind::Cancelled, _) => {
                    let _ = write!(
                        o,
                        r#"<path d="M{:.1} {:.1} L{:.1} {:.1} L{x:.1} {:.1} Z" fill="none" stroke="{ORANGE}" stroke-width="2"/>"#,
                        x - 6.0,
                        BAND_Y - 5.0,
                        x + 6.0,
                        BAND_Y - 5.0,
                        BAND_Y + 6.0
                    );
                }
                // Crashed, or a scored run whose metric is not finite.
                _ => {
                    let _ = write!(
                        o,
                        r#"<path d="M{:.1} {:.1} L{:.1} {:.1} M{:.1} {:.1} L{:.1} {:.1}" stroke="{RED}" stroke-width="2.5" stroke-linecap="round"/>"#,
                        x - 5.5,
                        BAND_Y - 5.5,
                        x + 5.5,
                        BAND_Y + 5.5,
                        x - 5.5,
                        BAND_Y + 5.5,
                        x + 5.5,
                        BAND_Y - 5.5
                    );
                }
            }
            o.push_str("</g>\n");
        }
    }

    let _ = writeln!(o, r#"<g class="labels">{labels}</g>"#);
    legend(&mut o);
    o.push_str("</svg>\n");
    o
}

/// A point's label, slanted up and to the right; up and to the left where it would leave the chart.
fn label(o: &mut String, x: f64, y: f64, text: &str, colour: &str) {
    // DejaVu Sans at 11 px averages about 6.3 px a character; cos 30° of that is horizontal.
    let reach = text.chars().count() as f64 * 6.3 * 0.87 + 10.0;
    let (dx, angle, anchor) = if x + reach > WIDTH - 8.0 { (-7.0, 30, "end") } else { (7.0, -30, "start") };
    let _ = write!(
        o,
        r##"<text class="label" transform="translate({:.1} {:.1}) rotate({angle})" text-anchor="{anchor}" font-size="11" fill="{colour}" stroke="#ffffff" stroke-width="3" stroke-opacity="0.85" paint-order="stroke">{}</text>"##,
        x + dx,
        y - 7.0,
        escape(text)
    );
}

fn legend(o: &mut String) {
    let y = HEIGHT - 38.0;
    let mut x = PLOT_LEFT;
    o.push_str(r##"<g class="legend" font-size="12" fill="#222">"##);
    let items: [(&str, String); 7] = [
        ("kept", format!(r##"<circle cx="6" cy="0" r="6" fill="{GREEN}" stroke="#0d5e26"/>"##)),
        ("baseline", format!(r##"<rect x="0.5" y="-5.5" width="11" height="11" fill="{BLUE}" stroke="#1a4a80"/>"##)),
        ("discarded", format!(r##"<circle cx="6" cy="0" r="4.5" fill="#cfcfcf" stroke="{GREY}"/>"##)),
        (
            "crashed (no metric)",
            format!(
                r#"<path d="M0.5 -5.5 L11.5 5.5 M0.5 5.5 L11.5 -5.5" stroke="{RED}" stroke-width="2.5" stroke-linecap="round"/>"#
            ),
        ),
        (
            "cancelled (no metric)",
            format!(r#"<path d="M0 -5 L12 -5 L6 6 Z" fill="none" stroke="{ORANGE}" stroke-width="2"/>"#),
        ),
        ("best kept so far", format!(r#"<path d="M-4 4 H6 V-4 H16" fill="none" stroke="{GREEN}" stroke-width="2"/>"#)),
        (
            "fingerprint change",
            format!(
                r#"<line x1="6" y1="-8" x2="6" y2="8" stroke="{PURPLE}" stroke-width="1.5" stroke-dasharray="4 3"/>"#
            ),
        ),
    ];
    for (label, mark) in items {
        let _ = write!(
            o,
            r#"<g class="legend-item" transform="translate({x:.1} {y:.1})">{mark}<text x="22" y="4">{label}</text></g>"#
        );
        x += 34.0 + label.chars().count() as f64 * 7.2;
    }
    o.push_str("</g>\n");
}

/// The SVG rasterised (resvg, at [`PNG_SCALE`]) with the bundled font, then the system's fonts
/// for any character it lacks.
pub fn png(svg: &str) -> Result<Vec<u8>> {
    let mut opt = resvg::usvg::Options { font_family: "DejaVu Sans".into(), ..Default::default() };
    let db = opt.fontdb_mut();
    db.load_font_data(FONT.to_vec());
    db.load_system_fonts();
    db.set_sans_serif_family("DejaVu Sans");
    let tree = resvg::usvg::Tree::from_str(svg, &opt).context("parse the chart SVG")?;
    let size = tree.size().to_int_size().scale_by(PNG_SCALE).context("chart size")?;
    let mut pixmap = resvg::tiny_skia::Pixmap::new(size.width(), size.height()).context("allocate the chart image")?;
    resvg::render(&tree, resvg::tiny_skia::Transform::from_scale(PNG_SCALE, PNG_SCALE), &mut pixmap.as_mut());
    pixmap.encode_png().context("encode the chart PNG")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(10.0, 5.0), 2.0);
        assert_eq!(nice_step(100.0, 6.0), 20.0);
        assert_eq!(nice_step(1.0, 4.0), 0.2);
        assert_eq!(nice_step(7.0, 12.0), 0.5);
    }
}
