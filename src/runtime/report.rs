//! `report.html`: what a run did, on one self-contained page — the results beside their baselines, the health of
//! the features at the end, the curves (inline SVG), the objective's unified form and the resolved recipe — or, for
//! several runs, a table comparing them followed by each one's page. No script, no external file: it opens anywhere.

use super::plot;
use super::records::{Baseline, EndRecord, EvalRecord, Record, StepRecord};
use super::run::RunConfig;
use std::fmt::Write;

/// One run as the report shows it.
pub struct RunReport<'a> {
    /// The run's name (its directory).
    pub name: String,
    /// Its `config.json`.
    pub config: &'a RunConfig,
    /// Its `metrics.jsonl`.
    pub records: &'a [Record],
    /// `explain`'s text of its objective (or why it cannot be given).
    pub unified_form: &'a str,
}

/// What a run's records say, gathered once for the tables.
struct Summary<'a> {
    baseline: Option<&'a Baseline>,
    last_eval: Option<&'a EvalRecord>,
    best_eval: Option<&'a EvalRecord>,
    last_step: Option<&'a StepRecord>,
    end: Option<&'a EndRecord>,
}

impl<'a> Summary<'a> {
    fn of(records: &'a [Record]) -> Self {
        let mut s = Summary { baseline: None, last_eval: None, best_eval: None, last_step: None, end: None };
        for r in records {
            match r {
                Record::Baseline(b) => s.baseline = Some(b),
                Record::Eval(e) => {
                    s.last_eval = Some(e);
                    if s.best_eval.is_none_or(|b| e.knn_top1 > b.knn_top1) {
                        s.best_eval = Some(e);
                    }
                }
                Record::Step(st) => s.last_step = Some(st),
                Record::End(e) => s.end = Some(e),
            }
        }
        s
    }

    /// The features' state at the last logged step, as a word and a CSS class.
    fn verdict(&self) -> (&'static str, &'static str) {
        match self.last_step {
            None => ("no step logged", "unknown"),
            Some(s) if s.z_std_online.is_nan() || s.z_std_online < 0.1 * s.z_std_healthy => ("collapsed", "bad"),
            Some(s) if s.z_std_online < 0.5 * s.z_std_healthy => ("narrow", "warn"),
            Some(_) => ("healthy", "good"),
        }
    }
}

/// The page for `runs`: one run's report, or a comparison of several followed by each one's.
pub fn html(runs: &[RunReport]) -> Result<String, String> {
    let title = match runs {
        [one] => format!("ssl-lang run {}", one.name),
        _ => format!("ssl-lang: {} runs compared", runs.len()),
    };
    let mut body = String::new();
    if runs.len() > 1 {
        comparison(&mut body, runs);
    }
    for run in runs {
        section(&mut body, run)?;
    }
    Ok(page(&title, &body))
}

/// A self-contained page titled `title` around `body` (HTML), in the reports' one style: a run's, several runs'
/// and a sweep's pages look alike.
pub fn page(title: &str, body: &str) -> String {
    let title = escape(title);
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{title}</h1>\n{body}</body>\n</html>\n"
    )
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em auto;max-width:1100px;color:#222}\
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}\
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}pre{background:#f7f7f7;padding:10px;overflow-x:auto}\
.good{color:#1a7f37;font-weight:bold}.warn{color:#b35900;font-weight:bold}.bad{color:#c62828;font-weight:bold}\
.unknown{color:#777}.curves{display:flex;flex-wrap:wrap;gap:10px}.curves svg{width:540px;height:auto;border:1px solid #ddd}\
section{border-top:2px solid #444;margin-top:2em}";

fn comparison(out: &mut String, runs: &[RunReport]) {
    out.push_str("<h2>Comparison</h2>\n<table>\n<tr><th>run</th><th>objective</th><th>steps</th><th>final kNN</th><th>best kNN</th><th>raw-pixel kNN</th><th>features</th><th>z-std / healthy</th><th>effective rank</th><th>pairs/s</th></tr>\n");
    for run in runs {
        let s = Summary::of(run.records);
        let (word, class) = s.verdict();
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{class}\">{word}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&run.name),
            escape(&run.config.objective),
            s.last_step.map_or("-".into(), |st| st.step.to_string()),
            percent(s.last_eval.map(|e| e.knn_top1)),
            percent(s.best_eval.map(|e| e.knn_top1)),
            percent(s.baseline.map(|b| b.raw_pixel_knn)),
            number(s.last_step.map(|st| st.z_std_online / st.z_std_healthy), 2),
            number(s.last_step.map(|st| st.effective_rank), 1),
            number(s.last_step.map(|st| st.pairs_per_s), 1),
        );
    }
    out.push_str("</table>\n");
}

fn section(out: &mut String, run: &RunReport) -> Result<(), String> {
    let c = run.config;
    let s = Summary::of(run.records);
    let _ = writeln!(
        out,
        "<section>\n<h2>{}</h2>\n<p>objective <b>{}</b> · {} · {} training and {} test images · seed {} · {} threads · ssl-lang {}{}</p>",
        escape(&run.name),
        escape(&c.objective),
        escape(&c.data),
        c.train_images,
        c.test_images,
        c.seed,
        c.threads,
        escape(&c.version),
        if s.end.is_some() { "" } else { " · <span class=\"warn\">not finished (interrupted, stopped or still running)</span>" }
    );

    out.push_str("<h3>Results</h3>\n<table>\n<tr><th>measure</th><th>value</th></tr>\n");
    let row = |out: &mut String, name: &str, value: String| {
        let _ = writeln!(out, "<tr><td>{}</td><td>{}</td></tr>", escape(name), escape(&value));
    };
    row(out, "raw-pixel kNN top-1 (baseline)", percent(s.baseline.map(|b| b.raw_pixel_knn)));
    row(out, "random-init encoder kNN top-1 (baseline)", percent(s.baseline.map(|b| b.random_init_knn)));
    let at = |e: Option<&EvalRecord>| e.map_or(String::new(), |e| format!(" (epoch {})", e.epoch));
    row(out, "final kNN top-1", format!("{}{}", percent(s.last_eval.map(|e| e.knn_top1)), at(s.last_eval)));
    row(out, "best kNN top-1", format!("{}{}", percent(s.best_eval.map(|e| e.knn_top1)), at(s.best_eval)));
    if s.baseline.is_some_and(|b| b.raw_pixel_linear.is_some()) || s.end.is_some_and(|e| e.linear_top1.is_some()) {
        row(out, "raw-pixel linear probe top-1 (baseline)", percent(s.baseline.and_then(|b| b.raw_pixel_linear)));
        row(
            out,
            "random-init encoder linear probe top-1 (baseline)",
            percent(s.baseline.and_then(|b| b.random_init_linear)),
        );
        row(out, "final linear probe top-1", percent(s.end.and_then(|e| e.linear_top1)));
    }
    row(out, "steps done", s.last_step.map_or("-".into(), |st| st.step.to_string()));
    row(out, "pairs/s (last logged step)", number(s.last_step.map(|st| st.pairs_per_s), 1));
    row(out, "peak memory (MB)", number(s.end.and_then(|e| e.peak_rss_mb), 0));
    out.push_str("</table>\n");

    let (word, class) = s.verdict();
    let _ = writeln!(out, "<h3>Health at the last logged step: <span class=\"{class}\">{word}</span></h3>");
    if let Some(st) = s.last_step {
        out.push_str("<table>\n<tr><th>monitor</th><th>value</th><th>reads</th></tr>\n");
        let rows = [
            (
                "z-std of the online features",
                number(Some(st.z_std_online), 4),
                format!("healthy ≈ 1/√D = {:.4}; collapse below a tenth of it", st.z_std_healthy),
            ),
            ("z-std of the target features", number(Some(st.z_std_target), 4), "as the online one".into()),
            (
                "effective rank",
                number(Some(st.effective_rank), 1),
                "how many directions the batch's features use (at most D)".into(),
            ),
            (
                "positive similarity",
                number(Some(st.pos_sim), 4),
                "mean cosine of the two views' features; 1 alone is no proof of learning".into(),
            ),
            ("loss", number(st.loss, 4), "where the objective has one".into()),
            ("learning rate", number(Some(st.lr), 5), String::new()),
            ("target momentum", number(st.momentum, 5), "none without a momentum target".into()),
        ];
        for (name, value, reads) in rows {
            let _ = writeln!(out, "<tr><td>{}</td><td>{}</td><td>{}</td></tr>", escape(name), value, escape(&reads));
        }
        out.push_str("</table>\n");
    }

    out.push_str("<h3>Curves</h3>\n<div class=\"curves\">\n");
    for (_, svg) in plot::svgs(run.records)? {
        // Inline SVG takes no XML declaration.
        let body = svg.find("<svg").map_or(svg.as_str(), |i| &svg[i..]);
        out.push_str(body);
        out.push('\n');
    }
    out.push_str("</div>\n");

    let _ = writeln!(out, "<h3>The objective's unified form</h3>\n<pre>{}</pre>", escape(run.unified_form));
    let _ = writeln!(out, "<h3>The resolved recipe</h3>\n<pre>{}</pre>", escape(&c.recipe_text));
    if !c.overrides.is_empty() {
        let _ = writeln!(out, "<p>overrides: <code>{}</code></p>", escape(&c.overrides.join("; ")));
    }
    let _ = writeln!(
        out,
        "<details><summary>objective source</summary>\n<pre>{}</pre></details>\n</section>",
        escape(&c.source)
    );
    Ok(())
}

fn percent(v: Option<f64>) -> String {
    v.filter(|v| v.is_finite()).map_or("-".into(), |v| format!("{:.2} %", v * 100.0))
}

fn number(v: Option<f64>, decimals: usize) -> String {
    v.filter(|v| v.is_finite()).map_or("-".into(), |v| format!("{v:.decimals$}"))
}

/// Text as HTML: the five characters that could open markup, escaped.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn markup_is_escaped() {
        assert_eq!(escape("<script>&\"'"), "&lt;script&gt;&amp;&quot;&#39;");
    }
}
