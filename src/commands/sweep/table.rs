//! A sweep's results: what each cell's run directory says at its end (kNN, health, speed) with what the sweep
//! measured itself (linear probe, wall time), grouped over seeds as mean ± std, and written as Markdown, CSV, an
//! SVG chart and an HTML page that links each cell's own report.

use super::grid::Cell;
use crate::runtime::records::Record;
use crate::runtime::report::{escape, page};
use std::fmt::Write;

/// One cell's figures at its end; `None` where the run has none (failed, or never evaluated).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Measured {
    /// Final kNN top-1, in [0, 1].
    pub knn: Option<f64>,
    /// Linear-probe top-1, in [0, 1].
    pub linear: Option<f64>,
    /// The online features' std over the healthy 1/√D (1: spread, 0: collapsed), at the last logged step.
    pub z_std_ratio: Option<f64>,
    /// Effective rank of the online features at the last logged step.
    pub effective_rank: Option<f64>,
    /// Pairs per second at the last logged step.
    pub pairs_per_s: Option<f64>,
    /// Wall time the sweep spent on the cell, in seconds.
    pub wall_s: f64,
    /// Whether it failed.
    pub failed: bool,
}

/// Reads a run's own records into a cell's figures (the sweep adds the wall time, and the probe where the run has
/// none).
pub fn from_records(records: &[Record]) -> Measured {
    let knn = records.iter().rev().find_map(|r| if let Record::Eval(e) = r { Some(e.knn_top1) } else { None });
    let linear = records.iter().rev().find_map(|r| if let Record::End(e) = r { e.linear_top1 } else { None });
    let last = records.iter().rev().find_map(|r| if let Record::Step(s) = r { Some(s) } else { None });
    let finite = |x: f64| x.is_finite().then_some(x);
    Measured {
        knn,
        linear,
        z_std_ratio: last.and_then(|s| finite(s.z_std_online / s.z_std_healthy)),
        effective_rank: last.and_then(|s| finite(s.effective_rank)),
        pairs_per_s: last.and_then(|s| finite(s.pairs_per_s)),
        ..Measured::default()
    }
}

/// Mean and (over two or more values) sample standard deviation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stat {
    /// Mean.
    pub mean: f64,
    /// Sample std, when there are at least two values.
    pub std: Option<f64>,
}

fn stat(values: impl Iterator<Item = Option<f64>>) -> Option<Stat> {
    let v: Vec<f64> = values.flatten().collect();
    if v.is_empty() {
        return None;
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let std = (v.len() > 1).then(|| (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt());
    Some(Stat { mean, std })
}

/// One line of the table: a file and its grid settings, over seeds.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The file's stem.
    pub objective: String,
    /// `KEY=VALUE` settings, space separated (empty: the file's recipe).
    pub settings: String,
    /// The group's cells (their run directories' names), each with its seed.
    pub runs: Vec<(String, Option<u64>)>,
    /// Failed cells.
    pub failed: usize,
    /// kNN top-1.
    pub knn: Option<Stat>,
    /// Linear-probe top-1.
    pub linear: Option<Stat>,
    /// z-std over healthy.
    pub z_std_ratio: Option<Stat>,
    /// Effective rank.
    pub effective_rank: Option<Stat>,
    /// Pairs per second.
    pub pairs_per_s: Option<Stat>,
    /// Wall time of the group's cells, summed, in seconds.
    pub wall_s: f64,
}

/// The rows, groups in the order of their first cell.
pub fn rows(cells: &[(Cell, Measured)]) -> Vec<Row> {
    let mut groups: Vec<(&Cell, Vec<&Cell>, Vec<&Measured>)> = Vec::new();
    for (cell, m) in cells {
        match groups.iter_mut().find(|(c, ..)| c.group() == cell.group()) {
            Some((_, cs, ms)) => {
                cs.push(cell);
                ms.push(m);
            }
            None => groups.push((cell, vec![cell], vec![m])),
        }
    }
    groups
        .into_iter()
        .map(|(cell, cs, ms)| {
            let ok = || ms.iter().filter(|m| !m.failed);
            Row {
                objective: cell.file.file_stem().map_or(String::new(), |s| s.to_string_lossy().into_owned()),
                settings: cell.settings.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "),
                runs: cs.iter().map(|c| (c.name.clone(), c.seed)).collect(),
                failed: ms.iter().filter(|m| m.failed).count(),
                knn: stat(ok().map(|m| m.knn)),
                linear: stat(ok().map(|m| m.linear)),
                z_std_ratio: stat(ok().map(|m| m.z_std_ratio)),
                effective_rank: stat(ok().map(|m| m.effective_rank)),
                pairs_per_s: stat(ok().map(|m| m.pairs_per_s)),
                wall_s: ms.iter().map(|m| m.wall_s).sum(),
            }
        })
        .collect()
}

fn show(s: Option<Stat>, scale: f64, digits: usize) -> String {
    match s {
        None => "-".into(),
        Some(Stat { mean, std: None }) => format!("{:.digits$}", mean * scale),
        Some(Stat { mean, std: Some(sd) }) => format!("{:.digits$} ± {:.digits$}", mean * scale, sd * scale),
    }
}

/// A row's figures as the Markdown table and the page show them: kNN, linear probe, z-std ratio, effective rank,
/// pairs/s, wall time.
fn figures(r: &Row) -> [String; 6] {
    [
        show(r.knn, 100.0, 2),
        show(r.linear, 100.0, 2),
        show(r.z_std_ratio, 1.0, 2),
        show(r.effective_rank, 1.0, 1),
        show(r.pairs_per_s, 1.0, 0),
        format!("{:.0} s", r.wall_s),
    ]
}

/// The Markdown table.
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| objective | settings | cells | kNN top-1 % | linear top-1 % | z-std / healthy | effective rank | pairs/s | wall |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let n = r.runs.len();
        let cells = if r.failed > 0 { format!("{n} ({} failed)", r.failed) } else { n.to_string() };
        let settings = if r.settings.is_empty() { "(recipe)".to_string() } else { format!("`{}`", r.settings) };
        let _ = writeln!(out, "| {} | {settings} | {cells} | {} |", r.objective, figures(r).join(" | "));
    }
    out
}

/// The CSV: one line per row, means and stds in their own columns (empty where there is none).
pub fn csv(rows: &[Row]) -> String {
    let mut out = String::from(
        "objective,settings,cells,failed,knn_mean,knn_std,linear_mean,linear_std,z_std_ratio_mean,z_std_ratio_std,\
         effective_rank_mean,effective_rank_std,pairs_per_s_mean,pairs_per_s_std,wall_s\n",
    );
    let pair = |s: Option<Stat>| match s {
        None => ",".to_string(),
        Some(Stat { mean, std }) => format!("{mean},{}", std.map_or(String::new(), |x| x.to_string())),
    };
    for r in rows {
        let quoted = format!("\"{}\"", r.settings.replace('"', "\"\""));
        let _ = writeln!(
            out,
            "{},{quoted},{},{},{},{},{},{},{},{}",
            r.objective,
            r.runs.len(),
            r.failed,
            pair(r.knn),
            pair(r.linear),
            pair(r.z_std_ratio),
            pair(r.effective_rank),
            pair(r.pairs_per_s),
            r.wall_s
        );
    }
    out
}

/// The sweep's page (`report.html`): the chart, the table with each cell linked to its run's own report (a
/// directory beside the page), and the `--set` every cell trained with.
pub fn html(name: &str, set: &[String], rows: &[Row]) -> String {
    let mut body = String::new();
    if !set.is_empty() {
        let _ = writeln!(body, "<p>every cell trained with <code>{}</code></p>", escape(&set.join("; ")));
    }
    let chart = svg(rows);
    body.push_str(&chart);
    body.push_str(
        "<table>\n<tr><th>objective</th><th>settings</th><th>runs</th><th>kNN top-1 %</th><th>linear top-1 %</th>\
         <th>z-std / healthy</th><th>effective rank</th><th>pairs/s</th><th>wall</th></tr>\n",
    );
    for r in rows {
        let runs: Vec<String> = r
            .runs
            .iter()
            .map(|(cell, seed)| {
                let label = seed.map_or_else(|| "run".to_string(), |s| format!("seed {s}"));
                format!("<a href=\"{}/report.html\">{label}</a>", escape(cell))
            })
            .collect();
        let failed =
            if r.failed > 0 { format!(" <span class=\"bad\">{} failed</span>", r.failed) } else { String::new() };
        let settings = if r.settings.is_empty() { "(recipe)".to_string() } else { r.settings.clone() };
        let _ = writeln!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}{failed}</td><td>{}</td></tr>",
            escape(&r.objective),
            escape(&settings),
            runs.join(" "),
            figures(r).join("</td><td>")
        );
    }
    body.push_str("</table>\n");
    page(&format!("ssl-lang sweep {name}"), &body)
}

/// A horizontal bar chart of kNN (and linear-probe) top-1 per row, with ± std whiskers.
pub fn svg(rows: &[Row]) -> String {
    let (label_w, bar_w, row_h) = (330.0, 420.0, 30.0);
    let height = 50.0 + row_h * rows.len() as f64;
    let x = |acc: f64| label_w + bar_w * acc.clamp(0.0, 1.0);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" font-family=\"sans-serif\" \
         font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{label_w}\" y=\"16\">top-1 accuracy (0–100 %): kNN (blue), linear probe (orange); bars ± std over seeds</text>\n",
        label_w + bar_w + 20.0
    );
    for tick in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let _ = writeln!(
            out,
            "<line x1=\"{0}\" y1=\"24\" x2=\"{0}\" y2=\"{1}\" stroke=\"#ddd\"/><text x=\"{0}\" y=\"{2}\" \
             text-anchor=\"middle\" fill=\"#666\">{3:.0}</text>",
            x(tick),
            height - 16.0,
            height - 4.0,
            tick * 100.0
        );
    }
    for (i, r) in rows.iter().enumerate() {
        let y = 30.0 + row_h * i as f64;
        let label = if r.settings.is_empty() { r.objective.clone() } else { format!("{} {}", r.objective, r.settings) };
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            label_w - 8.0,
            y + 16.0,
            escape(&label)
        );
        for (stat, dy, colour) in [(r.knn, 2.0, "#3b6fb6"), (r.linear, 14.0, "#e08a2c")] {
            let Some(s) = stat else { continue };
            let _ = writeln!(
                out,
                "<rect x=\"{label_w}\" y=\"{}\" width=\"{}\" height=\"11\" fill=\"{colour}\"/>",
                y + dy,
                x(s.mean) - label_w
            );
            if let Some(sd) = s.std {
                let _ = writeln!(
                    out,
                    "<line x1=\"{}\" y1=\"{2}\" x2=\"{}\" y2=\"{2}\" stroke=\"black\"/>",
                    x(s.mean - sd),
                    x(s.mean + sd),
                    y + dy + 5.5
                );
            }
        }
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn cell(settings: &[(&str, &str)], seed: u64) -> Cell {
        Cell {
            name: format!("c{seed}"),
            file: PathBuf::from("objectives/unigrad.ssl"),
            settings: settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            seed: Some(seed),
        }
    }

    #[test]
    fn seeds_group_into_mean_and_sample_std_and_failures_are_counted_apart() {
        let m = |knn: f64| Measured { knn: Some(knn), linear: Some(knn + 0.1), wall_s: 10.0, ..Measured::default() };
        let failed = Measured { failed: true, wall_s: 1.0, ..Measured::default() };
        let cells = vec![
            (cell(&[("form", "loss")], 0), m(0.70)),
            (cell(&[("form", "gradient")], 0), m(0.60)),
            (cell(&[("form", "loss")], 1), m(0.74)),
            (cell(&[("form", "loss")], 2), failed),
        ];
        let rows = rows(&cells);
        assert_eq!(rows.len(), 2);
        let loss = &rows[0];
        assert_eq!((loss.settings.as_str(), loss.runs.len(), loss.failed, loss.wall_s), ("form=loss", 3, 1, 21.0));
        let knn = loss.knn.unwrap();
        assert!((knn.mean - 0.72).abs() < 1e-12 && (knn.std.unwrap() - 0.02f64.sqrt() * 0.2).abs() < 1e-12, "{knn:?}");
        assert_eq!(rows[1].knn.unwrap().std, None, "one value has no std");
        let md = markdown(&rows);
        assert!(md.contains("| unigrad | `form=loss` | 3 (1 failed) | 72.00 ± 2.83 | 82.00 ± 2.83 |"), "{md}");
        let csv = csv(&rows);
        assert_eq!(csv.lines().count(), 3);
        assert!(csv.lines().nth(2).unwrap().starts_with("unigrad,\"form=gradient\",1,0,0.6,,"), "{csv}");
        let svg = svg(&rows);
        assert_eq!(svg.matches("<rect x=").count(), 4, "kNN and linear bars of two rows");
        assert_eq!(svg.matches("stroke=\"black\"").count(), 2, "whiskers where there is a std");
    }
}
