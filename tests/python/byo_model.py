"""Bring-your-own-model fixtures for `evaluator/tests/import.rs` and
`bench-client/tests/imported_model.rs`, written the way a model owner would write them.

usage:
  byo_model.py prepare WORK [--per-class-test N] [--eps E] [--seed S]
      Writes a small learnable CIFAR-format data set (WORK/data: data_batch_1..5.bin,
      test_batch.bin, records of 1 label byte + 3072 pixel bytes), then
      * trains `TinyConvNeXt` (defined here, not in our registry: patchify stem, depthwise 7x7
        convolutions, LayerNorm, inverted-bottleneck MLP with GELU, layer scale) on the
        training files behind an input normalisation, scripts it with torch.jit.script and
        saves it to WORK/convnext.pt (the module expects normalised input);
      * trains the reference `digits-cnn` (tests/python/reference_models.py) on the same files,
        behind the same normalisation, and saves its state dict wrapped as {'model': ...,
        'epoch': ...} to WORK/cnn_state_dict.pt;
      * loads both back and computes, on the first N test images of every class (file order,
        as the evaluator picks them), per-class counts of clean accuracy and FGSM (the
        evaluator's definitions: a point counts if the fp32 model classifies the returned point
        correctly), and for the TorchScript model PGD-20 with torchattacks (random start,
        step 2/255), all in batches of 100, written to WORK/reference.json.
  byo_model.py bad WORK
      Writes the bad inputs of the import tests to WORK (see `write_bad`).
  byo_model.py digits-torchscript OUT
      A small traced TorchScript classifier for the 8x8 digits (random weights).
  byo_model.py resnet18 OUT_DIR
      The reference CIFAR ResNet-18 with seeded random weights and batch-norm statistics, as
      OUT_DIR/resnet18_state_dict.pt, OUT_DIR/resnet18_scripted.pt (torch.jit.script) and
      OUT_DIR/resnet18_traced.pt (torch.jit.trace), for `core/examples/torchscript_cost.rs`.

Set OMP_NUM_THREADS=1 (the tests do) so that PyTorch and the evaluator compute alike."""

import argparse
import json
import os
import pickle
import sys
import zipfile

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_models  # noqa: E402

CLASSES = 10
MEAN = [0.4914, 0.4822, 0.4465]
STD = [0.2471, 0.2435, 0.2616]
BATCH = 100


# ---------------------------------------------------------------- an architecture we do not have


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of an NCHW tensor."""

    def __init__(self, channels):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x):
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(0.1 * torch.ones(dim))

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class TinyConvNeXt(nn.Module):
    def __init__(self, num_classes=CLASSES, dims=(32, 64)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 4, stride=4), LayerNorm2d(dims[0]))
        self.stage1 = nn.Sequential(ConvNeXtBlock(dims[0]), ConvNeXtBlock(dims[0]))
        self.down = nn.Sequential(LayerNorm2d(dims[0]), nn.Conv2d(dims[0], dims[1], 2, stride=2))
        self.stage2 = nn.Sequential(ConvNeXtBlock(dims[1]), ConvNeXtBlock(dims[1]))
        self.norm = nn.LayerNorm(dims[1])
        self.head = nn.Linear(dims[1], num_classes)

    def forward(self, x):
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.head(self.norm(x.mean(dim=(2, 3))))


# ---------------------------------------------------------------- data


def synthetic_split(per_class, generator, templates):
    """Images of class k: a smooth class template, a random brightness shift, pixel noise."""
    labels = torch.arange(CLASSES).repeat_interleave(per_class)
    labels = labels[torch.randperm(labels.numel(), generator=generator)]
    base = templates[labels]
    shift = 0.15 * (torch.rand(labels.numel(), 1, 1, 1, generator=generator) - 0.5)
    noise = 0.12 * torch.randn(base.shape, generator=generator)
    images = (base + shift + noise).clamp(0, 1)
    return (images * 255).round().to(torch.uint8), labels


def write_cifar(path, pixels, labels):
    records = torch.cat([labels.to(torch.uint8).view(-1, 1), pixels.reshape(labels.numel(), -1)], dim=1)
    with open(path, "wb") as f:
        f.write(records.numpy().tobytes())


def read_cifar(path):
    raw = torch.frombuffer(bytearray(open(path, "rb").read()), dtype=torch.uint8).view(-1, 3073)
    labels = raw[:, 0].long()
    images = raw[:, 1:].reshape(-1, 3, 32, 32).float() / 255.0  # as the evaluator's loader
    return images, labels


def write_data(dir, seed):
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(CLASSES, 3, 4, 4, generator=generator)
    # Classes differ by +-0.15 around grey: learnable, yet an eps of a few /255 matters.
    templates = 0.5 + 0.3 * (F.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False) - 0.5)
    os.makedirs(dir, exist_ok=True)
    for batch in range(1, 6):
        pixels, labels = synthetic_split(40, generator, templates)
        write_cifar(os.path.join(dir, f"data_batch_{batch}.bin"), pixels, labels)
    pixels, labels = synthetic_split(60, generator, templates)
    write_cifar(os.path.join(dir, "test_batch.bin"), pixels, labels)


# ---------------------------------------------------------------- the reference computations


class Normalised(nn.Module):
    """(x - mean) * (1 / std) in front of a module, computed as the evaluator computes it."""

    def __init__(self, module):
        super().__init__()
        self.module = module
        self.register_buffer("mean", torch.tensor(MEAN, dtype=torch.float64).float().view(1, 3, 1, 1))
        self.register_buffer("inv_std", torch.tensor(STD, dtype=torch.float64).float().reciprocal().view(1, 3, 1, 1))

    def forward(self, x):
        return self.module((x - self.mean) * self.inv_std)


def train(model, images, labels, epochs, seed):
    torch.manual_seed(seed)
    wrapped = Normalised(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(labels.numel())
        for start in range(0, labels.numel(), 50):
            index = order[start : start + 50]
            loss = F.cross_entropy(wrapped(images[index]), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()


def first_per_class(images, labels, n):
    keep = []
    for k in range(CLASSES):
        keep += (labels == k).nonzero().view(-1)[:n].tolist()
    keep.sort()
    return images[keep], labels[keep]


def per_class(correct, labels):
    return [int(correct[labels == k].sum()) for k in range(CLASSES)]


def batches(x, y):
    for start in range(0, y.numel(), BATCH):
        yield x[start : start + BATCH], y[start : start + BATCH]


def clean_counts(model, x, y):
    with torch.no_grad():
        correct = torch.cat([model(xb).argmax(-1) == yb for xb, yb in batches(x, y)])
    return per_class(correct, y)


def fgsm_counts(model, x, y, eps):
    """One step of eps along the sign of the summed cross-entropy gradient, projected as the
    evaluator projects; counted by the model's prediction on the returned point."""
    correct = []
    for xb, yb in batches(x, y):
        xi = xb.clone().requires_grad_(True)
        loss = F.cross_entropy(model(xi), yb, reduction="sum")
        (grad,) = torch.autograd.grad(loss, xi)
        candidate = xb + grad.sign() * eps
        lower, upper = (xb - eps).clamp_min(0.0), (xb + eps).clamp_max(1.0)
        adversarial = candidate.maximum(lower).minimum(upper)
        with torch.no_grad():
            correct.append(model(adversarial).argmax(-1) == yb)
    return per_class(torch.cat(correct), y)


def pgd_counts(model, x, y, eps, seed):
    import torchattacks

    torch.manual_seed(seed)
    attack = torchattacks.PGD(model, eps=eps, alpha=2 / 255, steps=20, random_start=True)
    correct = []
    for xb, yb in batches(x, y):
        adversarial = attack(xb, yb)
        assert (adversarial - xb).abs().max() <= eps + 1e-6 and adversarial.min() >= 0 and adversarial.max() <= 1
        with torch.no_grad():
            correct.append(model(adversarial).argmax(-1) == yb)
    return per_class(torch.cat(correct), y)


def prepare(args):
    torch.set_num_threads(1)
    data_dir = os.path.join(args.work, "data")
    write_data(data_dir, args.seed)
    train_images = []
    train_labels = []
    for batch in range(1, 6):
        images, labels = read_cifar(os.path.join(data_dir, f"data_batch_{batch}.bin"))
        train_images.append(images)
        train_labels.append(labels)
    train_images, train_labels = torch.cat(train_images), torch.cat(train_labels)
    test_x, test_y = first_per_class(*read_cifar(os.path.join(data_dir, "test_batch.bin")), args.per_class_test)

    convnext = TinyConvNeXt()
    train(convnext, train_images, train_labels, epochs=args.epochs, seed=args.seed)
    scripted = torch.jit.script(convnext)
    scripted.save(os.path.join(args.work, "convnext.pt"))

    cnn = reference_models.build("digits-cnn", CLASSES, 3)
    train(cnn, train_images, train_labels, epochs=args.epochs, seed=args.seed + 1)
    torch.save({"model": cnn.state_dict(), "epoch": args.epochs, "note": "digits-cnn on synthetic CIFAR"},
               os.path.join(args.work, "cnn_state_dict.pt"))

    # The references use the saved files, as the evaluator does.
    loaded = Normalised(torch.jit.load(os.path.join(args.work, "convnext.pt"))).eval()
    cnn_loaded = reference_models.build("digits-cnn", CLASSES, 3)
    cnn_loaded.load_state_dict(torch.load(os.path.join(args.work, "cnn_state_dict.pt"))["model"])
    cnn_loaded = Normalised(cnn_loaded).eval()
    for p in list(loaded.parameters()) + list(cnn_loaded.parameters()):
        p.requires_grad_(False)
    reference = {
        "eps": args.eps,
        "mean": MEAN,
        "std": STD,
        "per_class": args.per_class_test,
        "convnext": {
            "clean": clean_counts(loaded, test_x, test_y),
            "fgsm": fgsm_counts(loaded, test_x, test_y, args.eps),
            "pgd20_torchattacks": pgd_counts(loaded, test_x, test_y, args.eps, args.seed),
        },
        "cnn": {
            "clean": clean_counts(cnn_loaded, test_x, test_y),
            "fgsm": fgsm_counts(cnn_loaded, test_x, test_y, args.eps),
        },
    }
    with open(os.path.join(args.work, "reference.json"), "w") as f:
        json.dump(reference, f, indent=1)
    print(json.dumps(reference))


# ---------------------------------------------------------------- bad inputs


class Evil:
    """Pickles as a call to os.system: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class WrongClasses(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(64, 5)

    def forward(self, x):
        return self.linear(x.flatten(1))


class TupleOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(64, 10)

    def forward(self, x):
        features = x.flatten(1)
        return self.linear(features), features


class NanLogits(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(64, 10)

    def forward(self, x):
        return self.linear(x.flatten(1)) * float("nan")


class Detached(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(64, 10)

    def forward(self, x):
        return self.linear(x.detach().flatten(1))


class Rounded(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(64, 10)

    def forward(self, x):
        return self.linear(torch.round(x * 8.0).flatten(1))


class MixesBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(64, 10)

    def forward(self, x):
        return self.linear((x - x.mean(dim=0, keepdim=True)).flatten(1))


class FixedBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(64, 10)

    def forward(self, x):
        return self.linear(x.view(2, 64))


class Fp32Only(nn.Module):
    """Runs in fp32 only: it casts its input to fp32 and multiplies by its own weight."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(64, 10) * 0.1)

    def forward(self, x):
        return torch.matmul(x.float().flatten(1), self.weight)


def digits_module():
    torch.manual_seed(0)
    return reference_models.build("digits-cnn", CLASSES, 1).eval()


def write_bad(args):
    """Every bad input of the import tests, for the 8x8 digits (1 channel)."""
    work = args.work
    os.makedirs(work, exist_ok=True)
    torch.manual_seed(0)
    good = digits_module()
    torch.jit.trace(good, torch.rand(4, 1, 8, 8)).save(os.path.join(work, "ts_good.pt"))
    torch.save(good.state_dict(), os.path.join(work, "sd_good.pt"))
    # A whole pickled model and a pickle that runs a command when unpickled by Python.
    torch.save(good, os.path.join(work, "whole_model.pt"))
    marker = os.path.join(work, "pwned")
    torch.save({"x": torch.zeros(1)}, os.path.join(work, "evil.pt"))
    with zipfile.ZipFile(os.path.join(work, "evil.pt")) as original:
        entries = {name: original.read(name) for name in original.namelist()}
    with zipfile.ZipFile(os.path.join(work, "evil.pt"), "w") as evil:
        for name, data in entries.items():
            if name.endswith("data.pkl"):
                data = pickle.dumps({"model": Evil(marker)}, protocol=2)
            evil.writestr(name, data)
    # Neither kind of file.
    torch.save(good.state_dict(), os.path.join(work, "legacy.pt"), _use_new_zipfile_serialization=False)
    with open(os.path.join(work, "notes.txt"), "w") as f:
        f.write("these are not weights\n")
    # A state dict of another architecture (digits-cnn-wide), and one with a renamed, a missing
    # and a misshaped tensor.
    torch.save(reference_models.build("digits-cnn-wide", CLASSES, 1).state_dict(), os.path.join(work, "sd_wide.pt"))
    mixed = dict(good.state_dict())
    mixed["fc.weight"] = mixed.pop("linear.weight")
    del mixed["bn3.running_var"]
    mixed["conv1.weight"] = torch.zeros(16, 1, 5, 5)
    torch.save(mixed, os.path.join(work, "sd_mixed.pt"))
    # TorchScript modules that break what attacks rely on.
    example = torch.rand(2, 1, 8, 8)
    for name, module in [
        ("ts_wrong_classes", WrongClasses()),
        ("ts_tuple", TupleOutput()),
        ("ts_nan", NanLogits()),
        ("ts_detached", Detached()),
        ("ts_rounded", Rounded()),
        ("ts_mixes_batch", MixesBatch()),
        ("ts_fp32_only", Fp32Only()),
    ]:
        torch.jit.script(module.eval()).save(os.path.join(work, f"{name}.pt"))
    torch.jit.trace(FixedBatch().eval(), example).save(os.path.join(work, "ts_fixed_batch.pt"))
    print("ok")


def digits_torchscript(args):
    torch.jit.trace(digits_module(), torch.rand(4, 1, 8, 8)).save(args.out)


def resnet18(args):
    torch.manual_seed(0)
    model = reference_models.build("resnet18", CLASSES, 3)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    model.eval()
    os.makedirs(args.out, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(args.out, "resnet18_state_dict.pt"))
    torch.jit.script(model).save(os.path.join(args.out, "resnet18_scripted.pt"))
    torch.jit.trace(model, torch.rand(2, 3, 32, 32)).save(os.path.join(args.out, "resnet18_traced.pt"))


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("work")
    p.add_argument("--per-class-test", type=int, default=50)
    p.add_argument("--eps", type=float, default=4 / 255)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("bad")
    p.add_argument("work")
    p = sub.add_parser("digits-torchscript")
    p.add_argument("out")
    p = sub.add_parser("resnet18")
    p.add_argument("out")
    args = parser.parse_args()
    commands = {"prepare": prepare, "bad": write_bad, "digits-torchscript": digits_torchscript, "resnet18": resnet18}
    commands[args.command](args)


if __name__ == "__main__":
    main()
