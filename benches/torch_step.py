"""Eager PyTorch reference for `ssl-lang bench train`: the same UniGrad step on the same network — `resnet_mini`
on 28×28 grayscale (the default) or ResNet-18 with the CIFAR stem on 32×32 colour (`--net resnet18`, ssl-lang's
`encoder = resnet18(stem = cifar)`) — both views through the online network and the momentum target, the UniGrad
gradient injected at the normalised features, SGD with momentum, the EMA update, timed as pairs/s. Run by
scripts/gpu-check.sh where torch exists, and by hand beside `ssl-lang bench train` (README):

    python3 benches/torch_step.py --batch 256 [--steps 20] [--net resnet_mini|resnet18] [--device cuda]
"""
import argparse, copy, time
import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn(cin, cout, k, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout))


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.a, self.b = conv_bn(cin, cout, 3, stride), conv_bn(cout, cout, 3, 1)
        self.short = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return F.relu(self.b(F.relu(self.a(x))) + self.short(x))


def network(net):
    """resnet_mini (3×3 stem of 32, one block per width) or ResNet-18 with the CIFAR stem (3×3 stem of 64, two blocks
    per width), each with ssl-lang's default projector: Linear(no bias), BN, ReLU, Linear to 128."""
    (channels, widths, blocks) = (1, [32, 64, 128], 1) if net == "resnet_mini" else (3, [64, 128, 256, 512], 2)
    layers, cin = [conv_bn(channels, widths[0], 3, 1), nn.ReLU()], widths[0]
    for i, w in enumerate(widths):
        for j in range(blocks):
            layers.append(Block(cin, w, 2 if i > 0 and j == 0 else 1))
            cin = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    projector = nn.Sequential(nn.Linear(cin, 512, bias=False), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, 128))
    return nn.Sequential(*layers, projector)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--net", choices=["resnet_mini", "resnet18"], default="resnet_mini")
    a = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    dev = torch.device(a.device)
    online = network(a.net).to(dev)
    target = copy.deepcopy(online).requires_grad_(False)
    opt = torch.optim.SGD(online.parameters(), lr=0.06, momentum=0.9, weight_decay=5e-4)
    corr = torch.zeros(128, 128, device=dev)  # UniGrad's F
    shape = (1, 28, 28) if a.net == "resnet_mini" else (3, 32, 32)
    x1, x2 = (torch.rand(a.batch, *shape, device=dev) for _ in range(2))
    times = []
    for step in range(a.steps + 1):
        start = time.perf_counter()
        u1, u2 = F.normalize(online(x1), dim=1), F.normalize(online(x2), dim=1)
        with torch.no_grad():
            t1, t2 = F.normalize(target(x1), dim=1), F.normalize(target(x2), dim=1)
            t = torch.cat([t1, t2])
            corr = 0.99 * corr + 0.01 * t.T @ t / t.shape[0]
            g1, g2 = -t2 + 100 * 128 / 2048 * u1 @ corr, -t1 + 100 * 128 / 2048 * u2 @ corr
        loss = ((u1 * g1).sum() + (u2 * g2).sum()) / (2 * a.batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for po, pt in zip(online.parameters(), target.parameters()):
                pt.mul_(0.99).add_(po, alpha=0.01)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if step > 0:
            times.append(time.perf_counter() - start)
    median = sorted(times)[len(times) // 2]
    print(f"torch {torch.__version__} eager, {dev}, {a.net}, batch {a.batch}, {torch.get_num_threads()} threads: "
          f"{a.batch / median:.1f} pairs/s "
          f"(median of {a.steps} steps, {median * 1e3:.1f} ms/step)")


if __name__ == "__main__":
    main()
