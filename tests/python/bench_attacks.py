"""PyTorch side of the attack speed benchmark (`scripts/bench-attacks.sh`).

Subcommands:
  train DATA_DIR OUT.pt [--epochs N] [--eps E]
      trains the benchmark's ResNet-18 (our parameter names) briefly on the synthetic CIFAR-10
      files (naturally by default; with --eps, FGSM adversarial training with a random start and
      step 1.25 eps) and saves its state dict.
  calibrate DATA_DIR WEIGHTS.pt [--per-class K]
      PGD-20 robust accuracy at a few radii on the benchmark's points; prints the radius whose
      survivors are closest to 35% (the benchmark wants 20-50% surviving APGD-CE).
  run DATA_DIR WEIGHTS.pt --eps E --json OUT [--per-class K] [--autoattack-per-class K]
      [--attacks pgd20,cw30,autoattack]
      times torchattacks' PGD-20, a plain PyTorch CW-inf loop (30 steps, kappa 50, the
      robust-fairness papers' evaluation) and torchattacks' AutoAttack (standard, with the
      reference's 100 iterations per component) on the first K test images of every class, per
      AutoAttack component as torchattacks' MultiAttack runs them.
  compare OURS.json [OURS2.json ...] THEIRS.json [--markdown OUT.md]
      prints the side-by-side table and the ratios (theirs / ours time).
"""

import argparse
import json
import os
import platform
import resource
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_models  # noqa: E402


def read_cifar(data_dir, train):
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] if train else ["test_batch.bin"]
    records = []
    for name in names:
        raw = np.fromfile(os.path.join(data_dir, name), dtype=np.uint8)
        records.append(raw.reshape(-1, 3073))
    raw = np.concatenate(records)
    labels = torch.from_numpy(raw[:, 0].astype(np.int64))
    images = torch.from_numpy(raw[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
    return images, labels


def first_per_class(images, labels, per_class, classes=10):
    """The first `per_class` images of every class in file order, in file order (as ours takes
    them)."""
    taken = [0] * classes
    keep = []
    for i, y in enumerate(labels.tolist()):
        if taken[y] < per_class:
            taken[y] += 1
            keep.append(i)
    index = torch.tensor(keep)
    return images[index], labels[index]


def load_model(weights):
    model = reference_models.build("resnet18", 10, 3)
    model.load_state_dict(torch.load(weights, map_location="cpu"))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def train(args):
    torch.manual_seed(0)
    images, labels = read_cifar(args.data_dir, True)
    model = reference_models.build("resnet18", 10, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    steps = args.epochs * ((len(labels) + 63) // 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=steps)
    eps = args.eps
    for epoch in range(args.epochs):
        order = torch.randperm(len(labels))
        model.train()
        correct = 0
        for start in range(0, len(labels), 64):
            index = order[start:start + 64]
            x, y = images[index], labels[index]
            if eps > 0:
                delta = (torch.rand_like(x) * 2 - 1) * eps
                delta.requires_grad_(True)
                loss = F.cross_entropy(model((x + delta).clamp(0, 1)), y)
                (grad,) = torch.autograd.grad(loss, delta)
                x = (x + (delta + 1.25 * eps * grad.sign()).clamp(-eps, eps).detach()).clamp(0, 1)
            output = model(x)
            loss = F.cross_entropy(output, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            correct += (output.argmax(1) == y).sum().item()
        print(f"epoch {epoch + 1}: training accuracy {correct / len(labels):.3f}", flush=True)
    torch.save(model.state_dict(), args.out)


def pgd(model, x, y, eps, steps, step_size, loss_fn):
    delta = (torch.rand_like(x) * 2 - 1) * eps
    adversarial = (x + delta).clamp(0, 1)
    for _ in range(steps):
        adversarial.requires_grad_(True)
        loss = loss_fn(model(adversarial), y)
        (grad,) = torch.autograd.grad(loss, adversarial)
        adversarial = adversarial.detach() + step_size * grad.sign()
        adversarial = torch.min(torch.max(adversarial, x - eps), x + eps).clamp(0, 1)
    return adversarial.detach()


def cw_loss(logits, y, kappa=50.0):
    """The robust-fairness papers' CW-inf loss: -max(z_y - max_{j != y} z_j + kappa, 0), summed."""
    one_hot = F.one_hot(y, logits.shape[1]).bool()
    true = logits[one_hot]
    other = logits.masked_fill(one_hot, float("-inf")).amax(1)
    return -torch.clamp(true - other + kappa, min=0).sum()


def calibrate(args):
    model = load_model(args.weights)
    images, labels = read_cifar(args.data_dir, False)
    x, y = first_per_class(images, labels, args.per_class)
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    print(f"clean accuracy {clean:.3f} on {len(y)} points")
    best = None
    for eps255 in args.radii.split(","):
        eps = float(eps255) / 255
        torch.manual_seed(0)
        adversarial = pgd(model, x, y, eps, 20, eps / 4, lambda out, t: F.cross_entropy(out, t, reduction="sum"))
        with torch.no_grad():
            robust = (model(adversarial).argmax(1) == y).float().mean().item()
        print(f"eps {eps255}/255: PGD-20 robust {robust:.3f}", flush=True)
        if best is None or abs(robust - 0.35) < abs(best[1] - 0.35):
            best = (eps255, robust)
        if robust < 0.2:
            break  # larger radii leave fewer
    print(f"chosen eps {best[0]}/255")


def timed(function):
    cpu, wall = time.process_time(), time.perf_counter()
    result = function()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def per_class(y, correct, classes=10):
    return [int(correct[y == k].sum().item()) for k in range(classes)]


def run(args):
    import torchattacks

    model = load_model(args.weights)
    images, labels = read_cifar(args.data_dir, False)
    eps = args.eps
    entries = []
    for name in args.attacks.split(","):
        points = args.autoattack_per_class if name == "autoattack" else args.per_class
        x, y = first_per_class(images, labels, points)
        with torch.no_grad():
            model(x[:1])  # untimed warm-up, as ours
        torch.manual_seed(args.seed)
        components = []
        if name == "pgd20":
            attack = torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=20, random_start=True)
            adversarial, seconds, cpu = timed(lambda: attack(x, y))
            display = "PGD-20"
        elif name == "cw30":
            adversarial, seconds, cpu = timed(lambda: pgd(model, x, y, eps, 30, eps / 4, cw_loss))
            display = "CW-inf-30"
        elif name == "autoattack":
            attack = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=10, seed=args.seed)
            parts = attack._autoattack.attacks
            # The reference configuration (fra31/auto-attack): 100 iterations for APGD, APGD-T and
            # FAB-T (torchattacks' own default is 10) and Square's unrescaled schedule.
            for component in parts:
                if hasattr(component, "steps"):
                    component.steps = 100
                if hasattr(component, "rescale_schedule"):
                    component.rescale_schedule = False
            display = "AutoAttack"
            # torchattacks' MultiAttack step by step, timed per component: each component runs
            # on the points every earlier one failed to break.
            adversarial = x.clone()
            fails = torch.arange(len(y))
            seconds = cpu = 0.0
            for component in parts:
                if len(fails) == 0:
                    break
                attacked = len(fails)
                candidate, s, c = timed(lambda: component(x[fails], y[fails]))
                with torch.no_grad():
                    still = model(candidate).argmax(1) == y[fails]
                adversarial[fails[~still]] = candidate[~still]
                fails = fails[still]
                seconds += s
                cpu += c
                robust_after = torch.zeros(len(y), dtype=torch.bool)
                robust_after[fails] = True
                components.append({
                    "name": type(component).__name__,
                    "seconds": s,
                    "cpu_seconds": c,
                    "attacked": attacked,
                    "robust_after": per_class(y, robust_after),
                })
        else:
            raise SystemExit(f"unknown attack {name}")
        assert (adversarial - x).abs().max().item() <= eps + 1e-6
        with torch.no_grad():
            correct = model(adversarial).argmax(1) == y
        robust = per_class(y, correct)
        print(f"torch {display:<12} {len(y):>4} points  {seconds:>8.1f} s  {cpu:>8.1f} s CPU  robust {sum(robust)}", flush=True)
        for c in components:
            print(f"      {c['name']:<12} {c['attacked']:>4} attacked  {c['seconds']:>8.1f} s  {c['cpu_seconds']:>8.1f} s CPU  robust after {sum(c['robust_after'])}")
        entries.append({"attack": name, "name": display, "points": len(y), "seconds": seconds, "cpu_seconds": cpu,
                        "robust_per_class": robust, "components": components})
    report = {
        "side": "torchattacks",
        "precision": "fp32",
        "cpu_model": cpu_model(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchattacks": torchattacks.__version__,
        "python": platform.python_version(),
        "eps": eps,
        "seed": args.seed,
        "peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "attacks": entries,
    }
    with open(args.json + ".tmp", "w") as f:
        json.dump(report, f, indent=2)
    os.replace(args.json + ".tmp", args.json)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def compare(args):
    *ours_files, theirs_file = args.files
    theirs = json.load(open(theirs_file))
    ours_runs = [json.load(open(f)) for f in ours_files]
    gib = 1024 ** 3
    lines = [
        f"CPU: {theirs['cpu_model']}, {theirs['threads']} threads; eps {theirs['eps'] * 255:.2f}/255; "
        f"torch {theirs['torch']}, torchattacks {theirs['torchattacks']}; ours {ours_runs[0]['code_version']} "
        f"on libtorch {ours_runs[0]['libtorch']}.",
        "",
        "| work | points | torchattacks / PyTorch: s (CPU s) | robust | "
        + " | ".join(f"ours {o['precision']}: s (CPU s) | robust | faster by (CPU)" for o in ours_runs) + " |",
        "| --- | ---: | ---: | ---: | " + " | ".join("---: | ---: | ---:" for _ in ours_runs) + " |",
    ]

    def row(label, points, their, ours_parts):
        cells = [label, str(points), f"{their['seconds']:.1f} ({their['cpu_seconds']:.1f})", their["robust"]]
        for part in ours_parts:
            if part is None:
                cells += ["", "", ""]
                continue
            ratio = their["seconds"] / part["seconds"] if part["seconds"] > 0 else float("nan")
            cpu_ratio = their["cpu_seconds"] / part["cpu_seconds"] if part["cpu_seconds"] > 0 else float("nan")
            cells += [f"{part['seconds']:.1f} ({part['cpu_seconds']:.1f})", part["robust"], f"{ratio:.2f}x ({cpu_ratio:.2f}x)"]
        return "| " + " | ".join(str(c) for c in cells) + " |"

    for entry in theirs["attacks"]:
        ours_entries = [next((e for e in o["attacks"] if e["attack"] == entry["attack"]), None) for o in ours_runs]
        summary = lambda e: None if e is None else {"seconds": e["seconds"], "cpu_seconds": e["cpu_seconds"], "robust": sum(e["robust_per_class"])}  # noqa: E731
        lines.append(row(f"**{entry['name']}**", entry["points"], summary(entry), [summary(e) for e in ours_entries]))
        for index, component in enumerate(entry["components"]):
            parts = []
            for e in ours_entries:
                c = e["components"][index] if e is not None and index < len(e["components"]) else None
                parts.append(None if c is None else {"seconds": c["seconds"], "cpu_seconds": c["cpu_seconds"], "robust": f"{sum(c['robust_after'])} of {c['attacked']}"})
            mine = {"seconds": component["seconds"], "cpu_seconds": component["cpu_seconds"], "robust": f"{sum(component['robust_after'])} of {component['attacked']}"}
            lines.append(row(f"  {component['name']}", component["attacked"], mine, parts))
        for o, e in zip(ours_runs, ours_entries):
            if e is not None and e["robust_per_class"] != entry["robust_per_class"]:
                lines.append(f"|  per class differs ({o['precision']}): ours {e['robust_per_class']} vs {entry['robust_per_class']} | | | | " + " | ".join("| |" for _ in ours_runs) + " |")
    lines.append("")
    lines.append("Peak resident memory of the whole process: torchattacks " f"{theirs['peak_memory_bytes'] / gib:.2f} GiB; "
                 + "; ".join(f"ours {o['precision']} {o['peak_memory_bytes'] / gib:.2f} GiB" for o in ours_runs) + ".")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train")
    p.add_argument("data_dir")
    p.add_argument("out")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--eps", type=float, default=0.0, help="FGSM adversarial training radius (0: natural training)")
    p = sub.add_parser("calibrate")
    p.add_argument("data_dir")
    p.add_argument("weights")
    p.add_argument("--per-class", type=int, default=3)
    p.add_argument("--radii", default="0.5,1,2,4")
    p = sub.add_parser("run")
    p.add_argument("data_dir")
    p.add_argument("weights")
    p.add_argument("--eps", type=float, required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--per-class", type=int, default=10)
    p.add_argument("--autoattack-per-class", type=int, default=2)
    p.add_argument("--attacks", default="pgd20,cw30,autoattack")
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("compare")
    p.add_argument("files", nargs="+")
    p.add_argument("--markdown")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("RFB_THREADS", torch.get_num_threads())))
    {"train": train, "calibrate": calibrate, "run": run, "compare": compare}[args.command](args)


if __name__ == "__main__":
    main()
