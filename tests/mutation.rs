//! Robustness: thousands of broken variants of the standard objectives (token deletion, insertion,
//! swap, duplication, truncation, random bytes, deep nesting, long chains, huge literals) must each
//! compile to diagnostics or a clean result — never a panic, never a hang. The per-input bound
//! (2 s, on inputs that take well under a millisecond) exists to catch exponential backtracking.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};

const PER_INPUT_BOUND: Duration = Duration::from_secs(2);

fn standard_sources() -> Vec<(String, String)> {
    // The standard objectives and the examples (exclusions, nearest, where, max, inv_sqrtm: the second edition).
    let mut out: Vec<(String, String)> = ["objectives", "examples"]
        .iter()
        .flat_map(|dir| std::fs::read_dir(format!("{}/{dir}", env!("CARGO_MANIFEST_DIR"))).expect("the folder exists"))
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "ssl"))
        .map(|p| (p.display().to_string(), std::fs::read_to_string(&p).expect("readable objective")))
        .collect();
    out.sort();
    assert!(out.len() >= 11, "the seven standard objectives and the four examples are present");
    // Each one with a per-sample loss also without its written form, so that mutants exercise the derivation.
    let derived: Vec<(String, String)> = out
        .iter()
        .filter(|(_, s)| s.lines().any(|l| l.trim_start().starts_with("loss")))
        .map(|(name, s)| {
            let kept = s.lines().filter(|l| {
                !["positive", "negative", "balance", "weight"].iter().any(|k| l.trim_start().starts_with(k))
            });
            (format!("{name} (form derived from its loss)"), kept.collect::<Vec<_>>().join("\n"))
        })
        // W-MSE's whitened pull ranges over the batch: its loss derives no pull term, so it keeps its written form.
        .filter(|(_, s)| ssl_lang::compile(s).1.is_empty())
        .collect();
    assert!(derived.len() >= 7, "{} loss-only variants", derived.len());
    out.extend(derived);
    out
}

/// Splits source into tokens: words, numbers, single punctuation characters and whitespace runs.
fn tokens(source: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = source;
    while let Some(c) = rest.chars().next() {
        let len = if c.is_alphanumeric() || c == '_' || c == '.' {
            rest.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.')).unwrap_or(rest.len())
        } else if c.is_whitespace() {
            rest.find(|c: char| !c.is_whitespace()).unwrap_or(rest.len())
        } else {
            c.len_utf8()
        };
        out.push(&rest[..len]);
        rest = &rest[len..];
    }
    out
}

const INSERTS: &[&str] = &[
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    "=",
    "+",
    "-",
    "*",
    "/",
    "@",
    "++",
    ".",
    "for",
    "in",
    "let",
    "state",
    "param",
    "weight",
    "objective",
    "train",
    "u1",
    "t2",
    "targets",
    "batch",
    "softmax",
    "ema",
    "fifo",
    "sum",
    "1e999",
    "-0",
    "0.5",
    "\"",
    "#",
    "//",
    "\n",
    "inf",
    "N",
    "D",
    "x",
    "b.u1",
    "true",
];

fn mutate(rng: &mut StdRng, source: &str) -> String {
    let toks = tokens(source);
    let mut toks: Vec<String> = toks.into_iter().map(String::from).collect();
    match rng.gen_range(0..9) {
        0 if !toks.is_empty() => {
            let i = rng.gen_range(0..toks.len());
            toks.remove(i);
        }
        1 => {
            let i = rng.gen_range(0..=toks.len());
            toks.insert(i, INSERTS[rng.gen_range(0..INSERTS.len())].to_string());
        }
        2 if toks.len() > 1 => {
            let (i, j) = (rng.gen_range(0..toks.len()), rng.gen_range(0..toks.len()));
            toks.swap(i, j);
        }
        3 if !toks.is_empty() => {
            let i = rng.gen_range(0..toks.len());
            let t = toks[i].clone();
            toks.insert(i, t);
        }
        4 => {
            let cut = rng.gen_range(0..=source.len());
            let mut cut = cut;
            while !source.is_char_boundary(cut) {
                cut -= 1;
            }
            return source[..cut].to_string();
        }
        5 => {
            // Random bytes spliced in, decoded lossily as the CLI would refuse them otherwise.
            let mut bytes = source.as_bytes().to_vec();
            for _ in 0..rng.gen_range(1..8) {
                let i = rng.gen_range(0..=bytes.len());
                bytes.insert(i, rng.gen());
            }
            return String::from_utf8_lossy(&bytes).into_owned();
        }
        6 => {
            let i = rng.gen_range(0..=toks.len());
            let huge = ["1e400", "99999999999999999999999999999999999", "1e-400", "0.000000000000000000000001e-330"];
            toks.insert(i, huge[rng.gen_range(0..huge.len())].to_string());
        }
        7 => {
            for _ in 0..rng.gen_range(2..6) {
                if toks.is_empty() {
                    break;
                }
                let i = rng.gen_range(0..toks.len());
                toks.remove(i);
            }
        }
        _ => {
            let i = rng.gen_range(0..=toks.len());
            let j = rng.gen_range(0..=toks.len());
            let (i, j) = (i.min(j), i.max(j));
            toks.drain(i..j);
        }
    }
    toks.concat()
}

fn compile_checked(label: &str, source: &str) -> usize {
    let start = Instant::now();
    let result = std::panic::catch_unwind(|| ssl_lang::compile(source));
    let elapsed = start.elapsed();
    let (program, diagnostics) = result.unwrap_or_else(|_| panic!("compiler panicked on {label}:\n{source}"));
    // What checks without errors lowers (derived forms included) without a panic.
    let clean = !ssl_lang::diagnostic::has_errors(&diagnostics);
    for o in program.objectives.iter().filter(|_| clean) {
        std::panic::catch_unwind(|| ssl_lang::ir::lower(o))
            .unwrap_or_else(|_| panic!("lowering panicked on {label}, objective {}:\n{source}", o.name));
    }
    assert!(elapsed < PER_INPUT_BOUND, "{label} took {elapsed:?}:\n{source}");
    for d in &diagnostics {
        let s = d.span();
        assert!(s.start <= s.end && s.end <= source.len(), "{label}: span {s:?} outside the source");
    }
    diagnostics.len()
}

#[test]
fn mutated_standard_objectives_never_panic_or_hang() {
    let mut rng = StdRng::seed_from_u64(0x5551);
    let mut inputs = 0;
    let mut with_diagnostics = 0;
    for (name, source) in standard_sources() {
        assert_eq!(compile_checked(&name, &source), 0, "{name} checks clean");
        for k in 0..700 {
            let mutant = mutate(&mut rng, &source);
            inputs += 1;
            if compile_checked(&format!("{name} mutant {k}"), &mutant) > 0 {
                with_diagnostics += 1;
            }
        }
    }
    assert!(inputs >= 13_000);
    // Most single-token mutations break something; if almost none did, the mutator is broken.
    assert!(with_diagnostics * 2 > inputs, "{with_diagnostics} of {inputs} mutants had diagnostics");
}

#[test]
fn deep_nesting_and_long_chains_are_diagnostics() {
    let cases = [
        format!("objective a {{ positive = {}t2{} }}", "(".repeat(10_000), ")".repeat(10_000)),
        format!("objective a {{ positive = {}t2 }}", "-".repeat(10_000)),
        format!("objective a {{ positive = t2{} }}", " + t2".repeat(10_000)),
        format!("objective a {{ positive = {}t2{} }}", "[".repeat(5_000), "]".repeat(5_000)),
        format!("objective a {{ positive = {}t2 }}", "sum(".repeat(3_000)),
        format!("objective a {{ positive = t2{} }}", ".u1".repeat(10_000)),
        "objective a { positive = -t2 }\n".repeat(2_000),
    ];
    for (i, source) in cases.iter().enumerate() {
        let (_, diagnostics) = ssl_lang::compile(source);
        assert!(!diagnostics.is_empty(), "case {i} should be rejected");
    }
    // Nesting below the limit is accepted.
    let ok = format!("objective a {{ positive = {}-t2{} }}", "(".repeat(50), ")".repeat(50));
    let (program, diagnostics) = ssl_lang::compile(&ok);
    assert!(diagnostics.iter().all(|d| d.code == ssl_lang::diagnostic::Code::CollapseRisk), "{diagnostics:?}");
    assert_eq!(program.objectives.len(), 1);
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = StdRng::seed_from_u64(7);
    for k in 0..2_000 {
        let len = rng.gen_range(0..400);
        let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        compile_checked(&format!("random input {k}"), &String::from_utf8_lossy(&bytes));
    }
}
