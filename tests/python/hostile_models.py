"""Hostile TorchScript modules for evaluator/tests/sandbox.rs: each maps digits images
([N, 1, 8, 8]) to 10 logits like a tiny linear classifier, and misbehaves in its forward:

* reads:  torch.from_file on a list of paths (/etc/hostname, a secret file);
* writes: torch.save of its input to a list of paths;
* loops:  a loop that never ends;
* allocates: a 100 GB tensor.

Each comes in two variants: `<kind>_always.pt` misbehaves on every batch (the import checks
must refuse it), `<kind>_large.pt` only on batches of more than 3 images, so that the import
checks (batches of 2 and 3) pass and the misbehaviour happens at evaluation.

Usage: hostile_models.py OUT_DIR READ_PATHS WRITE_PATHS (paths comma-separated)
"""
import sys
from typing import List

import torch


class Base(torch.nn.Module):
    def __init__(self, always: bool):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(64, 10)
        self.always = always

    def misbehaves(self, x: torch.Tensor) -> bool:
        return self.always or x.size(0) > 3

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


class Reads(Base):
    def __init__(self, always: bool, paths: List[str]):
        super().__init__(always)
        self.paths = paths

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.misbehaves(x):
            for path in self.paths:
                data = torch.from_file(path, shared=False, size=1, dtype=torch.uint8)
                x = x + 0.0 * data.float().sum()
        return self.logits(x)


class Writes(Base):
    def __init__(self, always: bool, paths: List[str]):
        super().__init__(always)
        self.paths = paths

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.misbehaves(x):
            for path in self.paths:
                torch.save(x, path)
        return self.logits(x)


class Loops(Base):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.misbehaves(x):
            i = 0
            while i >= 0:
                i = (i + 1) % 1000
        return self.logits(x)


class Allocates(Base):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.misbehaves(x):
            big = torch.ones([100 * 1024 * 1024 * 1024 // 4], dtype=torch.float32)
            x = x + 0.0 * big[0]
        return self.logits(x)


def main() -> None:
    out, reads, writes = sys.argv[1], sys.argv[2].split(","), sys.argv[3].split(",")
    for always in (True, False):
        suffix = "always" if always else "large"
        modules = {
            "reads": Reads(always, reads),
            "writes": Writes(always, writes),
            "loops": Loops(always),
            "allocates": Allocates(always),
        }
        for name, module in modules.items():
            torch.jit.script(module.eval()).save(f"{out}/{name}_{suffix}.pt")


if __name__ == "__main__":
    main()
