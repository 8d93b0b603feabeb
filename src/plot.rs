//! Training curves as SVG in the style of the paper's Figure 6 (error against
//! iterations, thin dashed lines for training error, bold lines for test error), and
//! `resnet plot`, which overlays several runs.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One curve.
pub struct Series {
    pub label: String,
    /// (iteration, error in %).
    pub points: Vec<(f64, f64)>,
    pub dashed: bool,
    pub color: &'static str,
}

const COLORS: [&str; 8] = [
    "#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// A round tick step giving about `target` ticks over `span`.
fn tick_step(span: f64, target: f64) -> f64 {
    let raw = (span / target).max(1e-12);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
}

/// Renders `series` as a line chart: x is iterations (labelled in units of 1e4 as in the
/// paper), y is error in %.
pub fn error_chart(title: &str, series: &[Series]) -> String {
    let (w, h, left, right, top, bottom) = (720.0, 440.0, 60.0, 170.0, 36.0, 48.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let x_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(1.0f64, f64::max);
    let y_hi = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(1.0f64, f64::max);
    // The paper's plots run 0-20 %; expand for runs that are still far from that.
    let y_max = if y_hi <= 20.0 { 20.0 } else { (y_hi * 1.05).min(100.0) };
    let sx = |x: f64| left + pw * x / x_max;
    let sy = |y: f64| top + ph * (1.0 - y.min(y_max) / y_max);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>"#,
        left + pw / 2.0,
        escape(title)
    );
    let ystep = tick_step(y_max, 5.0);
    let mut y = 0.0;
    while y <= y_max + 1e-9 {
        let (x2, yy, tx, ty) = (left + pw, sy(y), left - 6.0, sy(y) + 4.0);
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" x2="{x2}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{tx}" y="{ty:.1}" text-anchor="end">{y}</text>"##
        );
        y += ystep;
    }
    let xstep = tick_step(x_max, 6.0);
    let mut x = 0.0;
    while x <= x_max + 1e-9 {
        let (xx, y2, ty, label) = (sx(x), top + ph, top + ph + 16.0, trim(x / 1e4));
        let _ = writeln!(
            svg,
            r##"<line x1="{xx:.1}" x2="{xx:.1}" y1="{top}" y2="{y2}" stroke="#eee"/><text x="{xx:.1}" y="{ty}" text-anchor="middle">{label}</text>"##
        );
        x += xstep;
    }
    let _ = writeln!(
        svg,
        r#"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">iter. (1e4)</text>"#,
        left + pw / 2.0,
        h - 10.0
    );
    let _ = writeln!(
        svg,
        r#"<text transform="translate(16 {}) rotate(-90)" text-anchor="middle">error (%)</text>"#,
        top + ph / 2.0
    );
    for (i, s) in series.iter().enumerate() {
        if s.points.is_empty() {
            continue;
        }
        let path: Vec<String> = s
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let (width, dash) = if s.dashed {
            (1.0, r#" stroke-dasharray="4 3""#)
        } else {
            (2.2, "")
        };
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="{width}"{dash} points="{}"/>"#,
            s.color,
            path.join(" ")
        );
        let ly = top + 14.0 + 18.0 * i as f64;
        let lx = left + pw + 12.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx}" x2="{}" y1="{ly}" y2="{ly}" stroke="{}" stroke-width="{width}"{dash}/><text x="{}" y="{}">{}</text>"#,
            lx + 24.0,
            s.color,
            lx + 30.0,
            ly + 4.0,
            escape(&s.label)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Training-error and test-error series read from a run's `metrics.jsonl`.
pub fn run_series(dir: &Path, label: &str, color: &'static str) -> Result<Vec<Series>> {
    let path = dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}: line {} is not JSON", path.display(), n + 1))?;
        let it = v["iteration"].as_f64().unwrap_or(0.0);
        match v["kind"].as_str() {
            Some("train") => train.push((it, 100.0 * v["error"].as_f64().unwrap_or(f64::NAN))),
            Some("epoch") => test.push((it, 100.0 * v["test_error"].as_f64().unwrap_or(f64::NAN))),
            _ => {}
        }
    }
    Ok(vec![
        Series {
            label: format!("{label} train"),
            points: train,
            dashed: true,
            color,
        },
        Series {
            label: format!("{label} test"),
            points: test,
            dashed: false,
            color,
        },
    ])
}

/// Writes the curves of one run to `dir/curves.svg`.
pub fn write_run_curves(dir: &Path, title: &str) -> Result<()> {
    let series = run_series(dir, title, COLORS[0])?;
    crate::fsutil::write_atomic(&dir.join("curves.svg"), error_chart(title, &series).as_bytes())?;
    Ok(())
}

/// Arguments of `resnet plot`.
#[derive(Args)]
pub struct PlotArgs {
    /// Run folders (each with a metrics.jsonl), e.g. runs/plain20 runs/resnet20.
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// Output SVG file.
    #[arg(long, default_value = "curves.svg")]
    out: PathBuf,
    /// Chart title.
    #[arg(long, default_value = "CIFAR-10")]
    title: String,
}

/// Overlays the runs in one chart.
pub fn run(args: PlotArgs) -> Result<()> {
    if args.runs.len() > COLORS.len() {
        bail!(
            "at most {} runs fit in one chart, found {}",
            COLORS.len(),
            args.runs.len()
        );
    }
    let mut series = Vec::new();
    for (i, dir) in args.runs.iter().enumerate() {
        let label = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("run {i}"));
        series.extend(run_series(dir, &label, COLORS[i])?);
    }
    crate::fsutil::write_atomic(&args.out, error_chart(&args.title, &series).as_bytes())
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    println!("wrote {}", args.out.display());
    Ok(())
}
