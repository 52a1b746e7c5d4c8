#!/usr/bin/env python3
"""rfb_client against a real `evaluator serve --allow-uploads` (run by evaluator/tests/clients.rs).

    test_against_server.py --address HOST:PORT --checkpoint DIR --model-file FILE --cli-json FILE
        [--attacks clean,fgsm,pgd-5] [--eps 0.1] [--per-class 3] [--resnet-dir DIR]

* (a) the one call: ``rfb_client.benchmark(module, ...)`` on the digits-cnn of CHECKPOINT_DIR
  loaded into the PyTorch reference definition (an nn.Module, exported to TorchScript; sent as
  a state dict with arch= if the server refuses TorchScript), whose clean counts per class
  equal those of `evaluator eval` on the same weights;
* (b) MODEL_FILE (a digits-cnn state dict) sent from Python and evaluated: per attack and per
  class the counts equal CLI_JSON's (`evaluator eval --json --no-cache` of the same file
  imported with `evaluator import`); the Result's provenance, to_dict() and table(); a quick
  AutoAttack (aa@2) whose components and sanity flags reach the Result;
* (c) a ResNet-18 CIFAR-10 state dict of about 45 MB (tests/python/reference_models.py,
  seeded random weights) sent in 1 MiB chunks and timed, its ModelInfo checked, evaluated
  (clean and PGD-5, 2 examples per class, on the server's --data-dir) and timed; sending it
  again answers the same model, other bytes under its name are refused with AlreadyExists,
  and deleting it frees its bytes;
* errors: an unknown model (NotFound) and an unknown attack name (InvalidArgument) carry the
  server's message.

Prints one JSON line with what it measured; exits non-zero on any failure.
"""

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
WORKSPACE = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.join(WORKSPACE, "tests", "python"))

import torch  # noqa: E402

import rfb_client  # noqa: E402  (the installed package: PYTHONPATH points at it)
import reference_models  # noqa: E402


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def cli_counts(path):
    """{attack name: [correct per class]} of an `evaluator eval --json` file."""
    with open(path) as f:
        document = json.load(f)
    return {r["attack_name"]: [c["correct"] for c in r["classes"]] for r in document["results"]}


def counts(result):
    return {a.name: [c.correct for c in a.classes] for a in result}


def digits_module(checkpoint):
    from safetensors.torch import load_file

    with open(os.path.join(checkpoint, "manifest.json")) as f:
        manifest = json.load(f)
    model = reference_models.build("digits-cnn", manifest["num_classes"], manifest["input_shape"][0])
    missing, unexpected = model.load_state_dict(load_file(os.path.join(checkpoint, "model.safetensors")), strict=False)
    check(not unexpected and all(m.endswith("num_batches_tracked") for m in missing), "names differ: %s %s" % (missing, unexpected))
    return model.eval()


def one_call(args, summary, reference):
    """(a) benchmark() in one call on an nn.Module."""
    module = digits_module(args.checkpoint)
    common = dict(dataset="digits", attacks="clean,fgsm", eps=args.eps, address=args.address, examples_per_class=args.per_class, progress=False)
    started = time.monotonic()
    try:
        result = rfb_client.benchmark(module, **common)
        summary["benchmark_sent_as"] = result.model_info.export
    except rfb_client.FailedPrecondition as refused:
        # A server that cannot run TorchScript safely refuses it: send the module's state dict.
        summary["torchscript_refused"] = refused.details
        result = rfb_client.benchmark(module, arch="digits-cnn", **common)
        summary["benchmark_sent_as"] = result.model_info.export
    summary["benchmark_seconds"] = round(time.monotonic() - started, 3)
    check(result.names == ["Clean", "FGSM"], result.names)
    check(result.model_info.name.startswith("uploads/local/digitscnn-"), result.model_info.name)
    check(result["clean"].counts == {c.name: (c.correct, c.total) for c in result["Clean"].classes}, "lookup")
    check(all(c.total == args.per_class for a in result for c in a.classes), "per-class totals")
    check(counts(result)["Clean"] == reference["Clean"], "benchmark clean %s != CLI %s" % (counts(result)["Clean"], reference["Clean"]))
    summary["benchmark"] = {a.name: a.accuracy for a in result}
    # The same weights again: the same upload (its name carries the sha256).
    again = rfb_client.benchmark(module, **dict(common, attacks="clean"), **({"arch": "digits-cnn"} if "torchscript_refused" in summary else {}))
    check(again.model_info.name == result.model_info.name, "a repeat upload gets the same name")
    check(counts(again)["Clean"] == counts(result)["Clean"], "repeat")


def file_against_cli(client, args, summary, reference):
    """(b) the same file as `evaluator import`, sent from Python: the same counts."""
    info = client.send(args.model_file, "digits-from-python", "digits", arch="digits-cnn", progress=False)
    check(info.name == "uploads/local/digits-from-python", info.name)
    check(info.architecture == "digits-cnn" and info.dataset == "digits" and info.num_classes == 10, repr(info))
    check(info.export == "file", info.export)
    result = client.evaluate(info.name, attacks=args.attacks, eps=args.eps, examples_per_class=args.per_class, seed=0, progress=False)
    got = counts(result)
    check(got == reference, "Python upload %s != CLI import %s" % (got, reference))
    check(len(result) == len(args.attacks.split(",")), result.names)
    check(not any(a.cached for a in result), "nothing cached on a --no-cache server")
    p = result.provenance
    check(p["weights_sha256"] == info.weights_sha256, "provenance sha256")
    check((p["dataset"], p["split"], p["precision"], p["device"]) == ("digits", "test", "fp32", "cpu"), p)
    check(p["versions"]["evaluator"] and p["versions"]["libtorch"], p["versions"])
    fgsm = result["fgsm"]
    check(abs(fgsm.spec["eps"] - float(args.eps)) < 1e-12, fgsm.spec)
    check(abs(result["pgd-5"].spec["step_size"] - float(args.eps) / 4) < 1e-12, result["pgd-5"].spec)
    check(result["pgd-5"].spec["steps"] == 5, result["pgd-5"].spec)
    for a in result:
        total = sum(c.total for c in a.classes)
        check(abs(a.metrics.average - 100.0 * a.correct / total) < 1e-9, "average of %s" % a.name)
        check(abs(a.metrics.worst - min(c.accuracy for c in a.classes)) < 1e-9, "worst of %s" % a.name)
    json.dumps(result.to_dict())
    table = result.table(pandas=False)
    check("Worst-10%" in table and "PGD-5" in table, table)
    check("Clean" in repr(result) and "Worst" in str(result), repr(result))
    summary["python_upload"] = {a.name: a.accuracy for a in result}

    # AutoAttack (a quick @2 check): its components and sanity flags reach the Result.
    aa = client.evaluate(info.name, attacks="aa@2", eps=args.eps, examples_per_class=2, progress=False)["aa@2"]
    check(aa.name == "AutoAttack@2" and aa.spec["steps"] == 2, (aa.name, aa.spec))
    check([c.name for c in aa.components][:2] == ["APGD-CE", "APGD-T"], aa.components)
    check(aa.sanity is not None and aa.sanity.targets_requested == 9, aa.sanity)
    last = aa.components[-1].robust_after
    check([last[c.name] for c in aa.classes] == [c.correct for c in aa.classes], "robust after the last component %s" % last)
    summary["autoattack"] = {"components": [repr(c) for c in aa.components], "warnings": aa.warnings}


def resnet18(client, args, summary):
    """(c) a ~45 MB ResNet-18 CIFAR-10 state dict in chunks."""
    torch.manual_seed(0)
    model = reference_models.ResNet18(num_classes=10, in_channels=3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    work = args.resnet_dir or tempfile.mkdtemp()
    path = os.path.join(work, "resnet18_cifar10.pt")
    torch.save(model.state_dict(), path)
    size = os.path.getsize(path)
    check(40e6 < size < 50e6, "a ResNet-18 state dict of %d bytes" % size)
    with open(path, "rb") as f:
        sha256 = hashlib.sha256(f.read()).hexdigest()

    info = client.send(path, "resnet18-cifar10", "cifar10", arch="resnet18", progress=False)
    summary["resnet18_bytes"] = size
    summary["resnet18_upload_seconds"] = round(info.upload_seconds, 3)
    parameters = sum(p.numel() for p in model.parameters())
    check(info.name == "uploads/local/resnet18-cifar10", info.name)
    check((info.architecture, info.dataset, info.num_classes, info.input_shape) == ("resnet18", "cifar10", 10, [3, 32, 32]), repr(info))
    check(info.class_names[:2] == ["airplane", "automobile"], info.class_names)
    check(info.parameter_count == parameters, "parameter count %d, PyTorch says %d" % (info.parameter_count, parameters))
    check(info.method == "imported", info.method)
    source = info.manifest.get("source", {})
    check(source.get("sha256") == sha256 and source.get("file") == "resnet18_cifar10.pt", source)
    check(info.name in client.list_models().names, "listed")

    started = time.monotonic()
    result = client.evaluate(info.name, attacks="clean,pgd-5", examples_per_class=2, progress=False)
    summary["resnet18_evaluate_seconds"] = round(time.monotonic() - started, 3)
    summary["resnet18_server_seconds"] = result.elapsed_seconds
    check(result.names == ["Clean", "PGD-5"] and all(a.total == 20 for a in result), repr(result))

    again = client.send(path, "resnet18-cifar10", "cifar10", arch="resnet18", progress=False)
    check(again.name == info.name and again.weights_sha256 == info.weights_sha256, "idempotent")
    try:
        client.send(b"other bytes", "resnet18-cifar10", "cifar10", arch="resnet18", progress=False)
        raise AssertionError("other bytes under a taken name were accepted")
    except rfb_client.AlreadyExists as e:
        summary["already_exists"] = e.details
    freed = client.delete(info.name)
    check(freed >= size * 0.9, "deleting freed %d bytes" % freed)
    check(info.name not in client.list_models().names, "deleted")
    try:
        client.delete(info.name)
        raise AssertionError("deleted twice")
    except rfb_client.NotFound:
        pass


def errors(client, summary):
    try:
        client.evaluate("no/such/model", attacks="clean", examples_per_class=1, progress=False)
        raise AssertionError("an unknown model was evaluated")
    except rfb_client.NotFound as e:
        summary["not_found"] = str(e)
    try:
        client.evaluate("natural-s0/best", attacks="clean,bogus", examples_per_class=1, progress=False)
        raise AssertionError("an unknown attack was run")
    except rfb_client.InvalidArgument as e:
        check("bogus" in e.details, e.details)
        summary["invalid_argument"] = str(e)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", required=True)
    parser.add_argument("--checkpoint", required=True, help="a digits-cnn checkpoint directory (model.safetensors)")
    parser.add_argument("--model-file", required=True, help="a digits-cnn state dict (.pt) also imported by the CLI")
    parser.add_argument("--cli-json", required=True, help="`evaluator eval --json` of the CLI import")
    parser.add_argument("--attacks", default="clean,fgsm,pgd-5")
    parser.add_argument("--eps", default="0.1")
    parser.add_argument("--per-class", type=int, default=3)
    parser.add_argument("--resnet-dir", help="where to write the ResNet-18 file [a temporary directory]")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: benchmark, cli, resnet, errors")
    args = parser.parse_args()
    skip = set(args.skip.split(","))

    reference = cli_counts(args.cli_json)
    summary = {"rfb_client": rfb_client.__file__}
    with rfb_client.connect(args.address) as client:
        info = client.server_info()
        check(info.uploads_enabled and info.your_upload_prefix == "uploads/local", repr(info))
        summary["server"] = info.to_dict()
        if "benchmark" not in skip:
            one_call(args, summary, reference)
        if "cli" not in skip:
            file_against_cli(client, args, summary, reference)
        if "resnet" not in skip:
            resnet18(client, args, summary)
        if "errors" not in skip:
            errors(client, summary)
    print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    main()
