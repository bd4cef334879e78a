#!/usr/bin/env bash
# The README's results table: every standard objective trained on the full Fashion-MNIST at one fixed budget
# (one epoch, 234 steps of 256 pairs, warm-up 0.1 epoch then cosine, each objective's own recipe otherwise), then
# weighted kNN (k = 200, t = 0.1) on the backbone features beside the raw-pixel and random-init baselines.
#
#   scripts/fashion-mnist-table.sh [DATA_DIR] [OBJECTIVE...]
#
# DATA_DIR defaults to the Debian package's directory (apt install dataset-fashion-mnist). Runs go to runs/table-*;
# each run's log ends with its kNN accuracy. About 5 minutes per objective on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-/usr/share/datasets/fashion-mnist}
shift || true
objectives=("$@")
[ ${#objectives[@]} -gt 0 ] || objectives=(unigrad simclr moco byol simsiam barlow_twins vicreg)
cargo build --release --locked
for o in "${objectives[@]}"; do
    ./target/release/ssl-lang train "objectives/$o.ssl" --data "$data" --set epochs=1 \
        --set 'schedule=warmup_cosine(warmup_epochs = 0.1)' --name "table-$o"
done
