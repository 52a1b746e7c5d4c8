"""PyTorch side of the attack throughput benchmark: times torchattacks' PGD-20 and AutoAttack
(standard) on the ResNet-18 weights and batch that `core/examples/attack_benchmark.rs` exported,
at the same batch sizes, on the same machine.

usage: bench_attacks.py EXPORT_DIR [--batches 32,128] [--attacks pgd20,autoattack] [--device cpu]"""

import argparse
import os
import sys
import time

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_models  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("export_dir")
    parser.add_argument("--batches", default="32,128")
    parser.add_argument("--attacks", default="pgd20,autoattack")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    import torchattacks

    device = torch.device(args.device)
    model = reference_models.build("resnet18", 10, 3)
    state = load_file(os.path.join(args.export_dir, "model", "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    batch = load_file(os.path.join(args.export_dir, "batch.safetensors"))
    images, labels = batch["images"].to(device), batch["labels"].to(device)
    eps = 8 / 255
    print(f"threads {torch.get_num_threads()}, torch {torch.__version__}, torchattacks {torchattacks.__version__}")
    for name in args.attacks.split(","):
        for size in (int(b) for b in args.batches.split(",")):
            x, y = images[:size], labels[:size]
            if name == "pgd20":
                attack = torchattacks.PGD(model, eps=eps, alpha=2 / 255, steps=20, random_start=True)
            else:
                attack = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=10, seed=0)
                # The reference configuration (fra31/auto-attack): 100 iterations per component
                # and Square's unrescaled schedule; torchattacks' own defaults run 10 iterations.
                for component in attack._autoattack.attacks:
                    if hasattr(component, "steps"):
                        component.steps = 100
                    if hasattr(component, "rescale_schedule"):
                        component.rescale_schedule = False
            with torch.no_grad():
                model(x)
            torch.manual_seed(1)
            started = time.perf_counter()
            adversarial = attack(x, y)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - started
            with torch.no_grad():
                robust = (model(adversarial).argmax(1) == y).float().mean().item() * 100
            print(f"{args.device:<6} {'fp32':<6} {'torch-' + name:<16} {size:>6} {seconds:>10.2f} {size / seconds:>9.2f} {robust:>11.1f}%")


if __name__ == "__main__":
    main()
