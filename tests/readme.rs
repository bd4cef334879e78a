//! The README's tour, run as written, so that it cannot go stale: every ```` ```ssl FILE ```` block is written to a
//! scratch directory, and every ```` ```console ```` block's `$ ` commands run there (in `sh`, with this build's
//! `ssl-lang` first on the PATH and the repository's `data/` beside them), in document order; each command's
//! output — stdout, then stderr — must match the lines printed under it, where a line `...` stands for any number
//! of lines and `[..]` inside a line for any text (timings, and digits that rounding may change between CPUs).

use std::path::Path;
use std::process::Command;

/// A fenced block of the README: its info string and its lines.
struct Block {
    info: String,
    lines: Vec<String>,
}

fn blocks(text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    for line in text.lines() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(info)) => open = Some(Block { info: info.trim().to_string(), lines: Vec::new() }),
            (Some(_), Some("")) => out.extend(open.take()),
            (Some(block), _) => block.lines.push(line.to_string()),
            (None, None) => {}
        }
    }
    out
}

/// Whether `line` matches `pattern`, where `[..]` in the pattern matches any text.
fn line_matches(pattern: &str, line: &str) -> bool {
    let pieces: Vec<&str> = pattern.split("[..]").collect();
    let [first, middle @ .., last] = pieces.as_slice() else { return pattern == line };
    let Some(mut rest) = line.strip_prefix(first) else { return false };
    for piece in middle {
        let Some(at) = rest.find(piece) else { return false };
        rest = &rest[at + piece.len()..];
    }
    rest.ends_with(last)
}

/// Whether the output lines match the expected ones, `...` matching any run of lines.
fn lines_match(expected: &[String], actual: &[&str]) -> bool {
    match expected.split_first() {
        None => actual.is_empty(),
        Some((e, rest)) if e == "..." => (0..=actual.len()).any(|skip| lines_match(rest, &actual[skip..])),
        Some((e, rest)) => actual.split_first().is_some_and(|(a, more)| line_matches(e, a) && lines_match(rest, more)),
    }
}

/// The commands of a console block, each with the lines expected from it.
fn commands(block: &Block) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for line in &block.lines {
        match (line.strip_prefix("$ "), out.last_mut()) {
            (Some(cmd), _) => out.push((cmd.to_string(), Vec::new())),
            (None, Some((_, expected))) => expected.push(line.clone()),
            (None, None) => panic!("a console block must start with a `$ ` command, got {line:?}"),
        }
    }
    out
}

#[test]
fn the_readme_tour_runs_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let dir = std::env::temp_dir().join(format!("ssl-readme-{}", std::process::id()));
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_ssl-lang"), bin.join("ssl-lang")).unwrap();
    std::os::unix::fs::symlink(root.join("data"), dir.join("data")).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut ran = 0;
    for block in blocks(&readme) {
        if let Some(file) = block.info.strip_prefix("ssl ") {
            std::fs::write(dir.join(file.trim()), block.lines.join("\n") + "\n").unwrap();
            continue;
        }
        if block.info != "console" {
            continue;
        }
        for (cmd, expected) in commands(&block) {
            let out = Command::new("sh")
                .args(["-c", &cmd])
                .current_dir(&dir)
                .env("PATH", &path)
                .env("NO_COLOR", "1")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
            let actual: Vec<&str> = text.lines().map(str::trim_end).collect();
            let expected: Vec<String> = expected.iter().map(|l| l.trim_end().to_string()).collect();
            assert!(
                lines_match(&expected, &actual),
                "README command `{cmd}` printed\n{text}\nwhere the README shows\n{}",
                expected.join("\n")
            );
            ran += 1;
        }
    }
    assert!(ran >= 5, "the tour's commands were not found in the README ({ran} ran)");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_matcher_accepts_wildcards_and_refuses_differences() {
    let e = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(lines_match(&e(&["a [..] c", "...", "z"]), &["a b c", "x", "y", "z"]));
    assert!(lines_match(&e(&["...", "z"]), &["z"]));
    assert!(!lines_match(&e(&["a [..] c"]), &["a b d"]));
    assert!(!lines_match(&e(&["a", "b"]), &["a"]));
    assert!(!lines_match(&e(&["a"]), &["a", "extra"]));
    assert!(line_matches("[..]x[..]", "axb") && !line_matches("x[..]x", "x"));
}
