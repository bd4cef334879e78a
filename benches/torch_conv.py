"""Eager PyTorch (oneDNN) beside `cargo bench --bench conv -- layers`: every conv layer of the default `resnet_mini`
at batch 256, channels-last as the PyTorch reference runs them, timed per product as our bench times its own —
forward, input gradient and weight gradient — with direct-convolution GFLOP/s (2·B·O·C·kh·kw·Ho·Wo per product).
Medians of 7 runs after one warm-up, on the threads given (default 2, the machine's cores). Run it right after the
conv bench, so that both are measured in one sitting on one machine:

    cargo bench --bench conv -- quick layers && python3 benches/torch_conv.py [--threads 2] [--batch 256]
"""
import argparse
import time

import torch
import torch.nn.functional as F

# (name, in channels, out channels, input size, stride, kernel, layers of this shape per view) as in our bench.
LAYERS = [
    ("stem 1→32 @28", 1, 32, 28, 1, 3, 1),
    ("s1 conv 32→32 @28", 32, 32, 28, 1, 3, 2),
    ("s2 conv1 32→64 s2", 32, 64, 28, 2, 3, 1),
    ("s2 conv2 64→64 @14", 64, 64, 14, 1, 3, 1),
    ("s2 shortcut 1×1 s2", 32, 64, 28, 2, 1, 1),
    ("s3 conv1 64→128 s2", 64, 128, 14, 2, 3, 1),
    ("s3 conv2 128→128 @7", 128, 128, 7, 1, 3, 1),
    ("s3 shortcut 1×1 s2", 64, 128, 14, 2, 1, 1),
]


def median_s(f, reps=7):
    f()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    b = args.batch
    print(f"torch {torch.__version__} conv layers: batch {b}, {torch.get_num_threads()} threads, f32 channels-last, medians of 7")
    print(f"{'layer':<24} {'product':<7} {'ms':>8} {'GF/s':>7}")
    total = 0.0
    for name, c, o, h, s, k, count in LAYERS:
        pad = k // 2
        x = torch.randn(b, c, h, h).contiguous(memory_format=torch.channels_last)
        w = torch.randn(o, c, k, k).contiguous(memory_format=torch.channels_last)
        y = F.conv2d(x, w, stride=s, padding=pad)
        dy = torch.randn_like(y)
        ho = y.shape[2]
        flops = 2 * b * o * c * k * k * ho * ho
        products = {
            "fwd": lambda: F.conv2d(x, w, stride=s, padding=pad),
            "dx": lambda: torch.nn.grad.conv2d_input(x.shape, w, dy, stride=s, padding=pad),
            "dw": lambda: torch.nn.grad.conv2d_weight(x, w.shape, dy, stride=s, padding=pad),
        }
        for product, f in products.items():
            t = median_s(f)
            # The stem's input gradient is never needed in training (its input is the image).
            if not (name.startswith("stem") and product == "dx"):
                total += t * count
            label = name if product == "fwd" else ""
            print(f"{label:<24} {product:<7} {t * 1e3:8.2f} {flops / t / 1e9:7.1f}")
    print(f"all conv products of one view's training step (×count, no stem dx): {total * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
