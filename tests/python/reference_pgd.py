"""PGD under L-inf with the cross-entropy or the Carlini-Wagner loss of the robust-fairness
papers' evaluation code, written in plain PyTorch as an independent reference for
`core/src/attacks/pgd.rs` and `cw.rs`.

usage: reference_pgd.py CHECKPOINT_DIR DATA_FILE --eps EPS --loss ce|cw [--kappa K]
           [--steps N] [--step-size A] [--seed S] [--shared-starts] [--threads T]

The CW loss is the one of the reference evaluation scripts (RSLAD's and ABSLD's `cwloss`):
real = z_y, other = max over the one-hot-masked logits with the true class at -10000, and the
attack ascends -clamp(real - other + kappa, min=0) summed over the batch. The start is uniform
in the ball: x + U(-eps, eps), clamped to [0, 1]; with --shared-starts U comes from our
per-example streams (`example_streams.py`, the draws of `core/src/attacks/pgd.rs`), otherwise
from torch's generator seeded with S. Prints the per-point robust flags as JSON."""

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import example_streams  # noqa: E402
from reference_autoattack import load_checkpoint  # noqa: E402

PGD_DRAWS = 0x50474400


def cw_loss(output, target, kappa, num_classes):
    onehot = torch.zeros(target.size() + (num_classes,))
    onehot.scatter_(1, target.unsqueeze(1), 1.0)
    real = (onehot * output).sum(1)
    other = ((1.0 - onehot) * output - onehot * 10000.0).max(1)[0]
    return -torch.clamp(real - other + kappa, min=0.0).sum()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("data")
    parser.add_argument("--eps", type=float, required=True)
    parser.add_argument("--loss", choices=["ce", "cw"], required=True)
    parser.add_argument("--kappa", type=float, default=50.0)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--step-size", type=float, default=2.0 / 255.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shared-starts", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model, num_classes = load_checkpoint(args.checkpoint)
    data = load_file(args.data)
    x, y = data["images"].float(), data["labels"].long()
    ids = data["ids"].long() if "ids" in data else torch.arange(y.numel())

    if args.shared_starts:
        label = example_streams.draw_label([PGD_DRAWS, 0])
        uniform = example_streams.ExampleStreams(args.seed, ids).uniform(label, tuple(x.shape[1:]))
    else:
        torch.manual_seed(args.seed)
        uniform = torch.rand(x.shape)
    lower = (x - args.eps).clamp(min=0.0)
    upper = (x + args.eps).clamp(max=1.0)
    adversarial = torch.min(torch.max(x + (uniform * 2.0 - 1.0) * args.eps, lower), upper)
    for _ in range(args.steps):
        adversarial.requires_grad_(True)
        with torch.enable_grad():
            output = model(adversarial)
            if args.loss == "ce":
                loss = F.cross_entropy(output, y, reduction="sum")
            else:
                loss = cw_loss(output, y, args.kappa, num_classes)
        gradient, = torch.autograd.grad(loss, [adversarial])
        adversarial = adversarial.detach() + args.step_size * gradient.sign()
        adversarial = torch.min(torch.max(adversarial, lower), upper)
    with torch.no_grad():
        robust = model(adversarial).argmax(1) == y
        clean = model(x).argmax(1) == y
        margins = model(x)
        top2 = margins.topk(2, dim=1).values
    print(json.dumps({
        "robust_flags": [int(v) for v in robust.tolist()],
        "robust_correct": int(robust.sum()),
        "clean_correct": int(clean.sum()),
        "median_clean_margin": float((top2[:, 0] - top2[:, 1]).median()),
        "max_linf": float((adversarial - x).abs().amax()),
    }))


if __name__ == "__main__":
    main()
