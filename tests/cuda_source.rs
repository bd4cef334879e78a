//! The CUDA source of the fused contrastive kernel (src/kernels/cuda/), generated from the IR's kernels of every
//! standard objective and example: snapshotted here on any machine, and compiled to PTX, with the max-pooling
//! kernels, by the toolkit's compiler when `CUDA_HOME` names one (scripts/cuda-env.sh sets it up without a GPU), so
//! a kernel that does not compile is caught before it reaches a GPU. CI has no toolkit: there the compile step says it is skipped.

use ssl_lang::backend::{fused::part_kinds, Backend};
use ssl_lang::ir::cost::Sizes;
use ssl_lang::ir::fuse::Kernel;
use ssl_lang::kernels::cuda::{max_pool_names, max_pool_source, softmax_sum_name, softmax_sum_source, Float, PartKind};
use ssl_lang::plan::Plan;
use std::collections::BTreeMap;

/// Every distinct kernel the fused plans of the standard objectives and the examples use, by entry point.
fn kernels() -> BTreeMap<String, (Vec<PartKind>, Float)> {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut files: Vec<_> = ["objectives", "examples"]
        .iter()
        .flat_map(|dir| std::fs::read_dir(format!("{root}/{dir}")).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "ssl"))
        .collect();
    files.sort();
    let mut found = BTreeMap::new();
    for file in files {
        let (program, _) = ssl_lang::compile(&std::fs::read_to_string(&file).unwrap());
        for o in &program.objectives {
            let plan = Plan::with_backend(o, Backend::Fused, &Sizes { n: 256, d: 128, fifo: vec![4096] });
            for kernel in plan.kernels.values() {
                if let Kernel::SoftmaxSum { parts, .. } = kernel {
                    let parts = part_kinds(&plan.lowered.graph, parts);
                    for float in [Float::F32, Float::F64] {
                        found.insert(softmax_sum_name(&parts, float), (parts.clone(), float));
                    }
                }
            }
        }
    }
    found
}

#[test]
fn the_contrastive_objectives_generate_their_kernels() {
    let found = kernels();
    // MoCo: each sample's positive, then the queue's shared rows; SimCLR (and NNCLR): the batch's rows alone, the
    // positive among them. Both precisions of each.
    let kinds = |name: &str| found.get(name).map(|(parts, _)| parts.clone());
    assert_eq!(
        kinds("softmax_sum_item_rows_f32"),
        Some(vec![PartKind::PerSample, PartKind::Rows]),
        "{:?}",
        found.keys()
    );
    assert_eq!(kinds("softmax_sum_rows_f64"), Some(vec![PartKind::Rows]), "{:?}", found.keys());
    assert_eq!(found.len(), 4, "two kernels in two precisions: {:?}", found.keys());
    let sources: String = found
        .iter()
        .filter(|(_, (_, float))| *float == Float::F32)
        .map(|(_, (parts, float))| softmax_sum_source(parts, *float))
        .collect::<Vec<_>>()
        .join("\n");
    insta::assert_snapshot!(sources);
}

#[test]
fn every_generated_kernel_compiles_to_ptx() {
    let Some(nvcc) = std::env::var_os("CUDA_HOME").map(|h| std::path::Path::new(&h).join("bin/nvcc")) else {
        eprintln!("skipped: CUDA_HOME is not set (eval \"$(scripts/cuda-env.sh)\" sets up a toolkit without a GPU)");
        return;
    };
    let dir = std::env::temp_dir().join(format!("ssl-cuda-source-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Each module: its name, its source and the entry points it must define.
    let mut modules: Vec<(String, String, Vec<String>)> = kernels()
        .into_iter()
        .map(|(name, (parts, float))| (name.clone(), softmax_sum_source(&parts, float), vec![name]))
        .collect();
    for float in [Float::F32, Float::F64] {
        let (module, fwd, bwd) = max_pool_names(float);
        modules.push((module, max_pool_source(float), vec![fwd, bwd]));
    }
    for (name, source, entries) in modules {
        let (cu, ptx) = (dir.join(format!("{name}.cu")), dir.join(format!("{name}.ptx")));
        std::fs::write(&cu, source).unwrap();
        let out = std::process::Command::new(&nvcc)
            .args(["--ptx", "-arch=sm_90", "-Werror=all-warnings", "-o"])
            .arg(&ptx)
            .arg(&cu)
            .output()
            .expect("run nvcc");
        assert!(out.status.success(), "{name} does not compile:\n{}", String::from_utf8_lossy(&out.stderr));
        let ptx = std::fs::read_to_string(&ptx).unwrap();
        for entry in entries {
            assert!(ptx.contains(&format!(".entry {entry}")), "{entry} is not an entry point of {name}'s PTX");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
