//! SVG plots of a run's curves: loss, kNN accuracy, feature spread and positive similarity, so that a
//! run's health can be judged at a glance without any plotting tool. SVG text is written as `<text>` elements, so no
//! font files or system font libraries are needed.

use super::records::Record;
use super::run::{write_atomic, RunError};
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// Plot size in pixels.
const SIZE: (u32, u32) = (800, 480);
/// Series colours, in order.
const COLORS: [RGBColor; 4] =
    [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44), RGBColor(148, 103, 189)];
/// Reference-line colours, in order.
const REFERENCE_COLORS: [RGBColor; 2] = [RGBColor(90, 90, 90), RGBColor(255, 127, 14)];

/// One curve: the (x, y) point of each record that has one, where both are finite.
struct Series {
    label: &'static str,
    point: fn(&Record) -> Option<(f64, f64)>,
}

/// A horizontal line at the last finite value of a record field (a healthy level, a baseline).
struct Reference {
    label: &'static str,
    value: fn(&Record) -> Option<f64>,
}

/// (step, value) of a step record.
fn step(r: &Record, value: fn(&super::records::StepRecord) -> Option<f64>) -> Option<(f64, f64)> {
    match r {
        Record::Step(s) => Some((s.step as f64, value(s)?)),
        _ => None,
    }
}

/// One plot file.
struct Plot {
    file: &'static str,
    title: &'static str,
    x_desc: &'static str,
    y_desc: &'static str,
    series: Vec<Series>,
    references: Vec<Reference>,
    /// Where the legend goes: the corner the curve usually stays away from.
    legend: SeriesLabelPosition,
}

fn plots() -> Vec<Plot> {
    vec![
        Plot {
            file: "loss.svg",
            title: "loss",
            x_desc: "step",
            y_desc: "loss",
            series: vec![Series { label: "loss", point: |r| step(r, |s| s.loss) }],
            references: vec![],
            legend: SeriesLabelPosition::UpperRight,
        },
        Plot {
            file: "knn.svg",
            title: "kNN top-1 accuracy",
            x_desc: "epoch",
            y_desc: "top-1",
            series: vec![Series {
                label: "kNN top-1",
                point: |r| match r {
                    Record::Eval(e) => Some((e.epoch as f64, e.knn_top1)),
                    _ => None,
                },
            }],
            references: vec![
                Reference {
                    label: "raw-pixel kNN",
                    value: |r| match r {
                        Record::Baseline(b) => Some(b.raw_pixel_knn),
                        _ => None,
                    },
                },
                Reference {
                    label: "random-init kNN",
                    value: |r| match r {
                        Record::Baseline(b) => Some(b.random_init_knn),
                        _ => None,
                    },
                },
            ],
            legend: SeriesLabelPosition::LowerRight,
        },
        Plot {
            file: "zstd.svg",
            title: "std of normalised features (0 = collapse)",
            x_desc: "step",
            y_desc: "z-std",
            series: vec![
                Series { label: "online", point: |r| step(r, |s| Some(s.z_std_online)) },
                Series { label: "target", point: |r| step(r, |s| Some(s.z_std_target)) },
            ],
            references: vec![Reference {
                label: "healthy 1/sqrt(D)",
                value: |r| match r {
                    Record::Step(s) => Some(s.z_std_healthy),
                    _ => None,
                },
            }],
            legend: SeriesLabelPosition::LowerRight,
        },
        Plot {
            file: "similarity.svg",
            title: "mean positive similarity",
            x_desc: "step",
            y_desc: "cosine",
            series: vec![Series { label: "positive similarity", point: |r| step(r, |s| Some(s.pos_sim)) }],
            references: vec![],
            legend: SeriesLabelPosition::LowerRight,
        },
    ]
}

/// The SVG plots of `records` (metrics.jsonl records), as (file name, SVG text): `loss.svg` (loss vs step),
/// `knn.svg` (kNN top-1 vs epoch, with the raw-pixel and random-init baselines when logged), `zstd.svg` (online and
/// target z-std vs step, with a line at the healthy 1/√D) and `similarity.svg` (positive similarity vs step). A plot
/// with no points is skipped, as are non-finite values. The run directory's files and `report.html` share them.
pub fn svgs(records: &[Record]) -> Result<Vec<(&'static str, String)>, String> {
    let mut out = Vec::new();
    for plot in plots() {
        let curves: Vec<(&Series, Vec<(f64, f64)>)> =
            plot.series.iter().map(|s| (s, points(records, s.point))).filter(|(_, p)| !p.is_empty()).collect();
        if curves.is_empty() {
            continue;
        }
        let references: Vec<(&Reference, f64)> =
            plot.references.iter().filter_map(|r| last_finite(records, r.value).map(|v| (r, v))).collect();
        out.push((plot.file, render(&plot, &curves, &references).map_err(|e| format!("{}: {e}", plot.file))?));
    }
    Ok(out)
}

/// Writes [`svgs`] into `dir`; returns the files written, in order.
pub fn plot_metrics(records: &[Record], dir: &Path) -> Result<Vec<PathBuf>, RunError> {
    let plots = svgs(records).map_err(|reason| RunError::Plot { path: dir.display().to_string(), reason })?;
    std::fs::create_dir_all(dir).map_err(|e| RunError::Io {
        action: "create directory".into(),
        path: dir.display().to_string(),
        source: e,
    })?;
    let mut written = Vec::new();
    for (file, svg) in plots {
        let path = dir.join(file);
        write_atomic(&path, svg.as_bytes())?;
        written.push(path);
    }
    Ok(written)
}

/// The finite points of the records, in record order.
fn points(records: &[Record], point: fn(&Record) -> Option<(f64, f64)>) -> Vec<(f64, f64)> {
    records.iter().filter_map(point).filter(|(x, y)| x.is_finite() && y.is_finite()).collect()
}

fn last_finite(records: &[Record], value: fn(&Record) -> Option<f64>) -> Option<f64> {
    records.iter().rev().filter_map(value).find(|v| v.is_finite())
}

/// A non-empty range covering `values`, padded by 5 % so curves do not sit on the frame.
fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let span = hi - lo;
    if span > 0.0 && span.is_finite() {
        (lo - 0.05 * span, hi + 0.05 * span)
    } else {
        let pad = if lo.abs() > 0.0 { 0.05 * lo.abs() } else { 0.5 };
        (lo - pad, hi + pad)
    }
}

/// A tick label without float noise: at most 4 significant decimals, trailing zeros dropped (`20`, not `20.0`).
fn tick(v: f64) -> String {
    let text = if v != 0.0 && (v.abs() < 1e-3 || v.abs() >= 1e6) { format!("{v:.2e}") } else { format!("{v:.4}") };
    if text.contains('e') || !text.contains('.') {
        return text;
    }
    let trimmed = text.trim_end_matches('0').trim_end_matches('.');
    if trimmed == "-0" {
        "0".into()
    } else {
        trimmed.into()
    }
}

fn render(
    plot: &Plot,
    curves: &[(&Series, Vec<(f64, f64)>)],
    references: &[(&Reference, f64)],
) -> Result<String, String> {
    let (x0, x1) = range(curves.iter().flat_map(|(_, p)| p.iter().map(|&(x, _)| x)));
    let (y0, y1) =
        range(curves.iter().flat_map(|(_, p)| p.iter().map(|&(_, y)| y)).chain(references.iter().map(|&(_, v)| v)));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(plot.title, ("sans-serif", 22))
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc(plot.x_desc)
            .y_desc(plot.y_desc)
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .x_label_formatter(&|v| tick(*v))
            .y_label_formatter(&|v| tick(*v))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, (series, pts)) in curves.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(series.label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            if pts.len() == 1 {
                chart
                    .draw_series(std::iter::once(Circle::new(pts[0], 3, color.filled())))
                    .map_err(|e| e.to_string())?;
            }
        }
        for (i, (reference, value)) in references.iter().enumerate() {
            let color = REFERENCE_COLORS[i % REFERENCE_COLORS.len()];
            chart
                .draw_series(DashedLineSeries::new(vec![(x0, *value), (x1, *value)], 8, 5, color.stroke_width(1)))
                .map_err(|e| e.to_string())?
                .label(format!("{} = {value:.4}", reference.label))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(1)));
        }
        chart
            .configure_series_labels()
            .position(plot.legend.clone())
            .label_font(("sans-serif", 14))
            .background_style(WHITE.mix(0.7))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}
