//! Training curves as SVG in the style of the paper's Figure 6 (error against
//! iterations, thin dashed lines for training error, bold lines for test error), and
//! `resnet plot`, which overlays several runs.

use crate::metrics::RunLog;
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

/// Line colours, one per run of a chart.
pub const COLORS: [&str; 8] = [
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

/// One chart of a figure: a title above its curves.
pub struct Panel<'a> {
    pub title: &'a str,
    pub series: &'a [Series],
}

/// The width and height of one panel, its legend included.
const PANEL_SIZE: (f64, f64) = (720.0, 440.0);
/// The font the charts name; the PNG renderer carries its own copy.
const FONT: &str = "DejaVu Sans";

/// Renders `series` as a line chart: x is iterations (labelled in units of 1e4 as in the
/// paper), y is error in %.
pub fn error_chart(title: &str, series: &[Series]) -> String {
    figure(&[Panel { title, series }], None)
}

/// Renders panels side by side on the same scales, as the paper's Figure 6. The y scale runs
/// to `y_limit` %, the curves clipped there as in the paper's Figure 6 (0-20 %); without
/// a limit, to 20 % or the highest point. Points that are not finite (a diverged run's
/// NaN loss) are left out of the lines.
pub fn figure(panels: &[Panel], y_limit: Option<f64>) -> String {
    let (pw_all, h) = PANEL_SIZE;
    let w = pw_all * panels.len().max(1) as f64;
    let y_hi = panels
        .iter()
        .flat_map(|p| p.series.iter())
        .flat_map(finite_points)
        .map(|p| p.1)
        .fold(1.0f64, f64::max);
    let x_max = panels
        .iter()
        .flat_map(|p| p.series.iter())
        .flat_map(finite_points)
        .map(|p| p.0)
        .fold(1.0f64, f64::max);
    let y_max = match y_limit {
        Some(limit) => limit,
        None if y_hi <= 20.0 => 20.0,
        None => (y_hi * 1.05).min(100.0),
    };
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="{FONT}, sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    for (i, panel) in panels.iter().enumerate() {
        draw_panel(&mut svg, i, (x_max, y_max), panel);
    }
    svg.push_str("</svg>\n");
    svg
}

/// The finite points of a series, in order.
fn finite_points(s: &Series) -> impl Iterator<Item = (f64, f64)> + '_ {
    s.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite())
}

/// Draws the `index`th panel from the left.
fn draw_panel(svg: &mut String, index: usize, (x_max, y_max): (f64, f64), panel: &Panel) {
    let (_, h) = PANEL_SIZE;
    let x0 = PANEL_SIZE.0 * index as f64;
    let (left, right, top, bottom) = (x0 + 60.0, 170.0, 36.0, 48.0);
    let (pw, ph) = (PANEL_SIZE.0 - 60.0 - right, h - top - bottom);
    let sx = |x: f64| left + pw * x / x_max;
    let sy = |y: f64| top + ph * (1.0 - y / y_max);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>"#,
        left + pw / 2.0,
        escape(panel.title)
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
        r#"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="black"/><clipPath id="plot{index}"><rect x="{left}" y="{top}" width="{pw}" height="{ph}"/></clipPath>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">iter. (1e4)</text>"#,
        left + pw / 2.0,
        h - 10.0
    );
    let _ = writeln!(
        svg,
        r#"<text transform="translate({} {}) rotate(-90)" text-anchor="middle">error (%)</text>"#,
        x0 + 16.0,
        top + ph / 2.0
    );
    for (i, s) in panel.series.iter().enumerate() {
        let path: Vec<String> = finite_points(s)
            .map(|(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        if path.is_empty() {
            continue;
        }
        let (width, dash) = if s.dashed {
            (1.0, r#" stroke-dasharray="4 3""#)
        } else {
            (2.2, "")
        };
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="{width}"{dash} clip-path="url(#plot{index})" points="{}"/>"#,
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
}

/// The chart `svg` as PNG at `scale` times its size, drawn with a bundled DejaVu Sans so
/// that the text looks the same on machines without fonts.
pub fn svg_to_png(svg: &str, scale: f32) -> Result<Vec<u8>> {
    use resvg::{tiny_skia, usvg};
    let mut options = usvg::Options {
        font_family: FONT.into(),
        ..Default::default()
    };
    options.fontdb_mut().load_font_data(dejavu::sans::regular().to_vec());
    let tree = usvg::Tree::from_str(svg, &options).context("cannot parse the chart's SVG")?;
    let size = tree
        .size()
        .to_int_size()
        .scale_by(scale)
        .context("the chart is too large")?;
    let mut pixmap = tiny_skia::Pixmap::new(size.width(), size.height()).context("the chart is too large")?;
    resvg::render(
        &tree,
        tiny_skia::Transform::from_scale(scale, scale),
        &mut pixmap.as_mut(),
    );
    pixmap.encode_png().context("cannot encode the chart as PNG")
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
    Ok(log_series(&RunLog::read(dir)?, label, color))
}

/// The dashed training-error and bold test-error series of a run's log.
pub fn log_series(log: &RunLog, label: &str, color: &'static str) -> Vec<Series> {
    vec![
        Series {
            label: format!("{label} train"),
            points: log.train.clone(),
            dashed: true,
            color,
        },
        Series {
            label: format!("{label} test"),
            points: log.test.clone(),
            dashed: false,
            color,
        },
    ]
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
    /// Output file: SVG, or PNG when the name ends in `.png`.
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
    let svg = error_chart(&args.title, &series);
    let is_png = args.out.extension().is_some_and(|e| e.eq_ignore_ascii_case("png"));
    let bytes = if is_png {
        svg_to_png(&svg, 2.0)?
    } else {
        svg.into_bytes()
    };
    crate::fsutil::write_atomic(&args.out, &bytes).with_context(|| format!("cannot write {}", args.out.display()))?;
    println!("wrote {}", args.out.display());
    Ok(())
}
