"""Writes a reference model's state_dict with random weights, an input batch and the model's
eval-mode logits, for `core/tests/pytorch_parity.rs`.

usage: write_reference.py ARCH NUM_CLASSES C H W OUT_DIR [--wrap model|state_dict|module]"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_models  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("arch")
    parser.add_argument("num_classes", type=int)
    parser.add_argument("shape", type=int, nargs=3)
    parser.add_argument("out_dir")
    parser.add_argument("--wrap", choices=["none", "model", "state_dict", "module"], default="none")
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()

    torch.manual_seed(1234)
    c, h, w = args.shape
    model = reference_models.build(args.arch, args.num_classes, c)
    # Random batch-norm statistics and affine parameters, so that eval mode is not an identity.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    model.eval()
    images = torch.rand(args.batch, c, h, w)
    with torch.no_grad():
        logits = model(images)

    state = model.state_dict()
    if args.wrap == "model":
        payload = {"model": state, "epoch": 7}
    elif args.wrap == "state_dict":
        payload = {"state_dict": state, "optimizer": {"lr": 0.1}}
    elif args.wrap == "module":
        payload = {f"module.{k}": v for k, v in state.items()}
    else:
        payload = state
    os.makedirs(args.out_dir, exist_ok=True)
    torch.save(payload, os.path.join(args.out_dir, "weights.pt"))
    torch.save({"images": images, "logits": logits}, os.path.join(args.out_dir, "io.pt"))
    count = sum(p.numel() for p in model.parameters())
    print(count)


if __name__ == "__main__":
    main()
