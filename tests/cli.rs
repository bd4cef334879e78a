//! The command line as a user runs it: exit codes, messages and the JSON format.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn ssl_lang(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ssl-lang")).args(args).output().expect("the binary runs")
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn path(relative: &str) -> String {
    root().join(relative).display().to_string()
}

/// A file of this test's own, under cargo's scratch directory.
fn scratch(name: &str, contents: &[u8]) -> PathBuf {
    let p = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&p, contents).expect("the scratch directory is writable");
    p
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn assert_no_panic(o: &Output) {
    assert!(!stderr(o).contains("panicked"), "the binary panicked: {}", stderr(o));
}

#[test]
fn check_passes_on_every_standard_objective() {
    let mut files: Vec<String> = std::fs::read_dir(root().join("objectives"))
        .expect("objectives/ exists")
        .map(|e| e.expect("an entry").path().display().to_string())
        .filter(|p| p.ends_with(".ssl"))
        .collect();
    files.sort();
    assert!(files.len() >= 7);
    let mut args = vec!["check"];
    args.extend(files.iter().map(String::as_str));
    let out = ssl_lang(&args);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert!(stderr(&out).is_empty(), "no diagnostics expected: {}", stderr(&out));
    assert_eq!(stdout(&out).lines().filter(|l| l.contains(": ok (0 errors, 0 warnings")).count(), files.len());
}

#[test]
fn check_fails_with_exit_1_on_errors() {
    let out = ssl_lang(&["check", &path("tests/ui/unknown_name_typo.ssl")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("ssl::name::unknown"), "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains("did you mean `tau`?"));
    assert!(stdout(&out).contains("FAILED (1 error, 0 warnings"), "stdout: {}", stdout(&out));
}

#[test]
fn check_reports_every_file_and_the_worst_exit_code() {
    let good = path("objectives/simclr.ssl");
    let bad = path("tests/ui/dot_of_matrix.ssl");
    let out = ssl_lang(&["check", &bad, &good]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("simclr.ssl: ok"), "the good file is still checked: {}", stdout(&out));
}

#[test]
fn check_exits_2_on_a_missing_file() {
    let missing = root().join("tests/ui/no_such_file.ssl");
    let out = ssl_lang(&["check", &missing.display().to_string()]);
    assert_eq!(out.status.code(), Some(2));
    assert_no_panic(&out);
    let err = stderr(&out);
    assert!(err.contains("cannot read") && err.contains("no_such_file.ssl"), "unclear message: {err}");
}

#[test]
fn deny_warnings_fails_a_warning_only_file() {
    let file = path("tests/ui/unused_param.ssl");
    let out = ssl_lang(&["check", &file]);
    assert_eq!(out.status.code(), Some(0), "warnings alone pass: {}", stderr(&out));
    assert!(stderr(&out).contains("ssl::warn::unused"));
    let out = ssl_lang(&["check", "--deny-warnings", &file]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("FAILED (0 errors, 2 warnings"), "stdout: {}", stdout(&out));
}

#[test]
fn json_format_prints_one_object_per_diagnostic() {
    let file = path("tests/ui/unknown_name_typo.ssl");
    let out = ssl_lang(&["check", "--format", "json", &file]);
    assert_eq!(out.status.code(), Some(1));
    let lines: Vec<String> = stdout(&out).lines().map(String::from).collect();
    assert_eq!(lines.len(), 1, "one diagnostic, one line, nothing else on stdout: {lines:?}");
    let v: serde_json::Value = serde_json::from_str(&lines[0]).expect("each line is JSON");
    let object = v.as_object().expect("a JSON object");
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["code", "column", "file", "help", "line", "message", "severity", "span"]);
    assert_eq!(v["code"], "ssl::name::unknown");
    assert_eq!(v["severity"], "error");
    assert_eq!(v["message"], "unknown name `tua`");
    assert_eq!(v["file"], file.as_str());
    // `tua` on line 9: `    loss = -dot(u1, t2) / tua + ...`
    assert_eq!(v["line"], 9);
    assert_eq!(v["column"], 27);
    assert_eq!(v["span"]["length"], 3);
    let source = std::fs::read_to_string(&file).expect("readable");
    let offset = v["span"]["offset"].as_u64().expect("an offset") as usize;
    assert_eq!(&source[offset..offset + 3], "tua");
    assert_eq!(v["help"], "did you mean `tau`?");
}

#[test]
fn json_format_includes_warnings() {
    let out = ssl_lang(&["check", "--format", "json", &path("tests/ui/unused_param.ssl")]);
    assert_eq!(out.status.code(), Some(0));
    let values: Vec<serde_json::Value> =
        stdout(&out).lines().map(|l| serde_json::from_str(l).expect("each line is JSON")).collect();
    assert_eq!(values.len(), 2);
    assert!(values.iter().all(|v| v["severity"] == "warning" && v["code"] == "ssl::warn::unused"));
    assert_eq!((&values[0]["line"], &values[1]["line"]), (&5.into(), &8.into()));
}

#[test]
fn non_utf8_file_is_an_encoding_error() {
    let file = scratch("latin1.ssl", b"objective caf\xe9 {\n    positive = -t2\n}\n");
    let out = ssl_lang(&["check", &file.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert_no_panic(&out);
    assert!(stderr(&out).contains("ssl::syntax::encoding"), "stderr: {}", stderr(&out));
}

#[test]
fn explain_with_a_wrong_objective_name_exits_2() {
    let source = "objective one {\n    positive = -t2\n    negative = sum(b.u1 for b in batch) / N\n}\n\n\
                  objective two {\n    param rho = 0.99 in [0, 1)\n    state F = ema(rho, mean(outer(t, t) for t in targets))\n    positive = -t2\n    negative = F @ u1\n}\n";
    let file = scratch("two_objectives.ssl", source.as_bytes()).display().to_string();
    let out = ssl_lang(&["explain", &file, "--objective", "two"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert!(stdout(&out).starts_with("objective two  (correlation-matrix family)"));
    let out = ssl_lang(&["explain", &file, "--objective", "three"]);
    assert_eq!(out.status.code(), Some(2));
    assert_no_panic(&out);
    let err = stderr(&out);
    assert!(err.contains("no objective `three`") && err.contains("one, two"), "unclear message: {err}");
}

#[test]
fn explain_refuses_a_file_with_errors() {
    let out = ssl_lang(&["explain", &path("tests/ui/cyclic_lets.ssl")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("ssl::name::cycle"));
    assert!(stdout(&out).is_empty());
}

/// `--device`: a misspelt name and CUDA asked of a build without the `cuda` feature are coded errors (exit 2) that
/// say what to do, for every command that takes the option; `cuda:N` parses.
#[test]
fn device_errors_are_coded() {
    let unigrad = path("objectives/unigrad.ssl");
    for args in [
        vec!["train", unigrad.as_str(), "--max-steps", "1"],
        vec!["grad", unigrad.as_str(), "--inputs", "missing.safetensors", "--out", "x.safetensors"],
        vec!["eval", "runs/none"],
        vec!["bench", "train", unigrad.as_str()],
        vec!["verify", unigrad.as_str()],
    ] {
        let run = |device: &str| {
            let mut a = args.clone();
            a.extend(["--device", device]);
            ssl_lang(&a)
        };
        let out = run("gpu0");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("ssl::device::name") && stderr(&out).contains("cuda:N"), "{}", stderr(&out));
        if !cfg!(feature = "cuda") {
            let out = run("cuda:1");
            assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
            assert!(stderr(&out).contains("ssl::device::not_built"), "{}", stderr(&out));
            assert!(stderr(&out).contains("--features cuda"), "{}", stderr(&out));
        }
        assert_no_panic(&out);
    }
    assert_eq!(ssl_lang::commands::device::parse("cuda:3").ok(), Some(Some(3)));
    assert_eq!(ssl_lang::commands::device::parse("cuda").ok(), Some(Some(0)));
    assert_eq!(ssl_lang::commands::device::parse("cpu").ok(), Some(None));
    assert!(ssl_lang::commands::device::parse("cuda:-1").is_err());
}

/// Every command's `--help` (each leaf of the command tree, read from the definitions, so a new command is covered)
/// ends with an example of its use.
#[test]
fn every_command_help_has_an_example() {
    fn leaves(cmd: &clap::Command, path: Vec<String>, out: &mut Vec<Vec<String>>) {
        let subs: Vec<&clap::Command> = cmd.get_subcommands().filter(|c| c.get_name() != "help").collect();
        if subs.is_empty() {
            out.push(path);
            return;
        }
        for sub in subs {
            let mut p = path.clone();
            p.push(sub.get_name().to_string());
            leaves(sub, p, out);
        }
    }
    let mut commands = Vec::new();
    leaves(&<ssl_lang::cli::Cli as clap::CommandFactory>::command(), Vec::new(), &mut commands);
    assert!(commands.len() >= 11, "{commands:?}");
    for command in commands {
        let out =
            std::process::Command::new(env!("CARGO_BIN_EXE_ssl-lang")).args(&command).arg("--help").output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && help.contains("Example"),
            "`ssl-lang {} --help` has no example:\n{help}",
            command.join(" ")
        );
    }
}

/// `ssl-lang completions bash` prints a script bash accepts (`bash -n`) that completes every command.
#[test]
fn completions_are_a_valid_bash_script() {
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_ssl-lang")).args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success());
    let script = String::from_utf8_lossy(&out.stdout).into_owned();
    for command in ["check", "explain", "verify", "grad", "train", "eval", "report", "export", "sweep", "bench"] {
        assert!(script.contains(&format!("ssl__lang__subcmd__{command}")), "no completion for {command}");
    }
    let file = std::env::temp_dir().join(format!("ssl-completions-{}.bash", std::process::id()));
    std::fs::write(&file, &script).unwrap();
    let check = std::process::Command::new("bash").arg("-n").arg(&file).output().unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let bad =
        std::process::Command::new(env!("CARGO_BIN_EXE_ssl-lang")).args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2), "an unknown shell is a usage error");
}
