"""Model files for `evaluator/tests/product_matrix.rs`, written as a model owner writes them.

usage:
  product_matrix.py export CHECKPOINT_DIR ARCH OUT_DIR
      Loads our checkpoint's weights (CHECKPOINT_DIR/model.safetensors) into the PyTorch
      reference definition of ARCH (tests/python/reference_models.py) and writes
      OUT_DIR/state_dict.pt (torch.save of {'state_dict': ...}) and OUT_DIR/scripted.pt
      (torch.jit.script): the same function as our checkpoint, as a state dict and as
      TorchScript, for `evaluator import`.
  product_matrix.py dynamic CHECKPOINT_DIR ARCH OUT_DIR
      The checkpoint as TorchScript twice: OUT_DIR/plain.pt, and OUT_DIR/dynamic.pt, which
      computes the same logits but takes an input gradient of its own inside forward whenever
      its input requires one (a test-time defence's shape): AutoAttack's dynamic-model flag
      must be raised for the second only.
  product_matrix.py failing OUT_DIR
      Two TorchScript digits classifiers that pass every import check (batches of 2 and 3,
      gradients reach the input) and fail inside an evaluation, on batches above 3:
      OUT_DIR/raises.pt raises a RuntimeError in its forward; OUT_DIR/narrow.pt returns logits of
      two classes, which the attacks' own arithmetic (cross-entropy against labels up to 9)
      then refuses.
"""

import argparse
import json
import os
import sys

import torch
import torch.nn as nn
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_models  # noqa: E402


def export(args):
    manifest = json.load(open(os.path.join(args.checkpoint, "manifest.json")))
    model = reference_models.build(args.arch, manifest["num_classes"], manifest["input_shape"][0])
    weights = load_file(os.path.join(args.checkpoint, "model.safetensors"))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [m for m in missing if not m.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise SystemExit(f"names differ: missing {missing}, unexpected {unexpected}")
    model.eval()
    os.makedirs(args.out, exist_ok=True)
    torch.save({"state_dict": model.state_dict()}, os.path.join(args.out, "state_dict.pt"))
    torch.jit.script(model).save(os.path.join(args.out, "scripted.pt"))
    print("ok")


class Dynamic(nn.Module):
    """The wrapped model's logits, after a gradient step it takes and throws away."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        if x.requires_grad:
            probe = x.detach().requires_grad_(True)
            grads = torch.autograd.grad([self.model(probe).sum()], [probe])
            assert grads[0] is not None
        return self.model(x)


def dynamic(args):
    manifest = json.load(open(os.path.join(args.checkpoint, "manifest.json")))
    model = reference_models.build(args.arch, manifest["num_classes"], manifest["input_shape"][0])
    model.load_state_dict(load_file(os.path.join(args.checkpoint, "model.safetensors")), strict=False)
    model.eval()
    os.makedirs(args.out, exist_ok=True)
    torch.jit.script(model).save(os.path.join(args.out, "plain.pt"))
    torch.jit.script(Dynamic(model).eval()).save(os.path.join(args.out, "dynamic.pt"))
    print("ok")


class Raises(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(64, 10)

    def forward(self, x):
        if x.shape[0] > 3:
            raise RuntimeError("deliberate failure of this module for batches above 3")
        return self.linear(x.flatten(1))


class Narrow(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(64, 10)

    def forward(self, x):
        logits = self.linear(x.flatten(1))
        if x.shape[0] > 3:
            return logits[:, :2]
        return logits


def failing(args):
    torch.manual_seed(0)
    os.makedirs(args.out, exist_ok=True)
    torch.jit.script(Raises().eval()).save(os.path.join(args.out, "raises.pt"))
    torch.jit.script(Narrow().eval()).save(os.path.join(args.out, "narrow.pt"))
    print("ok")


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("export")
    p.add_argument("checkpoint")
    p.add_argument("arch")
    p.add_argument("out")
    p = sub.add_parser("dynamic")
    p.add_argument("checkpoint")
    p.add_argument("arch")
    p.add_argument("out")
    p = sub.add_parser("failing")
    p.add_argument("out")
    args = parser.parse_args()
    {"export": export, "dynamic": dynamic, "failing": failing}[args.command](args)


if __name__ == "__main__":
    main()
