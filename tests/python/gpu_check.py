"""The prepared GPU check (`scripts/gpu-check.sh`): one run, on the prebuilt binaries and the
machine's own PyTorch, that writes OUT/report.md.

    gpu_check.py --bin DIR --work DIR --out DIR [--small]

Sections of the report, each computed (a failure is written into its section, and the run
goes on):
  1. CUDA is used: the machine's PyTorch sees a GPU, and `evaluator eval` reports the device
     it ran on.
  2. Device against CPU: per-class counts of every attack (clean, FGSM, PGD-20, CW-inf, and
     AutoAttack's APGD-CE, APGD-T, FAB-T, Square) on a digits model and on a CIFAR-shaped
     ResNet-18, on the device and on the CPU. Expected: every attack draws its random numbers per
     example from its own streams, on the host, so both sides start from the same points; what
     can differ is fp32 rounding (other kernels, other summation orders) flipping a decision on a
     point at a class boundary. The check allows, per attack, at most
     max(1, 1% of the points) points of difference in total (AGREEMENT_POINTS), and reports
     every difference. With --small both sides are the CPU, so the counts must be equal.
  3. Speed beside the reference on the same device, weights and points: PGD-20 on 10 000
     CIFAR-shaped points with ResNet-18; AutoAttack (standard) on a ResNet-18 trained briefly with
     FGSM adversarial training (robust enough that every component has work); one ABSLD training
     epoch against a PyTorch implementation of the authors' step; bf16 against fp32. The reference
     is torchattacks where the Python has it, else the plain PyTorch PGD loop below (said so in
     the report); AutoAttack has no plain-PyTorch stand-in and is then reported as ours alone.

Data: synthetic CIFAR-10 files (tests/python/byo_model.py's class templates plus noise), written
in the format the evaluator and trainer read.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import byo_model  # noqa: E402
import reference_models  # noqa: E402


def agreement_points(points):
    """Points of difference allowed per attack between the device and the CPU (see above)."""
    return max(1, points // 100)


class Check:
    def __init__(self, args):
        self.args = args
        self.small = args.small
        self.device = "cpu" if args.small or not torch.cuda.is_available() else "cuda"
        # The CIFAR-shaped network: ResNet-18 on the GPU; in CPU mode the smallest CIFAR network
        # we have (WRN-10-1), so that the suite's run stays short. The model keeps the name
        # "resnet18" in the report's tables either way (its architecture is stated in Set-up).
        self.arch = "wrn-10-1" if args.small else "resnet18"
        self.sections = []
        self.failures = 0
        os.makedirs(args.work, exist_ok=True)
        os.makedirs(args.out, exist_ok=True)

    # ------------------------------------------------------------------ helpers

    def log(self, text):
        print(text, flush=True)

    def binary(self, name):
        return os.path.join(self.args.bin, name)

    def run(self, command, **kwargs):
        self.log("$ " + " ".join(command))
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, RUST_LOG="warn"), **kwargs)
        seconds = time.perf_counter() - started
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
        return result, seconds

    def section(self, title, work):
        self.log(f"== {title}")
        started = time.perf_counter()
        try:
            lines = work()
        except Exception:  # the report says what failed; the other sections still run
            self.failures += 1
            lines = ["**FAILED**", "", "```", traceback.format_exc()[-4000:], "```"]
        self.sections.append((title, lines, time.perf_counter() - started))

    def evaluate(self, models, model, data_dir, per_class, attacks, device, precision="fp32", batch=256, tag=""):
        out = os.path.join(self.args.work, f"eval-{model.replace('/', '_')}-{device}-{precision}{tag}.json")
        command = [self.binary("evaluator"), "eval", "--models-dir", models, "--model", model, "--per-class",
                   str(per_class), "--attacks", attacks, "--device", device, "--precision", precision,
                   "--batch-size", str(batch), "--no-cache", "--quiet", "--in-process", "--json", out]
        if data_dir:
            command += ["--data-dir", data_dir]
        _, seconds = self.run(command)
        return json.load(open(out))["results"], seconds

    # ------------------------------------------------------------------ set-up

    def sizes(self):
        if self.small:
            return dict(test_per_class=2, train_per_class=4, digits_epochs=1, digits_per_class=1,
                        cifar_agree_per_class=1, aa_iterations=2, pgd_points_per_class=2,
                        aa_points_per_class=1, train_epochs=1, absld_batch=8)
        return dict(test_per_class=1000, train_per_class=500, digits_epochs=3, digits_per_class=0,
                    cifar_agree_per_class=5, aa_iterations=10, pgd_points_per_class=1000,
                    aa_points_per_class=30, train_epochs=3, absld_batch=128)

    def write_data(self):
        s = self.sizes()
        data = os.path.join(self.args.work, "cifar")
        generator = torch.Generator().manual_seed(0)
        coarse = torch.rand(10, 3, 4, 4, generator=generator)
        templates = 0.5 + 0.3 * (F.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False) - 0.5)
        os.makedirs(data, exist_ok=True)
        for batch in range(1, 6):
            pixels, labels = byo_model.synthetic_split(s["train_per_class"] // 5 or 1, generator, templates)
            byo_model.write_cifar(os.path.join(data, f"data_batch_{batch}.bin"), pixels, labels)
        pixels, labels = byo_model.synthetic_split(s["test_per_class"], generator, templates)
        byo_model.write_cifar(os.path.join(data, "test_batch.bin"), pixels, labels)
        return data

    def train_resnet(self, data, eps):
        """A ResNet-18 (our parameter names) trained briefly, FGSM adversarial training with a
        random start (robust enough for AutoAttack's components to have work), on the device."""
        s = self.sizes()
        torch.manual_seed(0)
        images, labels = [], []
        for batch in range(1, 6):
            x, y = byo_model.read_cifar(os.path.join(data, f"data_batch_{batch}.bin"))
            images.append(x)
            labels.append(y)
        images, labels = torch.cat(images).to(self.device), torch.cat(labels).to(self.device)
        model = reference_models.build(self.arch, 10, 3).to(self.device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        for _ in range(s["train_epochs"]):
            order = torch.randperm(len(labels), device=self.device)
            model.train()
            for start in range(0, len(labels), 64):
                index = order[start:start + 64]
                x, y = images[index], labels[index]
                delta = ((torch.rand_like(x) * 2 - 1) * eps).requires_grad_(True)
                (grad,) = torch.autograd.grad(F.cross_entropy(model((x + delta).clamp(0, 1)), y), delta)
                x = (x + (delta + 1.25 * eps * grad.sign()).clamp(-eps, eps).detach()).clamp(0, 1)
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        model.eval()
        weights = os.path.join(self.args.work, "resnet18.pt")
        torch.save({k: v.cpu() for k, v in model.state_dict().items()}, weights)
        return weights

    def setup(self):
        s = self.sizes()
        lines = []
        self.models = os.path.join(self.args.work, "models")
        self.data = self.write_data()
        lines.append(f"- synthetic CIFAR-10 files: {s['train_per_class'] // 5 * 5 or 5} training and "
                     f"{s['test_per_class']} test images per class")
        _, seconds = self.run([self.binary("trainer"), "train", "--method", "natural", "--dataset", "digits",
                               "--epochs", str(s["digits_epochs"]), "--device", self.device, "--quiet",
                               "--out", os.path.join(self.models, "digits")])
        lines.append(f"- digits model: `trainer train --method natural --epochs {s['digits_epochs']}` on {self.device}, {seconds:.1f} s")
        started = time.perf_counter()
        self.eps = 8 / 255
        weights = self.train_resnet(self.data, self.eps)
        lines.append(f"- CIFAR network ({self.arch}): {s['train_epochs']} epochs of FGSM adversarial training (eps 8/255) in PyTorch on "
                     f"{self.device}, {time.perf_counter() - started:.1f} s; imported with `evaluator import --arch {self.arch}`")
        self.run([self.binary("evaluator"), "import", "--from", weights, "--arch", self.arch, "--dataset", "cifar10",
                  "--out", os.path.join(self.models, "resnet18"), "--force"])
        return lines

    # ------------------------------------------------------------------ 1. CUDA used

    def cuda_used(self):
        lines = [f"- PyTorch {torch.__version__} (Python {platform.python_version()}), CUDA available: "
                 f"{torch.cuda.is_available()}" + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "")]
        version, _ = self.run([self.binary("evaluator"), "--version"])
        lines.append(f"- binaries: `{version.stdout.strip()}` from `{self.args.bin}`")
        results, _ = self.evaluate(self.models, "digits/best", None, 1, "clean", self.device)
        ran_on = results[0]["device"]
        lines.append(f"- `evaluator eval --device {self.device}` ran on: **{ran_on}** (libtorch {results[0]['versions']['libtorch']})")
        if self.small:
            lines.append("- CPU mode (--small): the device is the CPU by design")
        elif ran_on != "cuda":
            raise RuntimeError(f"the evaluator ran on {ran_on}, not CUDA: the binaries do not load libtorch_cuda.so?")
        return lines

    # ------------------------------------------------------------------ 2. agreement

    def agreement(self):
        s = self.sizes()
        n = s["aa_iterations"]
        attacks = f"clean,fgsm,pgd,cw,aa@{n}"
        lines = [f"Attacks `{attacks}` (AutoAttack standard at {n} iterations per component, Square {n} queries), "
                 "fp32, eps 8/255, seed 0. Allowed: per attack, at most max(1, 1% of the points) points of "
                 "difference in total over the classes" + (" (CPU mode: both sides are the CPU, so 0 expected)." if self.small else "."),
                 "", "| model | attack | points | robust on " + self.device + " | robust on CPU | points differing | within |",
                 "|---|---|---|---|---|---|---|"]
        bad = []
        for model, data, per_class in [("digits/best", None, s["digits_per_class"]),
                                       ("resnet18", self.data, s["cifar_agree_per_class"])]:
            on_device, _ = self.evaluate(self.models, model, data, per_class, attacks, self.device, tag="-agree")
            on_cpu, _ = self.evaluate(self.models, model, data, per_class, attacks, "cpu", tag="-agree-cpu")
            for d, c in zip(on_device, on_cpu):
                dc = [k["correct"] for k in d["classes"]]
                cc = [k["correct"] for k in c["classes"]]
                points = sum(k["total"] for k in d["classes"])
                # Points whose class after the attack differs, at least: half the cell-wise difference
                # of the confusion rows (a point moving from one cell to another changes two cells),
                # which also sees points of one class that flip in opposite directions; the
                # per-class robust counts alone where a side has no rows.
                rows_d = [k.get("predicted_as") or [] for k in d["classes"]]
                rows_c = [k.get("predicted_as") or [] for k in c["classes"]]
                if all(rows_d) and all(rows_c):
                    differing = sum(abs(x - y) for rd, rc in zip(rows_d, rows_c) for x, y in zip(rd, rc)) // 2
                else:
                    differing = sum(abs(a - b) for a, b in zip(dc, cc))
                allowed = 0 if self.small else agreement_points(points)
                ok = differing <= allowed
                if not ok:
                    bad.append(f"{model} {d['attack_name']}")
                lines.append(f"| {model} | {d['attack_name']} | {points} | {sum(dc)} | {sum(cc)} | {differing} | "
                             f"{'yes' if ok else '**NO**'} (≤ {allowed}) |")
                for dcomp, ccomp in zip(d.get("components", []), c.get("components", [])):
                    a, b = dcomp["robust_after"], ccomp["robust_after"]
                    lines.append(f"| {model} | &nbsp;after {dcomp['name']} | {dcomp['attacked']} | {sum(a)} | {sum(b)} | "
                                 f"{sum(abs(x - y) for x, y in zip(a, b))} | |")
        lines += ["", "Agreement: " + ("**all within the allowance**" if not bad else "**outside the allowance: " + ", ".join(bad) + "**")]
        if bad:
            raise RuntimeError("\n".join(lines))
        return lines

    # ------------------------------------------------------------------ 3. speed

    def reference_model(self, dtype=torch.float32):
        model = reference_models.build(self.arch, 10, 3)
        model.load_state_dict(torch.load(os.path.join(self.args.work, "resnet18.pt"), map_location="cpu"))
        model = model.to(self.device).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return model

    def test_points(self, per_class):
        x, y = byo_model.read_cifar(os.path.join(self.data, "test_batch.bin"))
        return bench_first_per_class(x, y, per_class)

    def synchronize(self):
        if self.device == "cuda":
            torch.cuda.synchronize()

    def pytorch_pgd(self, model, x, y, batch, autocast=False):
        """PGD-20, eps/4 steps, uniform start: torchattacks' PGD where installed, else this loop."""
        try:
            import torchattacks
            attack = torchattacks.PGD(model, eps=self.eps, alpha=self.eps / 4, steps=20, random_start=True)
            name = f"torchattacks {torchattacks.__version__} PGD"
        except ImportError:
            attack, name = None, "plain PyTorch PGD loop (torchattacks not installed here)"
        robust = 0
        self.synchronize()
        started = time.perf_counter()
        for start in range(0, len(y), batch):
            xb, yb = x[start:start + batch].to(self.device), y[start:start + batch].to(self.device)
            with torch.autocast(self.device, dtype=torch.bfloat16, enabled=autocast):
                if attack is not None:
                    adversarial = attack(xb, yb)
                else:
                    adversarial = plain_pgd(model, xb, yb, self.eps, 20, self.eps / 4)
            with torch.no_grad():
                robust += (model(adversarial).float().argmax(1) == yb).sum().item()
        self.synchronize()
        return time.perf_counter() - started, robust, name

    def speed_pgd(self):
        s = self.sizes()
        per_class = s["pgd_points_per_class"]
        x, y = self.test_points(per_class)
        batch = 500 if not self.small else 16
        lines = [f"PGD-20 (eps 8/255, steps of eps/4, uniform start) on {len(y)} CIFAR-shaped points, ResNet-18, "
                 f"batch {batch}, {self.device}. Ours: `evaluator eval --attacks pgd` as one process (wall, model "
                 "loading and checks included) and its own compute time; the reference: a Python process already "
                 "holding the model and data. Anchor: under 30 s on one H100.", "",
                 "| side | precision | robust | seconds (compute) | seconds (whole process) |", "|---|---|---|---|---|"]
        model = self.reference_model()
        for precision in ["fp32", "bf16"]:
            results, wall = self.evaluate(self.models, "resnet18", self.data, per_class, "pgd", self.device, precision, batch, tag="-speed")
            robust = sum(k["correct"] for k in results[0]["classes"])
            lines.append(f"| ours | {precision} | {robust} | {results[0]['elapsed_seconds']:.2f} | {wall:.2f} |")
            seconds, robust, name = self.pytorch_pgd(model, x, y, batch, autocast=precision == "bf16")
            lines.append(f"| {name} | {precision}{' (autocast)' if precision == 'bf16' else ''} | {robust} | {seconds:.2f} | |")
        lines += ["", "Ours at bf16 attacks with a bf16 copy and judges every decision with the fp32 network; "
                  "PyTorch's autocast both attacks and judges in bf16, so the robust counts may differ."]
        return lines

    def speed_autoattack(self):
        s = self.sizes()
        per_class = s["aa_points_per_class"]
        iterations = "aa" if not self.small else f"aa@{s['aa_iterations']}"
        results, wall = self.evaluate(self.models, "resnet18", self.data, per_class, iterations, self.device, tag="-aa")
        r = results[0]
        lines = [f"AutoAttack standard ({'100 iterations' if not self.small else iterations}) on {10 * per_class} points "
                 f"of the FGSM-trained ResNet-18, {self.device}.", "", "| side | robust | seconds |", "|---|---|---|",
                 f"| ours (`evaluator eval --attacks {iterations}`) | {sum(k['correct'] for k in r['classes'])} | "
                 f"{r['elapsed_seconds']:.2f} (whole process {wall:.2f}) |"]
        try:
            import torchattacks
        except ImportError:
            return lines + ["", "torchattacks is not installed for this Python: no reference time (carry its wheel; docs/gpu.md)."]
        x, y = self.test_points(per_class)
        model = self.reference_model()
        if self.small:
            return lines + ["", "torchattacks' AutoAttack runs its full iterations only: skipped in CPU mode."]
        attack = torchattacks.AutoAttack(model, norm="Linf", eps=self.eps, version="standard", n_classes=10, seed=0)
        self.synchronize()
        started = time.perf_counter()
        robust = 0
        for start in range(0, len(y), 250):
            xb, yb = x[start:start + 250].to(self.device), y[start:start + 250].to(self.device)
            adversarial = attack(xb, yb)
            with torch.no_grad():
                robust += (model(adversarial).argmax(1) == yb).sum().item()
        self.synchronize()
        lines.append(f"| torchattacks {torchattacks.__version__} AutoAttack | {robust} | {time.perf_counter() - started:.2f} |")
        return lines

    def speed_absld(self):
        s = self.sizes()
        out = os.path.join(self.args.work, "absld")
        batch = s["absld_batch"]
        command = [self.binary("trainer"), "train", "--method", "absld", "--dataset", "cifar10", "--data-dir", self.data,
                   "--arch", self.arch, "--teacher", os.path.join(self.models, "resnet18"), "--teacher-arch", self.arch,
                   "--epochs", "1", "--batch-size", str(batch), "--device", self.device, "--quiet", "--out", out]
        _, wall = self.run(command)
        log = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
        ours = log[-1].get("seconds")
        images = s["train_per_class"] // 5 * 5 * 10 or 50
        reference = self.pytorch_absld_epoch(batch)
        return [f"One ABSLD epoch (student ResNet-18, teacher the FGSM-trained ResNet-18, PGD-10 inner maximisation of "
                f"the KL to the teacher's soft labels, batch {batch}) on the {images} synthetic training images, {self.device}.",
                "", "| side | seconds |", "|---|---|",
                f"| ours (`trainer train --method absld --epochs 1`) | {ours} per the log (whole process {wall:.2f}, "
                "with the end-of-epoch evaluation) |",
                f"| PyTorch, the authors' step (tests/python/gpu_check.py) | {reference:.2f} |"]

    def pytorch_absld_epoch(self, batch):
        """One epoch of the step of zhaoshiji123/ABSLD's CIFAR-10 script, written from its facts:
        the student's adversarial examples maximise the KL to the teacher's clean soft labels
        (10 steps of 2/255 from x + 0.001 N(0, 1), the student in eval mode), then 5/6 KL on the
        adversarial and 1/6 on the clean inputs to the teacher's logits divided by the class
        temperatures (all 1 in the first epoch), SGD."""
        images, labels = [], []
        for b in range(1, 6):
            x, y = byo_model.read_cifar(os.path.join(self.data, f"data_batch_{b}.bin"))
            images.append(x)
            labels.append(y)
        images, labels = torch.cat(images).to(self.device), torch.cat(labels).to(self.device)
        teacher = self.reference_model()
        student = reference_models.build(self.arch, 10, 3).to(self.device)
        optimizer = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
        tau_adv = torch.ones(10, device=self.device)
        tau_nat = torch.ones(10, device=self.device)
        self.synchronize()
        started = time.perf_counter()
        order = torch.randperm(len(labels), device=self.device)
        for start in range(0, len(labels), batch):
            index = order[start:start + batch]
            x, y = images[index], labels[index]
            with torch.no_grad():
                teacher_logits = teacher(x)
            student.eval()
            target = F.softmax(teacher_logits, dim=1)
            adversarial = x + 0.001 * torch.randn_like(x)
            for _ in range(10):
                adversarial.requires_grad_(True)
                loss = F.kl_div(F.log_softmax(student(adversarial), dim=1), target, reduction="sum")
                (grad,) = torch.autograd.grad(loss, adversarial)
                adversarial = adversarial.detach() + 2 / 255 * grad.sign()
                adversarial = torch.min(torch.max(adversarial, x - self.eps), x + self.eps).clamp(0, 1)
            student.train()
            t_adv = F.softmax(teacher_logits / tau_adv[y].unsqueeze(1), dim=1)
            t_nat = F.softmax(teacher_logits / tau_nat[y].unsqueeze(1), dim=1)
            kl = lambda log_s, t: (-log_s * t + torch.log(t + 1e-5) * t).mean()  # noqa: E731
            loss = 5 / 6 * kl(F.log_softmax(student(adversarial), 1), t_adv) + 1 / 6 * kl(F.log_softmax(student(x), 1), t_nat)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        self.synchronize()
        return time.perf_counter() - started

    # ------------------------------------------------------------------ report

    def write(self):
        mode = "CPU mode (--small): tiny sizes, the CPU as the device" if self.small else f"device {self.device}"
        text = [f"# GPU check: {mode}", "",
                f"`scripts/gpu-check.sh` on {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {platform.node()}, "
                f"{os.cpu_count()} CPU cores. Sections: {len(self.sections)}, failed: {self.failures}.", ""]
        for title, lines, seconds in self.sections:
            text += [f"## {title}", "", *lines, "", f"_({seconds:.1f} s)_", ""]
        path = os.path.join(self.args.out, "report.md")
        with open(path + ".tmp", "w") as f:
            f.write("\n".join(text))
        os.replace(path + ".tmp", path)
        self.log(f"== report written to {path} ({self.failures} failed sections)")


def bench_first_per_class(images, labels, per_class, classes=10):
    taken, keep = [0] * classes, []
    for i, y in enumerate(labels.tolist()):
        if taken[y] < per_class:
            taken[y] += 1
            keep.append(i)
    index = torch.tensor(keep)
    return images[index], labels[index]


def plain_pgd(model, x, y, eps, steps, step_size):
    adversarial = (x + (torch.rand_like(x) * 2 - 1) * eps).clamp(0, 1)
    for _ in range(steps):
        adversarial.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(adversarial).float(), y), adversarial)
        adversarial = adversarial.detach() + step_size * grad.sign()
        adversarial = torch.min(torch.max(adversarial, x - eps), x + eps).clamp(0, 1)
    return adversarial.detach()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--small", action="store_true")
    args = parser.parse_args()
    check = Check(args)
    check.section("Set-up", check.setup)
    check.section("1. CUDA is used", check.cuda_used)
    check.section("2. Per-class counts: device against CPU", check.agreement)
    check.section("3a. PGD-20 speed, fp32 and bf16", check.speed_pgd)
    check.section("3b. AutoAttack speed", check.speed_autoattack)
    check.section("3c. ABSLD training epoch speed", check.speed_absld)
    check.write()
    sys.exit(1 if check.failures else 0)


if __name__ == "__main__":
    main()
