//! Draws the loss curves of a run (`metrics.jsonl`) as an SVG: training loss (a moving
//! average) and held-out loss against the step; and several runs' held-out results against
//! training time, to compare models. Plain SVG text, no drawing library.

use std::fmt::Write as _;
use std::path::Path;

use crate::error::{Error, Result};

/// Reads `(step, value)` pairs of `field` from lines of `kind`.
fn series(lines: &[serde_json::Value], kind: &str, field: &str) -> Vec<(f64, f64)> {
    series_by(lines, kind, "step", field)
}

/// Writes `svg_path` from the metrics file `metrics_path`; `false` (and nothing written) when
/// there is nothing to draw yet.
pub fn loss_curve(metrics_path: &Path, svg_path: &Path, title: &str) -> Result<bool> {
    let text = std::fs::read_to_string(metrics_path).map_err(|e| Error::io(metrics_path, e))?;
    let lines: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let train = series(&lines, "train", "loss");
    // A moving average over 10 logged points smooths batch noise.
    let smooth: Vec<(f64, f64)> = train
        .iter()
        .enumerate()
        .map(|(i, &(s, _))| {
            let w = &train[i.saturating_sub(9)..=i];
            (s, w.iter().map(|p| p.1).sum::<f64>() / w.len() as f64)
        })
        .collect();
    let eval = series(&lines, "eval", "loss");
    let lines = [
        Line { label: "training (moving average)".into(), color: "steelblue", points: smooth },
        Line { label: "held out".into(), color: "darkorange", points: eval },
    ];
    match chart(title, "step", "loss (nats)", &lines) {
        Some(svg) => {
            nn::checkpoint::write_atomic(svg_path, svg.as_bytes())?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Held-out results of several runs against their training time, one line per run: for
/// comparing models trained for the same minutes on the same data. `runs` are
/// `(label, run directory)`; the value drawn is bits per byte where the runs report it, else
/// the held-out loss.
pub fn compare_runs(runs: &[(String, std::path::PathBuf)], svg_path: &Path, title: &str) -> Result<()> {
    const COLORS: [&str; 6] = ["steelblue", "darkorange", "seagreen", "crimson", "purple", "gray"];
    let mut lines = Vec::new();
    let mut bits = true;
    for (i, (label, dir)) in runs.iter().enumerate() {
        let path = dir.join("metrics.jsonl");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let values: Vec<serde_json::Value> =
            text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let mut points = series_by(&values, "eval", "elapsed_secs", "bits_per_byte");
        if points.is_empty() {
            bits = false;
            points = series_by(&values, "eval", "elapsed_secs", "loss");
        }
        let points = points.into_iter().map(|(t, v)| (t / 60.0, v)).collect();
        lines.push(Line { label: label.clone(), color: COLORS[i % COLORS.len()], points });
    }
    let y_label = if bits { "held-out bits per byte" } else { "held-out loss (nats)" };
    let svg = chart(title, "training minutes", y_label, &lines)
        .ok_or_else(|| Error::Input("the runs have no held-out results to draw".into()))?;
    Ok(nn::checkpoint::write_atomic(svg_path, svg.as_bytes())?)
}

/// Reads `(x, y)` pairs of the fields `x` and `y` from lines of `kind`.
fn series_by(lines: &[serde_json::Value], kind: &str, x: &str, y: &str) -> Vec<(f64, f64)> {
    lines
        .iter()
        .filter(|v| v.get("kind").and_then(|k| k.as_str()) == Some(kind))
        .filter_map(|v| Some((v.get(x)?.as_f64()?, v.get(y)?.as_f64()?)))
        .collect()
}

/// One labelled line of a chart.
struct Line {
    label: String,
    color: &'static str,
    points: Vec<(f64, f64)>,
}

/// An SVG line chart from zero on both axes, with a legend; `None` when there are no points.
fn chart(title: &str, x_label: &str, y_label: &str, lines: &[Line]) -> Option<String> {
    let all: Vec<&(f64, f64)> = lines.iter().flat_map(|l| &l.points).collect();
    if all.is_empty() {
        return None;
    }
    let (w, h, m) = (720.0, 420.0, 60.0);
    let x_max = all.iter().map(|p| p.0).fold(1e-9, f64::max);
    let y_max = all.iter().map(|p| p.1).fold(0.0, f64::max) * 1.05;
    let y_min = 0.0;
    let x = |s: f64| m + (s / x_max) * (w - 2.0 * m);
    let y = |v: f64| h - m - (v - y_min) / (y_max - y_min).max(1e-9) * (h - 2.0 * m);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{}" y="24" text-anchor="middle" font-size="15">{title}</text>"#,
        w / 2.0
    );
    let _ = writeln!(
        svg,
        r#"<line x1="{m}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{m}" y1="{m}" x2="{m}" y2="{}" stroke="black"/>"#,
        h - m,
        w - m,
        h - m,
        h - m
    );
    let x_digits = if x_max < 10.0 { 1 } else { 0 };
    for i in 0..=5 {
        let (sv, vv) = (x_max * i as f64 / 5.0, y_min + (y_max - y_min) * i as f64 / 5.0);
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{sv:.x_digits$}</text>"#,
            x(sv),
            h - m + 18.0,
        );
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{:.2}</text><line x1="{m}" y1="{:.1}" x2="{}" y2="{:.1}" stroke="lightgray"/>"#,
            m - 6.0,
            y(vv) + 4.0,
            vv,
            y(vv),
            w - m,
            y(vv)
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">{x_label}</text><text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">{y_label}</text>"#,
        w / 2.0,
        h - 14.0,
        h / 2.0,
        h / 2.0
    );
    for (i, line) in lines.iter().enumerate() {
        if line.points.is_empty() {
            continue;
        }
        let dy = 18.0 * i as f64;
        let path: Vec<String> =
            line.points.iter().map(|&(s, v)| format!("{:.1},{:.1}", x(s), y(v))).collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
            line.color,
            path.join(" ")
        );
        let _ = writeln!(
            svg,
            r#"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            w - m - 190.0,
            m + 10.0 + dy,
            w - m - 170.0,
            m + 10.0 + dy,
            line.color,
            w - m - 164.0,
            m + 14.0 + dy,
            line.label
        );
    }
    svg.push_str("</svg>\n");
    Some(svg)
}
