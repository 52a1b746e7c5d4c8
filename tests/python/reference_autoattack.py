"""Runs the torchattacks port of AutoAttack (standard version, L-inf) on one of our checkpoints,
as an independent reference for `core/tests/autoattack.rs`.

usage: reference_autoattack.py CHECKPOINT_DIR DATA_FILE --eps EPS [--seed S] [--steps N]
                               [--torchattacks-defaults] [--threads T]

CHECKPOINT_DIR is a directory written by `rfb_core::checkpoint::save` (model.safetensors +
manifest.json); DATA_FILE is a safetensors file with `images` (f32 [N, C, H, W] in [0, 1]) and
`labels` (i64 [N]). Prints one JSON object: clean and robust counts, per-class correct counts,
the points still robust after each component, and the per-point robust flags. Runs on T CPU
threads (default 1: the tests run two at a time on small batches).

torchattacks 3.5.1 builds AutoAttack with its own defaults (10 iterations for APGD, APGD-T and
FAB-T, and Square's rescaled p schedule), which are weaker than the reference AutoAttack
(fra31/auto-attack: 100 iterations each, `resc_schedule=False`). Unless
--torchattacks-defaults is given, the components are set to the reference configuration."""

import argparse
import json
import os
import sys

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_models  # noqa: E402


def load_checkpoint(directory):
    with open(os.path.join(directory, "manifest.json")) as f:
        manifest = json.load(f)
    channels = manifest["input_shape"][0]
    model = reference_models.build(manifest["architecture"], manifest["num_classes"], channels)
    state = load_file(os.path.join(directory, "model.safetensors"))
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise SystemExit(f"checkpoint does not match the reference model: missing {missing}, "
                         f"unexpected {result.unexpected_keys}")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, manifest["num_classes"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("data")
    parser.add_argument("--eps", type=float, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--torchattacks-defaults", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torchattacks

    torch.set_num_threads(args.threads)
    model, num_classes = load_checkpoint(args.checkpoint)
    data = load_file(args.data)
    images, labels = data["images"].float(), data["labels"].long()

    attack = torchattacks.AutoAttack(model, norm="Linf", eps=args.eps, version="standard",
                                     n_classes=num_classes, seed=args.seed)
    components = attack._autoattack.attacks
    if not args.torchattacks_defaults:
        for component in components:
            if hasattr(component, "steps"):
                component.steps = args.steps
            if hasattr(component, "rescale_schedule"):
                component.rescale_schedule = False
    # Points left after each component (MultiAttack keeps these records when asked to).
    attack._autoattack._accumulate_multi_atk_records = True
    attack._autoattack._multi_atk_records = [0.0] * (len(components) + 1)

    adversarial = attack(images, labels).detach()
    with torch.no_grad():
        clean = model(images).argmax(1) == labels
        robust = model(adversarial).argmax(1) == labels
    linf = (adversarial - images).abs().amax().item()
    records = [int(r) for r in attack._autoattack._multi_atk_records]
    per_class = [int(robust[labels == k].sum()) for k in range(num_classes)]
    print(json.dumps({
        "n": int(labels.numel()),
        "clean_correct": int(clean.sum()),
        "robust_correct": int(robust.sum()),
        "robust_accuracy": 100.0 * float(robust.float().mean()),
        "correct_per_class": per_class,
        "remaining_after": dict(zip([type(c).__name__ for c in components], records[1:])),
        "robust_flags": [int(v) for v in robust.tolist()],
        "max_linf": linf,
        "min": float(adversarial.min()),
        "max": float(adversarial.max()),
    }))


if __name__ == "__main__":
    main()
