"""`torch.save` files in both formats, and what `torch.load` reads from them, for the tests of
our reader (`core/tests/hostile_files.rs`, `evaluator/tests/import.rs`).

usage:
  torch_files.py pair OUT_DIR
      The same small object (a state dict of every storage type, a non-contiguous view and a
      slice sharing one storage, a parameter, plain values beside them) saved as
      OUT_DIR/zip.pt (the zip format) and OUT_DIR/legacy.pt (torch.save with
      _use_new_zipfile_serialization=False), and OUT_DIR/expected.json: per file, what
      torch.load gives, flattened as our reader names tensors.
  torch_files.py memo OUT_DIR
      OUT_DIR/memo.pt: a zip-format file whose hand-written data.pkl memoises a dict, uses it
      twice, and then adds and replaces entries of it through the memo (what a pickle may do
      and Python's pickler never does), and OUT_DIR/expected.json with what torch.load reads.
  torch_files.py export CHECKPOINT_DIR ARCH OUT_DIR
      Our checkpoint's weights (CHECKPOINT_DIR/model.safetensors) in the PyTorch reference
      definition of ARCH, saved in both formats: OUT_DIR/zip.pt and OUT_DIR/legacy.pt.
"""

import argparse
import json
import os
import struct
import sys
import zipfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def flatten(value, prefix=""):
    """Tensors reachable through dicts with str or int keys, named as our reader names them."""
    out = {}
    if isinstance(value, torch.Tensor):
        return {prefix: value}
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, bool) or not isinstance(key, (str, int)):
                continue
            name = f"{prefix}.{key}" if prefix else str(key)
            out.update(flatten(item, name))
    return out


def describe(path):
    loaded = torch.load(path, weights_only=True)
    return {
        name: {
            "dtype": str(t.dtype).replace("torch.", ""),
            "shape": list(t.shape),
            "values": t.detach().double().flatten().tolist(),
        }
        for name, t in flatten(loaded).items()
    }


def pair(args):
    os.makedirs(args.out, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=generator)
    state = {
        "conv.weight": torch.randn(3, 2, 2, 2, generator=generator),
        "bn.running_mean": torch.randn(3, generator=generator).double(),
        "bn.num_batches_tracked": torch.tensor(7),
        "half": torch.randn(5, generator=generator).half(),
        "bf16": torch.randn(5, generator=generator).bfloat16(),
        "int32": torch.arange(-3, 3, dtype=torch.int32),
        "int16": torch.arange(-2, 2, dtype=torch.int16),
        "int8": torch.arange(-2, 2, dtype=torch.int8),
        "uint8": torch.arange(250, 256, dtype=torch.uint8),
        "mask": torch.tensor([True, False, True]),
        # Views: a transposed (non-contiguous) one and a slice, sharing one storage.
        "transposed": base.t(),
        "row": base[2],
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 3),
    }
    obj = {
        "state_dict": state,
        "parameter": torch.nn.Parameter(torch.randn(2, 2, generator=generator)),
        "epoch": 12,
        "lrs": [0.1, 0.01],
        "note": "plain values are ignored",
        3: {"nested": torch.ones(2)},
    }
    torch.save(obj, os.path.join(args.out, "zip.pt"))
    torch.save(obj, os.path.join(args.out, "legacy.pt"), _use_new_zipfile_serialization=False)
    expected = {name: describe(os.path.join(args.out, name)) for name in ["zip.pt", "legacy.pt"]}
    with open(os.path.join(args.out, "expected.json"), "w") as f:
        json.dump(expected, f)
    print("ok")


def text(s):
    data = s.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def small_tuple(values):
    return b"(" + b"".join(b"K" + bytes([v]) for v in values) + b"t"


def tensor(key, numel, size, stride):
    """_rebuild_tensor_v2 of a float storage, as torch.save's pickler writes it."""
    storage = b"(" + text("storage") + b"ctorch\nFloatStorage\n" + text(key) + text("cpu") + b"K" + bytes([numel]) + b"t"
    return (
        b"ctorch._utils\n_rebuild_tensor_v2\n("
        + storage
        + b"QK\x00"
        + small_tuple(size)
        + small_tuple(stride)
        + b"\x89ccollections\nOrderedDict\n)RtR"
    )


def memo(args):
    os.makedirs(args.out, exist_ok=True)
    pickle = (
        b"\x80\x02}q\x00("  # root = {}, memo 0
        + text("a")
        + b"}q\x01"  # inner = {}, memo 1
        + text("b")
        + b"h\x01"  # root['b'] is the same inner dict
        + b"u"  # root = {'a': inner, 'b': inner}
        + b"h\x00"  # root again, through the memo
        + text("c")
        + b"h\x01"  # inner, through the memo, after both uses
        + text("w")
        + tensor("0", 4, [2, 2], [2, 1])
        + b"s"  # inner['w'] = tensor 0
        + text("v")
        + tensor("1", 3, [3], [1])
        + b"s"  # inner['v'] = tensor 1
        + text("w")
        + tensor("1", 3, [2], [1])
        + b"s"  # inner['w'] = the first two of tensor 1 (replaced in place)
        + b"s"  # root['c'] = inner
        + b"."
    )
    storages = {"0": struct.pack("<4f", 1, 2, 3, 4), "1": struct.pack("<3f", 5, 6, 7)}
    path = os.path.join(args.out, "memo.pt")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("memo/data.pkl", pickle)
        archive.writestr("memo/byteorder", "little")
        for key, data in storages.items():
            archive.writestr(f"memo/data/{key}", data)
        archive.writestr("memo/version", "3\n")
    with open(os.path.join(args.out, "expected.json"), "w") as f:
        json.dump(describe(path), f)
    print("ok")


def export(args):
    import reference_models
    from safetensors.torch import load_file

    manifest = json.load(open(os.path.join(args.checkpoint, "manifest.json")))
    model = reference_models.build(args.arch, manifest["num_classes"], manifest["input_shape"][0])
    missing, unexpected = model.load_state_dict(load_file(os.path.join(args.checkpoint, "model.safetensors")), strict=False)
    missing = [m for m in missing if not m.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise SystemExit(f"names differ: missing {missing}, unexpected {unexpected}")
    os.makedirs(args.out, exist_ok=True)
    state = model.state_dict()
    torch.save(state, os.path.join(args.out, "zip.pt"))
    torch.save(state, os.path.join(args.out, "legacy.pt"), _use_new_zipfile_serialization=False)
    print("ok")


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("pair").add_argument("out")
    sub.add_parser("memo").add_argument("out")
    p = sub.add_parser("export")
    p.add_argument("checkpoint")
    p.add_argument("arch")
    p.add_argument("out")
    args = parser.parse_args()
    {"pair": pair, "memo": memo, "export": export}[args.command](args)


if __name__ == "__main__":
    main()
