"""The per-example random streams of `core/src/attacks/random.rs`, written again in PyTorch from
their definition (Wellons' lowbias32 on 32-bit values held in int64, multiplications split into
16-bit halves), so that a reference attack can start from exactly the points ours starts from.

`tests/python/reference_autoattack.py --shared-starts` uses it; `core/tests/fidelity.rs` checks
that both sides draw the same numbers."""

import torch

MASK32 = 0xFFFFFFFF
MULTIPLIER_A = 0x7FEB352D
MULTIPLIER_B = 0x846CA68B


def mix32(x):
    """lowbias32 on a Python int in [0, 2^32)."""
    x ^= x >> 16
    x = (x * MULTIPLIER_A) & MASK32
    x ^= x >> 15
    x = (x * MULTIPLIER_B) & MASK32
    x ^= x >> 16
    return x


def draw_label(parts):
    """Folds the parts of a draw label into one 32-bit label (`random::draw_label`)."""
    acc = 0x2545F491
    for part in parts:
        part &= (1 << 64) - 1
        low = mix32(acc ^ (part & MASK32))
        acc = mix32(low ^ mix32(((part >> 32) & MASK32) ^ 0x68E31DA4))
    return acc


def _multiply32(x, m):
    low = x * (m & 0xFFFF)
    high = ((x * (m >> 16)) & 0xFFFF) << 16
    return (low + high) & MASK32


def _mix_tensor(x):
    x = x ^ (x >> 16)
    x = _multiply32(x, MULTIPLIER_A)
    x = x ^ (x >> 15)
    x = _multiply32(x, MULTIPLIER_B)
    return x ^ (x >> 16)


class ExampleStreams:
    """One stream per example id under a seed (`random::ExampleStreams`)."""

    def __init__(self, seed, ids):
        ids = ids.to(torch.int64)
        low = ids & MASK32
        high = (ids >> 32) & MASK32
        seed_low = mix32(seed & MASK32)
        seed_high = mix32(((seed >> 32) & MASK32) ^ 0x9E3779B9)
        self.first = _mix_tensor(_mix_tensor(low ^ seed_low) ^ high)
        self.second = _mix_tensor((_mix_tensor(low ^ seed_high) ^ high) ^ 0x5BD1E995)

    def _hashes(self, label, shape):
        n = self.first.shape[0]
        per_example = 1
        for s in shape:
            per_example *= s
        elements = torch.arange(per_example, dtype=torch.int64).view(1, per_example)
        label = mix32(label ^ 0x1B873593)
        h = _mix_tensor(elements ^ self.first.view(n, 1))
        h = _mix_tensor(h ^ label)
        h = _mix_tensor(h ^ self.second.view(n, 1))
        return h.view(n, *shape)

    def uniform(self, label, shape):
        return (self._hashes(label, shape) >> 8).to(torch.float32) * (1.0 / 16777216.0)


if __name__ == "__main__":
    # example_streams.py SEED IDS LABEL_PARTS SHAPE: prints the uniform draws as JSON, for the
    # cross-check with the Rust streams (IDS, LABEL_PARTS and SHAPE comma-separated).
    import json
    import sys

    seed, ids, parts, shape = sys.argv[1:5]
    streams = ExampleStreams(int(seed), torch.tensor([int(v) for v in ids.split(",")]))
    label = draw_label([int(v) for v in parts.split(",")])
    values = streams.uniform(label, tuple(int(v) for v in shape.split(",")))
    print(json.dumps({"label": label, "uniform": values.flatten().tolist()}))
