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
  ours DATA_DIR MODELS_DIR --model NAME --evaluator BIN --precision P --eps E --json OUT
      [--per-class K] [--autoattack-per-class K] [--attacks pgd20,cw30,autoattack]
      what a user runs: one `evaluator eval` process per attack (PGD-20 and CW-inf-30 with
      steps of eps/4, AutoAttack standard), each timed as a whole process (wall and CPU
      seconds, peak memory), with the per-class counts and AutoAttack's components read from
      its --json output.
  fra31 DATA_DIR WEIGHTS.pt --eps E --json OUT [--autoattack-per-class K]
      fra31's AutoAttack (the `pyautoattack` package: the authors' attack code as published in
      fra31/auto-attack, its driver's interface reworked), version 'standard', on the same
      points, timed per component from its own log.
  precisions DATA_DIR WORK --evaluator BIN --archs A,B,... --json OUT [--per-class K] [--eps E]
      PGD-20 through `evaluator eval` (a whole process each) at every precision on one network
      of every given architecture, CIFAR-shaped, with seeded random weights imported with
      `evaluator import` (the work of an attack does not depend on what the weights learned):
      whether fp32-fast and bf16 pay on each architecture.
  compare SIDE.json [SIDE.json ...] [--markdown OUT.md]
      prints the side-by-side table, with every side's time against torchattacks'.
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


ATTACK_NAMES = {"pgd20": ("pgd-20", "PGD-20"), "cw30": ("cw-30", "CW-inf-30"), "autoattack": ("aa", "AutoAttack")}


def ours(args):
    """`evaluator eval` as a user runs it, one process per attack, timed whole."""
    import subprocess

    environment = dict(os.environ, RUST_LOG="warn")
    if "RFB_THREADS" in os.environ:
        environment["OMP_NUM_THREADS"] = os.environ["RFB_THREADS"]
    entries, peak, versions = [], 0, {}
    for name in args.attacks.split(","):
        flag, display = ATTACK_NAMES[name]
        points = args.autoattack_per_class if name == "autoattack" else args.per_class
        out = args.json + f".{name}.eval.json"
        command = [args.evaluator, "eval", "--models-dir", args.models_dir, "--model", args.model,
                   "--data-dir", args.data_dir, "--per-class", str(points), "--attacks", flag,
                   "--eps", repr(args.eps), "--step-size", repr(args.eps / 4), "--seed", str(args.seed),
                   "--precision", args.precision, "--device", "cpu", "--no-cache", "--quiet", "--json", out]
        wall = time.perf_counter()
        process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - wall
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{' '.join(command)} failed")
        cpu = usage.ru_utime + usage.ru_stime
        peak = max(peak, usage.ru_maxrss * 1024)
        result = json.load(open(out))["results"][0]
        versions = result["versions"]
        robust = [c["correct"] for c in result["classes"]]
        components = []
        if name == "autoattack":
            for c in result["components"]:
                components.append({"name": c["name"], "seconds": c["seconds"], "cpu_seconds": None,
                                   "attacked": c["attacked"], "robust_after": c["robust_after"]})
        print(f"ours {args.precision:<9} {display:<12} {sum(c['total'] for c in result['classes']):>4} points  "
              f"{seconds:>8.1f} s  {cpu:>8.1f} s CPU  robust {sum(robust)}  ({result['elapsed_seconds']:.1f} s computing)", flush=True)
        entries.append({"attack": name, "name": display, "points": sum(c["total"] for c in result["classes"]),
                        "seconds": seconds, "cpu_seconds": cpu, "compute_seconds": result["elapsed_seconds"],
                        "robust_per_class": robust, "components": components})
    report = {"side": f"ours, evaluator eval {args.precision}", "precision": args.precision, "cpu_model": cpu_model(),
              "threads": int(os.environ.get("RFB_THREADS", torch.get_num_threads())), "code_version": versions.get("evaluator", "?"),
              "libtorch": versions.get("libtorch", "?"), "eps": args.eps, "seed": args.seed, "peak_memory_bytes": peak,
              "attacks": entries}
    with open(args.json + ".tmp", "w") as f:
        json.dump(report, f, indent=2)
    os.replace(args.json + ".tmp", args.json)


def fra31(args):
    """fra31's AutoAttack (pyautoattack) on the AutoAttack points, per component from its log."""
    import logging
    import re
    from importlib.metadata import version

    from pyautoattack import AutoAttack

    model = load_model(args.weights)
    images, labels = read_cifar(args.data_dir, False)
    x, y = first_per_class(images, labels, args.autoattack_per_class)
    with torch.no_grad():
        model(x[:1])  # untimed warm-up, as ours
    messages = []

    class Keep(logging.Handler):
        def emit(self, record):
            messages.append((time.perf_counter(), time.process_time(), record.getMessage()))

    logger = logging.getLogger("auto-attack")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(Keep())
    attack = AutoAttack(model, norm="Linf", eps=args.eps, version="standard", seed=args.seed, device="cpu")
    started_wall, started_cpu = time.perf_counter(), time.process_time()
    (adversarial, _), seconds, cpu = timed(lambda: attack.run_standard_evaluation(x, y, batch_size=250))
    assert (adversarial - x).abs().max().item() <= args.eps + 1e-6
    with torch.no_grad():
        correct = model(adversarial).argmax(1) == y
    robust = per_class(y, correct)
    # "robust accuracy after APGD-CE: 30.00% (total time 12.3 s)", one line per component.
    components, previous_wall, previous_cpu = [], started_wall, started_cpu
    attacked = int((model(x).argmax(1) == y).sum().item())
    for wall, cpu_now, message in messages:
        match = re.match(r"robust accuracy after ([A-Z-]+): ([0-9.]+)%", message)
        if match:
            left = round(float(match.group(2)) / 100 * len(y))
            components.append({"name": match.group(1), "seconds": wall - previous_wall, "cpu_seconds": cpu_now - previous_cpu,
                               "attacked": attacked, "robust_after": [left]})
            previous_wall, previous_cpu, attacked = wall, cpu_now, left
    print(f"fra31 AutoAttack {len(y):>4} points  {seconds:>8.1f} s  {cpu:>8.1f} s CPU  robust {sum(robust)}", flush=True)
    report = {"side": f"fra31 autoattack (pyautoattack {version('pyautoattack')})", "precision": "fp32", "cpu_model": cpu_model(),
              "threads": torch.get_num_threads(), "torch": torch.__version__, "eps": args.eps, "seed": args.seed,
              "peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
              "attacks": [{"attack": "autoattack", "name": "AutoAttack", "points": len(y), "seconds": seconds, "cpu_seconds": cpu,
                           "robust_per_class": robust, "components": components}]}
    with open(args.json + ".tmp", "w") as f:
        json.dump(report, f, indent=2)
    os.replace(args.json + ".tmp", args.json)


def precisions(args):
    import subprocess

    environment = dict(os.environ, RUST_LOG="warn")
    if "RFB_THREADS" in os.environ:
        environment["OMP_NUM_THREADS"] = os.environ["RFB_THREADS"]
    rows = []
    for arch in args.archs.split(","):
        torch.manual_seed(0)
        model = reference_models.build(arch, 10, 3)
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.running_mean.uniform_(-0.2, 0.2)
                    module.running_var.uniform_(0.5, 1.5)
        weights = os.path.join(args.work, f"{arch}.pt")
        os.makedirs(args.work, exist_ok=True)
        torch.save(model.state_dict(), weights)
        models = os.path.join(args.work, "models")
        subprocess.run([args.evaluator, "import", "--from", weights, "--arch", arch, "--dataset", "cifar10",
                        "--out", os.path.join(models, arch), "--force"], check=True, env=environment, stdout=subprocess.DEVNULL)
        row = {"arch": arch, "parameters": sum(p.numel() for p in model.parameters()), "seconds": {}, "robust": {}}
        for precision in ["fp32", "fp32-fast", "bf16"]:
            out = os.path.join(args.work, f"{arch}-{precision}.json")
            command = [args.evaluator, "eval", "--models-dir", models, "--model", arch, "--data-dir", args.data_dir,
                       "--per-class", str(args.per_class), "--attacks", "pgd-20", "--eps", repr(args.eps),
                       "--step-size", repr(args.eps / 4), "--precision", precision, "--device", "cpu", "--no-cache",
                       "--quiet", "--json", out]
            wall = time.perf_counter()
            subprocess.run(command, check=True, env=environment, stdout=subprocess.DEVNULL)
            row["seconds"][precision] = time.perf_counter() - wall
            result = json.load(open(out))["results"][0]
            row["robust"][precision] = sum(c["correct"] for c in result["classes"])
        print(f"{arch:<16} " + "  ".join(f"{p} {row['seconds'][p]:6.1f} s ({row['robust'][p]} robust)" for p in row["seconds"]), flush=True)
        rows.append(row)
    lines = [f"PGD-20 (steps of eps/4, eps {args.eps * 255:.2f}/255) on {args.per_class * 10} CIFAR-shaped points through `evaluator eval`, "
             "whole process, seeded random weights; seconds, and fp32's time over each precision's.", "",
             "| architecture | parameters | fp32 | fp32-fast | bf16 | robust (fp32 / fp32-fast / bf16) |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        t = row["seconds"]
        lines.append(f"| {row['arch']} | {row['parameters'] / 1e6:.1f} M | {t['fp32']:.1f} | {t['fp32-fast']:.1f} ({t['fp32'] / t['fp32-fast']:.2f}x) | "
                     f"{t['bf16']:.1f} ({t['fp32'] / t['bf16']:.2f}x) | {row['robust']['fp32']} / {row['robust']['fp32-fast']} / {row['robust']['bf16']} |")
    with open(args.json + ".tmp", "w") as f:
        json.dump({"rows": rows, "markdown": "\n".join(lines)}, f, indent=2)
    os.replace(args.json + ".tmp", args.json)
    print("\n".join(lines))


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
    sides = [json.load(open(f)) for f in args.files]
    baseline = next((s for s in sides if s["side"] == "torchattacks"), sides[0])
    gib = 1024 ** 3
    first = sides[0]
    lines = [
        f"CPU: {first['cpu_model']}, {first['threads']} threads; eps {first['eps'] * 255:.2f}/255. "
        + "; ".join(f"{s['side']}" + (f" (torch {s['torch']})" if "torch" in s else f" ({s.get('code_version', '')} on libtorch {s.get('libtorch', '')})") for s in sides)
        + ". Times in seconds of the whole process or component (CPU seconds in parentheses where known); "
        f"\"x\" is {baseline['side']}'s time over the side's.",
        "",
        "| work | points | " + " | ".join(f"{s['side']}: s (CPU s) | robust | x" for s in sides) + " |",
        "| --- | ---: | " + " | ".join("---: | ---: | ---:" for _ in sides) + " |",
    ]

    def cell(part, reference):
        if part is None:
            return ["", "", ""]
        cpu = f" ({part['cpu_seconds']:.1f})" if part.get("cpu_seconds") is not None else ""
        ratio = f"{reference['seconds'] / part['seconds']:.2f}x" if reference and part["seconds"] > 0 else ""
        return [f"{part['seconds']:.1f}{cpu}", str(part["robust"]), ratio]

    names = []
    for s in sides:
        for e in s["attacks"]:
            if e["attack"] not in names:
                names.append(e["attack"])
    for name in names:
        entries = [next((e for e in s["attacks"] if e["attack"] == name), None) for s in sides]
        base = next((e for s, e in zip(sides, entries) if s is baseline), None)
        summary = lambda e: None if e is None else {"seconds": e["seconds"], "cpu_seconds": e.get("cpu_seconds"), "robust": sum(e["robust_per_class"])}  # noqa: E731
        known = next(e for e in entries if e is not None)
        cells = [f"**{known['name']}**", str(known["points"])]
        for e in entries:
            cells += cell(summary(e), summary(base))
        lines.append("| " + " | ".join(cells) + " |")
        longest = max(len(e["components"]) if e else 0 for e in entries)
        for index in range(longest):
            parts = []
            for e in entries:
                c = e["components"][index] if e is not None and index < len(e["components"]) else None
                parts.append(None if c is None else {"name": c["name"], "seconds": c["seconds"], "cpu_seconds": c.get("cpu_seconds"),
                                                     "robust": f"{sum(c['robust_after'])} of {c['attacked']}"})
            base_part = parts[sides.index(baseline)] if base else None
            label = next(p["name"] for p in parts if p is not None)
            cells = [f"  {label}", ""]
            for p in parts:
                cells += cell(p, base_part)
            lines.append("| " + " | ".join(cells) + " |")
        reference = base["robust_per_class"] if base else None
        for s, e in zip(sides, entries):
            if e is not None and reference is not None and e["robust_per_class"] != reference:
                lines.append(f"| per class differs: {s['side']} {e['robust_per_class']} vs {baseline['side']} {reference} | |" + " | | |" * len(sides))
    lines.append("")
    lines.append("Peak resident memory of the process: " + "; ".join(f"{s['side']} {s['peak_memory_bytes'] / gib:.2f} GiB" for s in sides) + ".")
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
    p = sub.add_parser("ours")
    p.add_argument("data_dir")
    p.add_argument("models_dir")
    p.add_argument("--model", required=True)
    p.add_argument("--evaluator", required=True)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--eps", type=float, required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--per-class", type=int, default=10)
    p.add_argument("--autoattack-per-class", type=int, default=2)
    p.add_argument("--attacks", default="pgd20,cw30,autoattack")
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("fra31")
    p.add_argument("data_dir")
    p.add_argument("weights")
    p.add_argument("--eps", type=float, required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--autoattack-per-class", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("precisions")
    p.add_argument("data_dir")
    p.add_argument("work")
    p.add_argument("--evaluator", required=True)
    p.add_argument("--archs", required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--per-class", type=int, default=5)
    p.add_argument("--eps", type=float, default=8 / 255)
    p = sub.add_parser("compare")
    p.add_argument("files", nargs="+")
    p.add_argument("--markdown")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("RFB_THREADS", torch.get_num_threads())))
    {"train": train, "calibrate": calibrate, "run": run, "ours": ours, "fra31": fra31, "precisions": precisions, "compare": compare}[args.command](args)


if __name__ == "__main__":
    main()
