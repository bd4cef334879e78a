#!/usr/bin/env bash
# Sets up, from nothing, what `cargo build --features cuda` needs on a machine without a GPU or a system CUDA
# toolkit (facts: the CUDA 13.0 PyPI wheels; the unversioned library links they lack; a link-time stub for
# libcuda.so.1, which no wheel ships), then prints the environment to export.
#
#   eval "$(scripts/cuda-env.sh)"          # set up (once, ~1.2 GB download) and export the environment
#   cargo build --release --features cuda
#
# DIR (default target/cuda-toolkit) holds a Python venv with the wheels and a CUDA_HOME laid out as bin, include,
# nvvm, lib64 (lib64/stubs holds the libcuda stub: never put it on LD_LIBRARY_PATH on a machine with a GPU; there
# the driver's own libcuda.so.1 must load). The binary needs CUDA 13 runtime libraries and driver >= R580 to run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$root/target/cuda-toolkit}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
venv=$dir/venv
home=$dir/cuda
{
    if [ ! -x "$venv/bin/python" ]; then
        python3 -m venv "$venv"
    fi
    if [ ! -d "$venv/lib" ] || [ -z "$(find "$venv/lib" -path '*nvidia/cu13/bin/nvcc' -print -quit)" ]; then
        "$venv/bin/pip" install --quiet --upgrade pip
        "$venv/bin/pip" install --quiet 'cuda-toolkit[nvcc,nvvm,crt,cudart,cccl,cublas,curand,nvrtc]==13.0.2'
    fi
    # NCCL, for `--features nccl` (CUDA tensors between MPI ranks); its API version is the one cudarc's `nccl`
    # feature binds (2.30).
    if [ -z "$(find "$venv/lib" -path '*nvidia/nccl/lib/libnccl.so.2' -print -quit)" ]; then
        "$venv/bin/pip" install --quiet 'nvidia-nccl-cu13==2.30.7'
    fi
    # cuDNN, for `--features cudnn` (candle's cuDNN convolutions); the API version cudarc's `cudnn` feature binds
    # (9.21).
    if [ -z "$(find "$venv/lib" -path '*nvidia/cudnn/lib/libcudnn.so.9' -print -quit)" ]; then
        "$venv/bin/pip" install --quiet 'nvidia-cudnn-cu13==9.21.1.3'
    fi
    cu13=$(dirname "$(dirname "$(find "$venv/lib" -path '*nvidia/cu13/bin/nvcc' -print -quit)")")
    mkdir -p "$home/lib64/stubs"
    for d in bin include nvvm; do
        ln -sfn "$cu13/$d" "$home/$d"
    done
    # Unversioned names for the linker (-lcublas etc.); the wheels only ship libX.so.N.
    for lib in cublas cublasLt cudart curand nvrtc; do
        real=$(find "$cu13/lib" -maxdepth 1 -name "lib$lib.so.*" | sort | head -n 1)
        [ -n "$real" ] || { echo "missing lib$lib in $cu13/lib" >&2; exit 1; }
        ln -sfn "$real" "$home/lib64/lib$lib.so"
        ln -sfn "$real" "$home/lib64/$(basename "$real")"
    done
    nccl=$(dirname "$(find "$venv/lib" -path '*nvidia/nccl/lib/libnccl.so.2' -print -quit)")
    ln -sfn "$nccl/libnccl.so.2" "$home/lib64/libnccl.so"
    ln -sfn "$nccl/libnccl.so.2" "$home/lib64/libnccl.so.2"
    cudnn=$(dirname "$(find "$venv/lib" -path '*nvidia/cudnn/lib/libcudnn.so.9' -print -quit)")
    ln -sfn "$cudnn/libcudnn.so.9" "$home/lib64/libcudnn.so"
    # libcuda.so stub: every driver API function cuda.h declares, plus the versioned names cudarc binds, in a shared
    # library with the real one's SONAME, each returning CUDA_ERROR_NO_DEVICE (100). The linker needs it; loaded on
    # a machine without a GPU (LD_LIBRARY_PATH=.../lib64/stubs), it makes `--device cuda` fail cleanly.
    stub=$home/lib64/stubs/libcuda.so
    if [ ! -f "$stub" ]; then
        src=$dir/libcuda-stub.c
        {
            grep -ohE '\bcu[A-Z][A-Za-z0-9_]*\s*\(' "$home/include/cuda.h" | tr -d ' (' 
            grep -ohE '#define\s+cu[A-Za-z0-9_]+\s+cu[A-Za-z0-9_]+' "$home/include/cuda.h" | awk '{print $3}'
        } | sort -u | sed 's/.*/int &(void) { return 100; }/' > "$src"
        gcc -shared -fPIC -o "$stub" "$src" -Wl,-soname,libcuda.so.1
        ln -sfn libcuda.so "$home/lib64/stubs/libcuda.so.1"
    fi
} >&2
cat <<ENV
export CUDA_HOME="$home"
export CUDA_PATH="$home"
export PATH="$home/bin:\$PATH"
export NVCC="$home/bin/nvcc"
export CUDA_COMPUTE_CAP=90
export CUDARC_CUDA_VERSION=13000
ENV
