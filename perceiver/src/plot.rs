//! Draws the loss curves of a run (`metrics.jsonl`) as an SVG: training loss (a moving
//! average) and held-out loss against the step; several runs' held-out results against
//! training time, to compare models; and copy-task runs' minutes to solve against the number
//! of copied bytes. Plain SVG text, no drawing library.

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
        Line { label: "training (moving average)".into(), color: "steelblue", points: smooth, dots: false },
        Line { label: "held out".into(), color: "darkorange", points: eval, dots: false },
    ];
    match chart(title, "step", "loss (nats)", &lines) {
        Some(svg) => {
            nn::checkpoint::write_atomic(svg_path, svg.as_bytes())?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Colours of the lines of a comparison, in order.
const COLORS: [&str; 6] = ["steelblue", "darkorange", "seagreen", "crimson", "purple", "gray"];

/// The held-out lines of a run's metrics file.
fn eval_lines(dir: &Path) -> Result<Vec<serde_json::Value>> {
    let path = dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("kind").and_then(|k| k.as_str()) == Some("eval"))
        .collect())
}

/// Held-out results of several runs against their training time, one line per run: for
/// comparing models trained for the same minutes on the same data. `runs` are
/// `(label, run directory)`; the value drawn is the first the runs all report of bits per
/// byte, bits per masked byte, accuracy (copy task, classes) and loss.
pub fn compare_runs(runs: &[(String, std::path::PathBuf)], svg_path: &Path, title: &str) -> Result<()> {
    let evals: Vec<Vec<serde_json::Value>> =
        runs.iter().map(|(_, dir)| eval_lines(dir)).collect::<Result<_>>()?;
    let measures = [
        ("bits_per_byte", "held-out bits per byte", 1.0),
        ("bits_per_masked_byte", "held-out bits per masked byte", 1.0),
        ("accuracy", "held-out accuracy (%)", 100.0),
        ("loss", "held-out loss (nats)", 1.0),
    ];
    // The first measure every run reports: one series of (seconds, value) per run.
    let Some((y_label, scale, series)) = measures.iter().find_map(|&(field, y_label, scale)| {
        let series: Vec<_> = evals.iter().map(|e| series_by(e, "eval", "elapsed_secs", field)).collect();
        series.iter().all(|s| !s.is_empty()).then_some((y_label, scale, series))
    }) else {
        return Err(Error::Input("the runs have no held-out results to draw".into()));
    };
    let lines: Vec<Line> = runs
        .iter()
        .zip(series)
        .enumerate()
        .map(|(i, ((label, _), points))| Line {
            label: label.clone(),
            color: COLORS[i % COLORS.len()],
            points: points.into_iter().map(|(t, v)| (t / 60.0, v * scale)).collect(),
            dots: false,
        })
        .collect();
    let svg = chart(title, "training minutes", y_label, &lines)
        .ok_or_else(|| Error::Input("the runs have no held-out results to draw".into()))?;
    Ok(nn::checkpoint::write_atomic(svg_path, svg.as_bytes())?)
}

/// One copy-task run as [`copy_solve_times`] reads it.
pub struct CopyRun {
    /// The model, as the legend names it; runs of one model make one line.
    pub model: String,
    /// Bytes copied.
    pub k: usize,
    pub dir: std::path::PathBuf,
}

/// Copy-task runs: the minutes each took until every held-out sequence was copied exactly,
/// against the number of bytes `k`, one line per model. A run that never got there is left off
/// its line. Returns one sentence per run, in order, saying when it solved the task or how far
/// it got.
pub fn copy_solve_times(runs: &[CopyRun], svg_path: &Path, title: &str) -> Result<Vec<String>> {
    let mut lines: Vec<Line> = Vec::new();
    let mut notes = Vec::new();
    for run in runs {
        let evals = eval_lines(&run.dir)?;
        let at = |v: &serde_json::Value, field: &str| v.get(field).and_then(|x| x.as_f64());
        let solved = evals.iter().find(|v| at(v, "sequence_accuracy") == Some(1.0));
        let index = match lines.iter().position(|l| l.label == run.model) {
            Some(i) => i,
            None => {
                let color = COLORS[lines.len() % COLORS.len()];
                lines.push(Line { label: run.model.clone(), color, points: Vec::new(), dots: true });
                lines.len() - 1
            }
        };
        let last = evals.last();
        let minutes =
            |v: Option<&serde_json::Value>| v.and_then(|v| at(v, "elapsed_secs")).unwrap_or(0.0) / 60.0;
        notes.push(match solved {
            Some(v) => {
                lines[index].points.push((run.k as f64, minutes(Some(v))));
                format!(
                    "{} k = {}: solved at step {} after {:.2} minutes",
                    run.model,
                    run.k,
                    at(v, "step").unwrap_or(0.0),
                    minutes(Some(v))
                )
            }
            None => format!(
                "{} k = {}: not solved; after {:.2} minutes {:.1} % of held-out tokens, {:.1} % of sequences",
                run.model,
                run.k,
                minutes(last),
                last.and_then(|v| at(v, "accuracy")).unwrap_or(0.0) * 100.0,
                last.and_then(|v| at(v, "sequence_accuracy")).unwrap_or(0.0) * 100.0
            ),
        });
    }
    for line in &mut lines {
        line.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let svg = chart(title, "bytes copied (k)", "minutes until every held-out sequence is exact", &lines)
        .ok_or_else(|| {
            Error::Input(format!("none of the runs solved the copy task: {}", notes.join("; ")))
        })?;
    nn::checkpoint::write_atomic(svg_path, svg.as_bytes())?;
    Ok(notes)
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
    /// Whether each point gets a dot (few points, each a separate run).
    dots: bool,
}

/// A round step for about five ticks up to `max` (1, 2, 2.5 or 5 times a power of ten), and
/// the decimals its labels need.
fn tick_step(max: f64) -> (f64, usize) {
    let rough = max / 5.0;
    let power = 10f64.powf(rough.log10().floor());
    let step =
        [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|f| f * power).find(|&s| s >= rough).unwrap_or(10.0 * power);
    // 2.5 times a power of ten below 10 needs one decimal more than the step's magnitude.
    let quarter = (step / power - 2.5).abs() < 1e-9 && step < 10.0;
    let digits = (-step.log10().floor()).max(0.0) as usize + usize::from(quarter);
    (step, digits)
}

/// An SVG line chart from zero on both axes, with a legend; `None` when there are no points.
fn chart(title: &str, x_label: &str, y_label: &str, lines: &[Line]) -> Option<String> {
    let all: Vec<&(f64, f64)> = lines.iter().flat_map(|l| &l.points).collect();
    if all.is_empty() {
        return None;
    }
    let (w, h, m) = (720.0, 420.0, 60.0);
    // Each axis ends at the first round tick at or past its largest value.
    let axis = |largest: f64| {
        let (step, digits) = tick_step(largest);
        (step, digits, (largest / step).ceil().max(1.0) as usize)
    };
    let (x_step, x_digits, x_ticks) = axis(all.iter().map(|p| p.0).fold(1e-9, f64::max));
    let (y_step, y_digits, y_ticks) = axis(all.iter().map(|p| p.1).fold(1e-9, f64::max));
    let (x_max, y_max) = (x_step * x_ticks as f64, y_step * y_ticks as f64);
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
    for i in 0..=x_ticks {
        let sv = x_step * i as f64;
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{sv:.x_digits$}</text>"#,
            x(sv),
            h - m + 18.0,
        );
    }
    for i in 0..=y_ticks {
        let vv = y_min + y_step * i as f64;
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{vv:.y_digits$}</text><line x1="{m}" y1="{:.1}" x2="{}" y2="{:.1}" stroke="lightgray"/>"#,
            m - 6.0,
            y(vv) + 4.0,
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
        if line.dots {
            for &(s, v) in &line.points {
                let _ = writeln!(
                    svg,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{}"/>"#,
                    x(s),
                    y(v),
                    line.color
                );
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A run directory whose metrics hold the held-out lines `evals` (step, seconds, sequence
    /// accuracy).
    fn run_with(dir: &Path, evals: &[(u64, f64, f64)]) {
        std::fs::create_dir_all(dir).unwrap();
        let lines: Vec<String> = evals
            .iter()
            .map(|&(step, secs, seqs)| {
                format!(
                    r#"{{"kind":"eval","step":{step},"elapsed_secs":{secs},"accuracy":{seqs},"sequence_accuracy":{seqs},"loss":1.0}}"#
                )
            })
            .collect();
        std::fs::write(dir.join("metrics.jsonl"), lines.join("\n")).unwrap();
    }

    #[test]
    fn ticks_are_round() {
        let ticks = |max: f64| tick_step(max);
        assert_eq!(ticks(1.0), (0.2, 1));
        assert_eq!(ticks(3.08), (1.0, 0));
        assert_eq!(ticks(256.0), (100.0, 0));
        assert_eq!(ticks(11.0), (2.5, 1));
        assert_eq!(ticks(1.2), (0.25, 2));
        assert_eq!(ticks(3000.0), (1000.0, 0));
        assert_eq!(ticks(120.0), (25.0, 0));
    }

    #[test]
    fn copy_solve_times_draw_the_first_exact_evaluation_of_each_run() {
        let root = std::env::temp_dir().join(format!("perceiver-plot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        run_with(&root.join("a8"), &[(50, 30.0, 0.5), (100, 60.0, 1.0), (150, 90.0, 1.0)]);
        run_with(&root.join("a16"), &[(50, 30.0, 0.0), (100, 240.0, 0.25)]);
        run_with(&root.join("b8"), &[(100, 120.0, 1.0)]);
        let run = |model: &str, k: usize, dir: &str| CopyRun { model: model.into(), k, dir: root.join(dir) };
        let svg = root.join("solve.svg");
        let runs = [run("a", 8, "a8"), run("a", 16, "a16"), run("b", 8, "b8")];
        let notes = copy_solve_times(&runs, &svg, "t").unwrap();
        assert_eq!(notes[0], "a k = 8: solved at step 100 after 1.00 minutes");
        assert_eq!(
            notes[1],
            "a k = 16: not solved; after 4.00 minutes 25.0 % of held-out tokens, 25.0 % of sequences"
        );
        assert_eq!(notes[2], "b k = 8: solved at step 100 after 2.00 minutes");
        let drawn = std::fs::read_to_string(&svg).unwrap();
        assert_eq!(drawn.matches("<circle").count(), 2, "{drawn}");
        assert!(drawn.contains(">a</text>") && drawn.contains(">b</text>"), "{drawn}");
        // Nothing solved: no chart, and the error says how far each run got.
        let e = copy_solve_times(&runs[1..2], &root.join("none.svg"), "t").unwrap_err().to_string();
        assert!(e.contains("none of the runs solved") && e.contains("a k = 16: not solved"), "{e}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
