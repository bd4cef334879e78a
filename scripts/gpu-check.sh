#!/usr/bin/env bash
# The GPU checks of the `cuda` build, as one script for a GPU machine that has the NVIDIA driver and a CUDA 13.0
# runtime but no Rust toolchain: build the binary elsewhere (scripts/cuda-env.sh, then
# `cargo build --release --features cudnn`, or `--features cuda` for candle's own CUDA convolutions), copy the
# repository with it, and run
#
#   scripts/gpu-check.sh target/release/ssl-lang [OUT_DIR]
#
# It records the card, then: verify on CUDA against the CPU reference (1e-4) for every standard objective; the
# training benchmark at batch 256 and 1024 on the GPU; a one-epoch UniGrad run on the bundled subset on the GPU and
# on the CPU (same seed) for the kNN comparison; five ResNet-18 steps on each (the ImageNet stem's max-pool); and,
# where PyTorch is installed, the same resnet_mini step in eager PyTorch (benches/torch_step.py). Everything is
# written under OUT_DIR (default gpu-check/).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:?usage: scripts/gpu-check.sh PATH_TO_CUDA_SSL_LANG [OUT_DIR]}
out=${2:-gpu-check}
mkdir -p "$out"
subset=data/fashion-mnist-subset
# The CUDA 13 libraries the binary links (cudart, cuBLAS, cuRAND, NVRTC, and cuDNN or NCCL with those features): where
# the machine has no system toolkit, those of its Python's NVIDIA wheels (a PyTorch cu130 install has them).
if ldd "$bin" | grep -q 'not found'; then
    site=$(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null || true)
    libs=$(for d in $site; do find "$d/nvidia" -maxdepth 3 -type d -name lib 2>/dev/null; done | tr '\n' ':')
    export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:-}"
    if ldd "$bin" | grep 'not found'; then
        echo "gpu-check: the libraries above are missing; put a CUDA 13 runtime on LD_LIBRARY_PATH" >&2
        exit 1
    fi
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
"$bin" verify objectives/*.ssl --device cuda | tee "$out/verify.txt"
for batch in 256 1024; do
    "$bin" bench train --device cuda --batch "$batch" --steps 5 --data "$subset" | tee "$out/bench-$batch.txt"
done
for device in cuda cpu; do
    "$bin" train objectives/unigrad.ssl --device "$device" --data "$subset" --set epochs=1 \
        --runs "$out/runs" --name "unigrad-$device" | tee "$out/train-$device.txt"
done
# ResNet-18's ImageNet stem (its padded 3×3 stride-2 max-pool runs our CUDA pooling kernels): five steps on each
# device from the same seed; their losses should agree to about three digits.
for device in cuda cpu; do
    "$bin" train objectives/simclr.ssl --device "$device" --data "$subset" --set encoder=resnet18 --set batch=64 \
        --set eval=none --max-steps 5 --runs "$out/runs" --name "resnet18-$device" | tee "$out/resnet18-$device.txt"
done
if python3 -c 'import torch' 2>/dev/null; then
    for batch in 256 1024; do
        python3 benches/torch_step.py --batch "$batch" | tee "$out/torch-$batch.txt"
    done
fi
