"""Runs the torchattacks port of AutoAttack (standard version, L-inf) on one of our checkpoints,
component by component, as an independent reference for the Rust attacks.

usage: reference_autoattack.py CHECKPOINT_DIR DATA_FILE --eps EPS [--seed S] [--steps N]
           [--queries Q] [--components apgd-ce,apgd-t,fab-t,square] [--shared-starts]
           [--torchattacks-defaults] [--threads T]

CHECKPOINT_DIR is a directory written by `rfb_core::checkpoint::save` (model.safetensors +
manifest.json); DATA_FILE is a safetensors file with `images` (f32 [N, C, H, W] in [0, 1]),
`labels` (i64 [N]) and optionally `ids` (i64 [N], each point's index in its split; default
0..N). Prints one JSON object: clean and robust counts, per-class correct counts, and after
every component the per-point robust flags and the seconds it took. Runs on T CPU threads.

The components run as the reference `run_standard_evaluation` runs them: each on the points
still robust after the previous ones (points misclassified clean are never robust).

--shared-starts makes APGD-CE and APGD-T start from the random points our attacks start from:
torchattacks draws its start with `torch.rand`, which is replaced, while a run is in progress,
by the per-example streams of `example_streams.py` (the same numbers as
`core/src/attacks/random.rs`). FAB-T with one restart draws nothing. Square draws one window
and one sign vector per batch in torchattacks and per point in ours, so its draws cannot be
shared.

torchattacks 3.5.1 builds AutoAttack with its own defaults (10 iterations for APGD, APGD-T and
FAB-T, and Square's rescaled p schedule), which are weaker than the reference AutoAttack
(fra31/auto-attack: 100 iterations each, `resc_schedule=False`). Unless
--torchattacks-defaults is given, the components are set to the reference configuration."""

import argparse
import json
import os
import sys
import time

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import example_streams  # noqa: E402
import reference_models  # noqa: E402

# Salts of the draw labels in core/src/attacks/apgd.rs.
APGD_DRAWS = 0x41504744
APGD_LOSS_CE = 0
APGD_LOSS_TARGETED = 2


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


class SharedStarts:
    """Replaces `torch.rand` inside torchattacks' APGD modules by our per-example streams while
    one of their `attack_single_run` calls is in progress."""

    def __init__(self, images, ids, seed):
        self.seed = seed
        self.rows = {}
        for row, example in zip(images, ids.tolist()):
            key = row.numpy().tobytes()
            if key in self.rows:
                raise SystemExit("two points have the same image: their starts cannot be told apart")
            self.rows[key] = example
        self.pending = None

    def ids_of(self, x):
        return torch.tensor([self.rows[row.numpy().tobytes()] for row in x.detach().cpu()], dtype=torch.int64)

    def rand(self, *shape, **kwargs):
        if self.pending is None:
            return torch.rand(*shape, **kwargs)
        ids, label = self.pending
        self.pending = None
        shape = tuple(shape[0]) if len(shape) == 1 and not isinstance(shape[0], int) else tuple(shape)
        if shape[0] != ids.shape[0]:
            raise SystemExit(f"unexpected draw of shape {shape} for {ids.shape[0]} points")
        return example_streams.ExampleStreams(self.seed, ids).uniform(label, shape[1:])

    def install(self, component, loss_code):
        """Wraps `component.attack_single_run` to set the draw of its start."""
        original = component.attack_single_run
        shared = self

        def attack_single_run(x, y):
            rank = getattr(component, "target_class", 1) - 1 if loss_code == APGD_LOSS_TARGETED else 0
            label = example_streams.draw_label([APGD_DRAWS, loss_code, rank, 0])
            shared.pending = (shared.ids_of(x), label)
            try:
                return original(x, y)
            finally:
                shared.pending = None

        component.attack_single_run = attack_single_run


class TorchWithSharedRand:
    """The torch module with `rand` taken from a `SharedStarts`."""

    def __init__(self, shared):
        self._shared = shared

    def __getattr__(self, name):
        if name == "rand":
            return self._shared.rand
        return getattr(torch, name)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("data")
    parser.add_argument("--eps", type=float, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--components", default="apgd-ce,apgd-t,fab-t,square")
    parser.add_argument("--shared-starts", action="store_true")
    parser.add_argument("--torchattacks-defaults", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--single-run", default=None, metavar="ce|t:RANK",
                        help="instead of the components, one APGD run (APGD-CE, or APGD-T against "
                             "the RANK-th largest other logit) on the clean-correct points; prints "
                             "each point's best loss and robust flag")
    args = parser.parse_args()

    import torchattacks
    import torchattacks.attacks.apgd as apgd_module
    import torchattacks.attacks.apgdt as apgdt_module

    torch.set_num_threads(args.threads)
    model, num_classes = load_checkpoint(args.checkpoint)
    data = load_file(args.data)
    images, labels = data["images"].float(), data["labels"].long()
    ids = data["ids"].long() if "ids" in data else torch.arange(labels.numel())

    reference = torchattacks.AutoAttack(model, norm="Linf", eps=args.eps, version="standard",
                                        n_classes=num_classes, seed=args.seed)
    by_name = dict(zip(["apgd-ce", "apgd-t", "fab-t", "square"], reference._autoattack.attacks))
    names = [n for n in args.components.split(",") if n]
    components = [by_name[n] for n in names]
    if not args.torchattacks_defaults:
        for component in components:
            if hasattr(component, "steps"):
                component.steps = args.steps
            if hasattr(component, "rescale_schedule"):
                component.rescale_schedule = False
            if hasattr(component, "n_queries"):
                component.n_queries = args.queries
    if args.shared_starts:
        shared = SharedStarts(images, ids, args.seed)
        apgd_module.torch = TorchWithSharedRand(shared)
        apgdt_module.torch = TorchWithSharedRand(shared)
        if "apgd-ce" in by_name:
            shared.install(by_name["apgd-ce"], APGD_LOSS_CE)
        if "apgd-t" in by_name:
            shared.install(by_name["apgd-t"], APGD_LOSS_TARGETED)

    with torch.no_grad():
        clean = model(images).argmax(1) == labels
    if args.single_run is not None:
        index = clean.nonzero().flatten()
        if args.single_run == "ce":
            component = by_name["apgd-ce"]
        else:
            component = by_name["apgd-t"]
            component.target_class = int(args.single_run.split(":")[1]) + 1
        _, acc, loss_best, _ = component.attack_single_run(images[index], labels[index])
        print(json.dumps({"index": index.tolist(), "best_loss": loss_best.tolist(),
                          "robust_flags": [int(v) for v in acc.tolist()]}))
        return
    robust = clean.clone()
    adversarial = images.clone()
    after = []
    for name, component in zip(names, components):
        started = time.time()
        index = robust.nonzero().flatten()
        if index.numel() > 0:
            candidate = component(images[index], labels[index]).detach()
            with torch.no_grad():
                still = model(candidate).argmax(1) == labels[index]
            broken = index[~still]
            adversarial[broken] = candidate[~still]
            robust[broken] = False
        after.append({"name": name, "seconds": time.time() - started, "attacked": int(index.numel()),
                      "robust_flags": [int(v) for v in robust.tolist()]})

    per_class = [int(robust[labels == k].sum()) for k in range(num_classes)]
    print(json.dumps({
        "n": int(labels.numel()),
        "clean_correct": int(clean.sum()),
        "robust_correct": int(robust.sum()),
        "correct_per_class": per_class,
        "components": after,
        "robust_flags": [int(v) for v in robust.tolist()],
        "max_linf": (adversarial - images).abs().amax().item(),
        "min": float(adversarial.min()),
        "max": float(adversarial.max()),
    }))


if __name__ == "__main__":
    main()
