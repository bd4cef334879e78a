//! `ssl-lang grad` end to end: a safetensors file in, the plan's gradients out; bad inputs are
//! coded errors with exit 1, never panics.

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use std::collections::HashMap;
use std::process::Command;

fn run(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ssl-lang")).args(args).output().expect("binary runs")
}

#[test]
fn grad_writes_the_plans_gradients_and_states() {
    let dir = std::env::temp_dir().join(format!("ssl-grad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = ssl_lang::verify::random_features(&mut rand::rngs::StdRng::seed_from_u64(3), 6, 4).unwrap();
    let mut inputs: HashMap<String, Tensor> = HashMap::new();
    for (name, t) in [("u1", &f.u1), ("u2", &f.u2), ("t1", &f.t1), ("t2", &f.t2)] {
        inputs.insert(name.into(), t.to_dtype(DType::F32).unwrap());
    }
    let input_path = dir.join("in.safetensors");
    candle_core::safetensors::save(&inputs, &input_path).unwrap();
    let out_path = dir.join("out.safetensors");
    let objective = concat!(env!("CARGO_MANIFEST_DIR"), "/objectives/unigrad.ssl");
    let out = run(&["grad", objective, "--inputs", input_path.to_str().unwrap(), "--out", out_path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let written = candle_core::safetensors::load(&out_path, &Device::Cpu).unwrap();
    let mut names: Vec<&str> = written.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(names, ["F", "g1", "g2", "loss"]);

    // Same computation in-process, from the f32-rounded inputs.
    let (program, _) = ssl_lang::compile(&std::fs::read_to_string(objective).unwrap());
    let plan = ssl_lang::plan::Plan::new(&program.objectives[0]);
    let back = |n: &str| inputs[n].to_dtype(DType::F64).unwrap();
    let features = ssl_lang::plan::Features { u1: back("u1"), u2: back("u2"), t1: back("t1"), t2: back("t2") };
    let g = plan.step(&features, &mut plan.initial_state()).unwrap();
    let err = ssl_lang::verify::relative_error(&written["g1"], &g.g1).unwrap();
    assert!(err < 1e-6, "g1 differs by {err:e}");

    // A missing tensor is a coded error.
    let mut partial = inputs.clone();
    partial.remove("t2");
    candle_core::safetensors::save(&partial, &input_path).unwrap();
    let out = run(&["grad", objective, "--inputs", input_path.to_str().unwrap(), "--out", out_path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ssl::grad::missing"));

    // A file that is not safetensors is a coded error too.
    std::fs::write(&input_path, b"not a tensor file").unwrap();
    let out = run(&["grad", objective, "--inputs", input_path.to_str().unwrap(), "--out", out_path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ssl::grad::read"));
    std::fs::remove_dir_all(&dir).ok();
}
