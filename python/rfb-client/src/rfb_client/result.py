"""What an evaluation answers: per attack, per class counts and the server's summary metrics,
with everything needed to say how they were obtained.

A :class:`Result` holds one :class:`AttackResult` per attack, in request order. Every number
comes from the server's ``AttackResult`` messages (``evaluator.proto``); nothing is recomputed
here except the overall accuracy (correct over total, summed over the classes).
"""

import json

from ._generated import evaluator_pb2 as pb

SPLITS = {pb.SPLIT_UNSPECIFIED: "test", pb.SPLIT_TEST: "test", pb.SPLIT_VALIDATION: "validation", pb.SPLIT_TRAIN: "train"}
PRECISIONS = {
    pb.PRECISION_UNSPECIFIED: "fp32",
    pb.PRECISION_FP32: "fp32",
    pb.PRECISION_BF16: "bf16",
    pb.PRECISION_FP32_FAST: "fp32-fast",
}
ATTACK_KINDS = {
    pb.ATTACK_KIND_UNSPECIFIED: "unspecified",
    pb.CLEAN: "clean",
    pb.FGSM: "fgsm",
    pb.PGD: "pgd",
    pb.CW_INF: "cw-inf",
    pb.AUTOATTACK_STANDARD: "autoattack",
    pb.AUTOATTACK_RAND: "autoattack-rand",
    pb.AUTOATTACK_CUSTOM: "autoattack-custom",
}


def _percent(correct, total):
    return 100.0 * correct / total if total else 0.0


class ClassCount:
    """One class under one attack: ``correct`` of ``total`` examples still classified correctly,
    and ``predicted_as``: its examples counted by the class predicted after the attack (indexed
    like the result's classes; empty from a server older than it)."""

    __slots__ = ("name", "correct", "total", "predicted_as")

    def __init__(self, name, correct, total, predicted_as=()):
        self.name, self.correct, self.total = name, int(correct), int(total)
        self.predicted_as = [int(n) for n in predicted_as]

    @property
    def accuracy(self):
        """Percent correct."""
        return _percent(self.correct, self.total)

    def to_dict(self):
        out = {"class": self.name, "correct": self.correct, "total": self.total}
        if self.predicted_as:
            out["predicted_as"] = list(self.predicted_as)
        return out

    def __repr__(self):
        return "ClassCount(%r, %d/%d)" % (self.name, self.correct, self.total)


class Metrics:
    """The server's summary metrics (``rfb_proto::metrics``), in percent except NSD, a ratio:
    ``average`` and ``worst`` class accuracy, ``worst_10_percent`` (the mean of the worst tenth
    of the classes), ``nsd`` (the population standard deviation of the class accuracies over
    their mean)."""

    __slots__ = ("average", "worst", "worst_10_percent", "nsd")

    def __init__(self, average, worst, worst_10_percent, nsd):
        self.average, self.worst, self.worst_10_percent, self.nsd = average, worst, worst_10_percent, nsd

    @classmethod
    def from_proto(cls, m):
        return cls(m.average, m.worst, m.worst_10_percent, m.nsd)

    def to_dict(self):
        return {"average": self.average, "worst": self.worst, "worst_10_percent": self.worst_10_percent, "nsd": self.nsd}

    def __repr__(self):
        return "Metrics(avg=%.2f, worst=%.2f, worst10%%=%.2f, nsd=%.4f)" % (
            self.average,
            self.worst,
            self.worst_10_percent,
            self.nsd,
        )


class Component:
    """One component of an attack (AutoAttack's APGD-CE, APGD-T, ..., or a single attack
    itself): the points it ran on, its seconds, and per class the points still robust after it."""

    __slots__ = ("name", "seconds", "attacked", "robust_after")

    def __init__(self, name, seconds, attacked, robust_after):
        self.name, self.seconds, self.attacked = name, seconds, int(attacked)
        self.robust_after = dict(robust_after)

    def to_dict(self):
        return {"name": self.name, "seconds": self.seconds, "attacked": self.attacked, "robust_after": self.robust_after}

    def __repr__(self):
        return "Component(%r, attacked=%d, robust after=%d, %.1f s)" % (
            self.name,
            self.attacked,
            sum(self.robust_after.values()),
            self.seconds,
        )


class Sanity:
    """AutoAttack's own checks (the reference's checks.py), as the server reports them; each
    raised flag says the robust accuracy may be too high. ``warnings`` puts them in words (the
    sentences of ``rfb_proto::sanity``)."""

    FIELDS = (
        "randomised",
        "probabilities_not_logits",
        "zero_gradient_fraction",
        "possible_gradient_masking",
        "dynamic",
        "dlr_zero_gradient_points",
        "square_robust_accuracy_drop",
        "square_lowered_robust_accuracy",
        "targets_requested",
        "targets_used",
    )

    def __init__(self, **flags):
        for field in self.FIELDS:
            setattr(self, field, flags.get(field))

    @classmethod
    def from_proto(cls, s):
        return cls(**{field: getattr(s, field) for field in cls.FIELDS})

    @property
    def warnings(self):
        """One sentence per raised flag, in the contract's order (empty: nothing raised)."""
        out = []
        if self.randomised:
            out.append("outputs differ across passes of the same input: a randomised model; use AutoAttack-rand")
        if self.probabilities_not_logits:
            out.append("the outputs are probabilities, not logits")
        if self.possible_gradient_masking:
            out.append(
                "%.1f%% of the points have a zero cross-entropy gradient: possible gradient masking"
                % (100.0 * self.zero_gradient_fraction)
            )
        if self.dynamic:
            out.append(
                "the model computes gradients in its forward pass: a dynamic defence, AutoAttack may be insufficient"
            )
        if self.dlr_zero_gradient_points:
            out.append(
                "%d point(s) had a zero DLR gradient at APGD's start: possible gradient masking"
                % self.dlr_zero_gradient_points
            )
        if self.square_lowered_robust_accuracy:
            out.append(
                "Square lowered the robust accuracy by %.2f points after the gradient attacks: the evaluation may be unreliable"
                % (100.0 * self.square_robust_accuracy_drop)
            )
        if (self.targets_used or 0) < (self.targets_requested or 0):
            out.append(
                "%d targets asked for, the model has only %d other classes: the targeted attacks ran with %d"
                % (self.targets_requested, self.targets_used, self.targets_used)
            )
        return out

    def to_dict(self):
        out = {field: getattr(self, field) for field in self.FIELDS}
        out["warnings"] = self.warnings
        return out

    def __repr__(self):
        return "Sanity(%s)" % ("; ".join(self.warnings) or "no warning")


def _spec_dict(spec):
    """An AttackSpec as run (the server fills in every default), as plain data."""
    out = {"kind": ATTACK_KINDS.get(spec.kind, str(spec.kind))}
    for field in ("eps", "steps", "step_size", "restarts", "kappa"):
        out[field] = getattr(spec, field) if spec.HasField(field) else None
    out["seed"] = spec.seed
    out["components"] = list(spec.components)
    return out


class AttackResult:
    """One attack's outcome.

    Attributes: ``name`` (the server's display name, e.g. "PGD-20", "AutoAttack"),
    ``requested`` (the name as asked for, e.g. "pgd", when known), ``spec`` (the attack as run,
    every default filled in: kind, eps, steps, step_size, restarts, kappa, seed, components),
    ``classes`` (a list of :class:`ClassCount`), ``metrics`` (:class:`Metrics`),
    ``components`` (a list of :class:`Component`), ``sanity`` (:class:`Sanity` for AutoAttack,
    else None), and the provenance: ``model``, ``weights_sha256``, ``dataset``, ``split``,
    ``examples_per_class``, ``precision``, ``device``, ``versions``, ``shard`` ((index, count)
    or None), ``cached`` (the server answered from its cache) and ``elapsed_seconds``.
    """

    def __init__(self, message, requested=None):
        self.message = message
        self.requested = requested
        self.name = message.attack_name
        self.spec = _spec_dict(message.attack)
        self.classes = [ClassCount(c.class_name, c.correct, c.total, c.predicted_as) for c in message.classes]
        self.metrics = Metrics.from_proto(message.metrics)
        names = [c.name for c in self.classes]
        self.components = [
            Component(c.name, c.seconds, c.attacked, zip(names, c.robust_after)) for c in message.components
        ]
        self.sanity = Sanity.from_proto(message.sanity) if message.HasField("sanity") else None
        self.model = message.model
        self.weights_sha256 = message.weights_sha256
        self.dataset = message.dataset
        self.split = SPLITS.get(message.split, str(message.split))
        self.examples_per_class = message.examples_per_class
        self.precision = PRECISIONS.get(message.precision, str(message.precision))
        self.device = message.device
        self.versions = {
            "evaluator": message.versions.evaluator,
            "libtorch": message.versions.libtorch,
            "proto": message.versions.proto,
        }
        self.shard = (message.shard.index, message.shard.count) if message.HasField("shard") else None
        self.cached = message.cached
        self.elapsed_seconds = message.elapsed_seconds

    @property
    def correct(self):
        return sum(c.correct for c in self.classes)

    @property
    def total(self):
        return sum(c.total for c in self.classes)

    @property
    def accuracy(self):
        """Percent of all examples correct (equals metrics.average when the classes are balanced)."""
        return _percent(self.correct, self.total)

    @property
    def confusion(self):
        """Adversarial confusion: rows are true classes, columns the class predicted after the
        attack (row sums are the totals, the diagonal the correct counts); [] when absent."""
        if not any(c.predicted_as for c in self.classes):
            return []
        return [list(c.predicted_as) for c in self.classes]

    @property
    def counts(self):
        """{class name: (correct, total)}."""
        return {c.name: (c.correct, c.total) for c in self.classes}

    @property
    def warnings(self):
        return self.sanity.warnings if self.sanity else []

    def to_dict(self):
        return {
            "name": self.name,
            "requested": self.requested,
            "spec": self.spec,
            "accuracy": self.accuracy,
            "correct": self.correct,
            "total": self.total,
            "metrics": self.metrics.to_dict(),
            "classes": [c.to_dict() for c in self.classes],
            "components": [c.to_dict() for c in self.components],
            "sanity": self.sanity.to_dict() if self.sanity else None,
            "cached": self.cached,
            "elapsed_seconds": self.elapsed_seconds,
            "device": self.device,
            "precision": self.precision,
            "shard": list(self.shard) if self.shard else None,
        }

    def __repr__(self):
        return "<AttackResult %s: %.2f%% (%d/%d), worst class %.2f%%, NSD %.4f%s>" % (
            self.name,
            self.accuracy,
            self.correct,
            self.total,
            self.metrics.worst,
            self.metrics.nsd,
            ", cached" if self.cached else "",
        )


class Result:
    """An evaluation's results: one :class:`AttackResult` per attack, in request order.

    ``result["pgd"]``, ``result["PGD-20"]`` or ``result[1]`` give one attack (by the name asked
    for, the server's display name, or position); iterating gives them all. ``to_dict()`` is
    JSON-able, ``table()`` is a pandas DataFrame (classes by attacks, in percent, with Avg,
    Worst, Worst-10% and NSD rows) when pandas is installed and a text table otherwise, and
    ``print(result)`` shows the table, the provenance and any AutoAttack warning.

    ``elapsed_seconds`` is the server's time for the whole job (its Done message),
    ``wall_seconds`` the client's, queueing and transfer included.
    """

    def __init__(self, attacks, model=None, elapsed_seconds=None, wall_seconds=None, request=None):
        self.attacks = list(attacks)
        self.model = model if model is not None else (self.attacks[0].model if self.attacks else None)
        self.elapsed_seconds = elapsed_seconds
        self.wall_seconds = wall_seconds
        self.request = request

    @classmethod
    def from_messages(cls, messages, requested=None, **kwargs):
        """Builds a Result from ``AttackResult`` messages (in request order); ``requested`` are
        the attack names asked for, one per message, when known."""
        messages = list(messages)
        names = list(requested) if requested is not None and len(requested) == len(messages) else [None] * len(messages)
        return cls([AttackResult(m, r) for m, r in zip(messages, names)], **kwargs)

    # ---------------------------------------------------------------- access

    def __len__(self):
        return len(self.attacks)

    def __iter__(self):
        return iter(self.attacks)

    def __getitem__(self, key):
        if isinstance(key, int):
            return self.attacks[key]
        wanted = str(key).strip().lower()
        for attack in self.attacks:
            if attack.name.lower() == wanted or (attack.requested or "").lower() == wanted:
                return attack
        raise KeyError("no attack %r in this result (attacks: %s)" % (key, ", ".join(self.names)))

    @property
    def names(self):
        """The attacks' display names, in order."""
        return [a.name for a in self.attacks]

    @property
    def class_names(self):
        return [c.name for c in self.attacks[0].classes] if self.attacks else []

    @property
    def accuracy(self):
        """{attack name: percent correct}."""
        return {a.name: a.accuracy for a in self.attacks}

    @property
    def cached(self):
        """True when every attack came from the server's cache."""
        return bool(self.attacks) and all(a.cached for a in self.attacks)

    @property
    def warnings(self):
        """AutoAttack's raised flags in words, as "attack: sentence"."""
        return ["%s: %s" % (a.name, w) for a in self.attacks for w in a.warnings]

    @property
    def provenance(self):
        """How the numbers were obtained: model, weights sha256, data set, split, examples per
        class, precision, device, versions, and each attack as run (its spec with eps, step size
        and seed, and whether it came from the cache)."""
        first = self.attacks[0] if self.attacks else None
        return {
            "model": self.model,
            "weights_sha256": first.weights_sha256 if first else None,
            "dataset": first.dataset if first else None,
            "split": first.split if first else None,
            "examples_per_class": first.examples_per_class if first else None,
            "precision": first.precision if first else None,
            "device": first.device if first else None,
            "versions": first.versions if first else None,
            "shard": list(first.shard) if first and first.shard else None,
            "attacks": [
                {"name": a.name, "requested": a.requested, "spec": a.spec, "cached": a.cached, "seconds": a.elapsed_seconds}
                for a in self.attacks
            ],
        }

    # ---------------------------------------------------------------- output

    def to_dict(self):
        """Everything as plain JSON-able data."""
        return {
            "model": self.model,
            "provenance": self.provenance,
            "attacks": [a.to_dict() for a in self.attacks],
            "warnings": self.warnings,
            "elapsed_seconds": self.elapsed_seconds,
            "wall_seconds": self.wall_seconds,
        }

    def to_json(self, **kwargs):
        return json.dumps(self.to_dict(), **kwargs)

    def _rows(self):
        """(row label, [value per attack]) for every class, then the summary rows."""
        rows = []
        for i, name in enumerate(self.class_names):
            rows.append((name, [a.classes[i].accuracy if i < len(a.classes) else float("nan") for a in self.attacks]))
        rows.append(("Avg", [a.metrics.average for a in self.attacks]))
        rows.append(("Worst", [a.metrics.worst for a in self.attacks]))
        rows.append(("Worst-10%", [a.metrics.worst_10_percent for a in self.attacks]))
        rows.append(("NSD", [a.metrics.nsd for a in self.attacks]))
        return rows

    def table(self, pandas=None):
        """Accuracy per class (percent) under each attack, then the Avg, Worst, Worst-10% and NSD
        rows: a pandas DataFrame when pandas is installed (``pandas=False`` forces text), else the
        text of :meth:`text_table`."""
        if pandas is not False:
            try:
                import pandas as pd
            except ImportError:
                if pandas:
                    raise
            else:
                rows = self._rows()
                return pd.DataFrame([values for _, values in rows], index=[label for label, _ in rows], columns=self.names)
        return self.text_table()

    def text_table(self):
        """The table as aligned text (percent with two decimals; NSD with four)."""
        rows = self._rows()
        header = ["class"] + self.names
        body = []
        for label, values in rows:
            fmt = "%.4f" if label == "NSD" else "%.2f"
            body.append([label] + [fmt % v for v in values])
        widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]

        def line(cells):
            return "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(cells))

        lines = [line(header), "  ".join("-" * w for w in widths)]
        for i, row in enumerate(body):
            if i == len(body) - 4:
                lines.append("  ".join("-" * w for w in widths))
            lines.append(line(row))
        return "\n".join(lines)

    def __repr__(self):
        p = self.provenance
        attacks = ", ".join("%s %.2f%%" % (a.name, a.accuracy) for a in self.attacks)
        return "<Result %s on %s/%s (%s per class, %s, %s): %s>" % (
            self.model,
            p["dataset"],
            p["split"],
            p["examples_per_class"] or "all",
            p["precision"],
            p["device"],
            attacks or "no attacks",
        )

    def __str__(self):
        p = self.provenance
        lines = [
            "%s on %s (%s split, %s examples per class, %s, %s)"
            % (self.model, p["dataset"], p["split"], p["examples_per_class"] or "all", p["precision"], p["device"]),
            "weights sha256 %s; evaluator %s, libtorch %s"
            % (p["weights_sha256"], (p["versions"] or {}).get("evaluator"), (p["versions"] or {}).get("libtorch")),
        ]
        for a in self.attacks:
            spec = a.spec
            parts = ["eps %.6g" % spec["eps"]] if spec["eps"] is not None else []
            if spec["steps"] is not None:
                parts.append("%d steps" % spec["steps"])
            if spec["step_size"] is not None:
                parts.append("step %.6g" % spec["step_size"])
            parts.append("seed %d" % spec["seed"])
            lines.append(
                "  %s: %s; %.1f s%s" % (a.name, ", ".join(parts), a.elapsed_seconds, " (from the cache)" if a.cached else "")
            )
        lines.append("")
        lines.append(self.text_table())
        for w in self.warnings:
            lines.append("WARNING " + w)
        return "\n".join(lines)
