"""Model files for the upload tests (`evaluator/tests/upload.rs`).

usage:
  upload_files.py CHECKPOINT_DIR OUT_DIR
      OUT_DIR/state_dict.pt: the digits-cnn checkpoint's weights (CHECKPOINT_DIR/model.safetensors)
      as a PyTorch state dict (torch.save, zip format); OUT_DIR/torchscript.pt: the same network
      traced with TorchScript; OUT_DIR/evil.pt: a torch.save zip whose data.pkl calls
      os.system("touch OUT_DIR/pwned") when Python unpickles it.
"""

import json
import os
import pickle
import sys
import zipfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


class Evil:
    """Pickles as a call to os.system: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def main():
    import reference_models
    from safetensors.torch import load_file

    checkpoint, out = sys.argv[1], sys.argv[2]
    manifest = json.load(open(os.path.join(checkpoint, "manifest.json")))
    model = reference_models.build("digits-cnn", manifest["num_classes"], manifest["input_shape"][0])
    missing, unexpected = model.load_state_dict(load_file(os.path.join(checkpoint, "model.safetensors")), strict=False)
    missing = [m for m in missing if not m.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise SystemExit(f"names differ: missing {missing}, unexpected {unexpected}")
    model.eval()
    os.makedirs(out, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(out, "state_dict.pt"))
    torch.jit.trace(model, torch.rand(4, *manifest["input_shape"])).save(os.path.join(out, "torchscript.pt"))
    evil = os.path.join(out, "evil.pt")
    torch.save({"x": torch.zeros(1)}, evil)
    with zipfile.ZipFile(evil) as original:
        entries = {name: original.read(name) for name in original.namelist()}
    with zipfile.ZipFile(evil, "w") as rewritten:
        for name, data in entries.items():
            if name.endswith("data.pkl"):
                data = pickle.dumps({"model": Evil(os.path.join(out, "pwned"))}, protocol=2)
            rewritten.writestr(name, data)
    print("ok")


if __name__ == "__main__":
    main()
