//! The cells of a sweep: the cross product of files, `--grid KEY=V1,V2,...` values and seeds, each with the name of
//! its run directory. Pure: the same arguments give the same cells in the same order, so a rerun finds its cells.

use crate::error::{Error, ErrorCode};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One `--grid` axis: a key and the values it takes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Axis {
    /// What `--set` overrides, e.g. `form` or `unigrad.lambda`.
    pub key: String,
    /// Its values, in the order given.
    pub values: Vec<String>,
}

/// One training of the sweep.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cell {
    /// Its run directory's name under the sweep's directory.
    pub name: String,
    /// The .ssl file.
    pub file: PathBuf,
    /// The grid's `KEY=VALUE` settings of this cell, in axis order.
    pub settings: Vec<(String, String)>,
    /// The seed, when the sweep gives seeds.
    pub seed: Option<u64>,
}

impl Cell {
    /// Its group: the cells that differ only in their seed.
    pub fn group(&self) -> (PathBuf, Vec<(String, String)>) {
        (self.file.clone(), self.settings.clone())
    }

    /// The `--set` arguments it trains with: the sweep's own first, then the grid's, then the seed.
    pub fn sets(&self, common: &[String]) -> Vec<String> {
        let mut sets = common.to_vec();
        sets.extend(self.settings.iter().map(|(k, v)| format!("{k}={v}")));
        sets.extend(self.seed.map(|s| format!("seed={s}")));
        sets
    }
}

/// Parses one `--grid KEY=V1,V2,...`: values split at commas outside brackets, so `cosine(0.99, 1.0)` is one value.
pub fn axis(arg: &str) -> Result<Axis, Error> {
    let bad = |why: &str| {
        Error::new(ErrorCode::SweepGrid, format!("`--grid {arg}`: {why}"))
            .help("write `--grid KEY=V1,V2,...`, e.g. `--grid form=gradient,loss` or `--grid momentum=none,cosine(0.99, 1.0)`")
    };
    let Some((key, values)) = arg.split_once('=') else { return Err(bad("no `=`")) };
    let key = key.trim();
    if key.is_empty() {
        return Err(bad("no key before `=`"));
    }
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in values.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' if depth == 0 => {
                out.push(values[start..i].trim().to_string());
                start = i + 1;
            }
            _ => {}
        }
        if depth < 0 {
            return Err(bad("a closing bracket without its opening one"));
        }
    }
    if depth != 0 {
        return Err(bad("an unclosed bracket"));
    }
    out.push(values[start..].trim().to_string());
    if out.iter().any(String::is_empty) {
        return Err(bad("an empty value"));
    }
    Ok(Axis { key: key.to_string(), values: out })
}

/// Every cell: files outermost, then the axes in order (the first varies slowest), then the seeds.
pub fn cells(files: &[PathBuf], axes: &[Axis], seeds: &[u64]) -> Vec<Cell> {
    let mut combos: Vec<Vec<(String, String)>> = vec![vec![]];
    for a in axes {
        combos = combos
            .into_iter()
            .flat_map(|c| {
                a.values.iter().map(move |v| {
                    let mut c = c.clone();
                    c.push((a.key.clone(), v.clone()));
                    c
                })
            })
            .collect();
    }
    let seeds: Vec<Option<u64>> = if seeds.is_empty() { vec![None] } else { seeds.iter().copied().map(Some).collect() };
    let mut out = Vec::new();
    for file in files {
        for settings in &combos {
            for &seed in &seeds {
                let name = cell_name(file, settings, seed);
                out.push(Cell { name, file: file.clone(), settings: settings.clone(), seed });
            }
        }
    }
    out
}

/// `unigrad-form=loss-momentum=none-s0`: the file's stem, each setting and the seed, with anything that is not a
/// letter, digit, `.`, `=` or `-` replaced by `_` (one directory name, whatever the values hold).
fn cell_name(file: &Path, settings: &[(String, String)], seed: Option<u64>) -> String {
    let stem = file.file_stem().map_or("objective".into(), |s| s.to_string_lossy().into_owned());
    let mut name = stem;
    for (k, v) in settings {
        name.push_str(&format!("-{k}={v}"));
    }
    if let Some(s) = seed {
        name.push_str(&format!("-s{s}"));
    }
    name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '=' | '-') { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_split_at_top_level_commas_only() {
        let a = axis("momentum=none, cosine(0.99, 1.0),[1, 2]").unwrap();
        assert_eq!(a.key, "momentum");
        assert_eq!(a.values, ["none", "cosine(0.99, 1.0)", "[1, 2]"]);
        for bad in ["momentum", "=a,b", "k=a,,b", "k=cosine(0.99", "k=a)"] {
            assert_eq!(axis(bad).unwrap_err().code, ErrorCode::SweepGrid, "{bad}");
        }
    }

    #[test]
    fn cells_are_the_cross_product_in_a_stable_order() {
        let files = [PathBuf::from("objectives/simclr.ssl"), PathBuf::from("x/unigrad.ssl")];
        let axes = [axis("form=gradient,loss").unwrap(), axis("momentum=none,cosine(0.99, 1.0)").unwrap()];
        let cells = cells(&files, &axes, &[0, 1]);
        assert_eq!(cells.len(), 2 * 2 * 2 * 2);
        assert_eq!(cells[0].name, "simclr-form=gradient-momentum=none-s0");
        assert_eq!(cells[3].name, "simclr-form=gradient-momentum=cosine_0.99__1.0_-s1");
        assert_eq!(cells[15].name, "unigrad-form=loss-momentum=cosine_0.99__1.0_-s1");
        let names: std::collections::HashSet<&str> = cells.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names.len(), cells.len(), "names are unique");
        assert_eq!(
            cells[3].sets(&["batch=64".into()]),
            ["batch=64", "form=gradient", "momentum=cosine(0.99, 1.0)", "seed=1"]
        );
        let single = super::cells(&files[..1], &[], &[]);
        assert_eq!((single.len(), single[0].name.as_str(), single[0].seed), (1, "simclr", None));
    }
}
