"""Offline tests of rfb_client: no evaluator needed.

    .venv/bin/python python/rfb-client/tests/test_offline.py

* the checked-in stubs equal those generate_stubs.py makes from the contract now;
* a Result built from hand-made AttackResult messages: counts, metrics, components, sanity
  warnings, provenance, to_dict() (JSON), the text table, lookups by name;
* against a fake Evaluator served in this process: the attack names, eps, step size and seed
  reach the request as given; uploads send one header, then chunks of at most chunk_size whose
  size and sha256 match; an nn.Module is scripted, or traced when it cannot be; a state dict
  needs arch; progress off writes nothing; gRPC statuses become exceptions with the server's
  message.
"""

import contextlib
import hashlib
import io
import json
import os
import sys
import tempfile
import threading
import unittest
from concurrent import futures

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE_DIR = os.path.dirname(HERE)
SRC = os.path.join(PACKAGE_DIR, "src")

try:
    import rfb_client  # installed
except ImportError:
    sys.path.insert(0, SRC)
    import rfb_client

import grpc

from rfb_client._generated import evaluator_pb2 as pb
from rfb_client._generated import evaluator_pb2_grpc as pb_grpc

sys.path.insert(0, PACKAGE_DIR)
import generate_stubs  # noqa: E402


class StubsInSync(unittest.TestCase):
    def test_checked_in_stubs_equal_freshly_generated_ones(self):
        with tempfile.TemporaryDirectory() as out:
            written = generate_stubs.generate(out)
            self.assertEqual(len(written), 3)
            for path in written:
                name = os.path.basename(path)
                with open(path, encoding="utf-8") as f:
                    fresh = f.read()
                with open(os.path.join(SRC, "rfb_client", "_generated", name), encoding="utf-8") as f:
                    checked_in = f.read()
                self.assertEqual(
                    fresh,
                    checked_in,
                    "%s is stale: run .venv/bin/python python/rfb-client/generate_stubs.py" % name,
                )

    def test_stubs_live_in_the_package_namespace(self):
        with open(os.path.join(SRC, "rfb_client", "_generated", "evaluator_pb2_grpc.py"), encoding="utf-8") as f:
            text = f.read()
        self.assertIn("from . import evaluator_pb2 as", text)
        self.assertNotIn("from rfb.v1", text)
        self.assertEqual(pb.DESCRIPTOR.name, "rfb/v1/evaluator.proto")
        self.assertIn("UploadModel", pb.DESCRIPTOR.services_by_name["Evaluator"].methods_by_name)


CLASSES = ["zero", "one", "two"]


def attack_message(name, kind, correct, total=4, sanity=None, components=(), cached=False, **spec):
    message = pb.AttackResult(
        attack=pb.AttackSpec(kind=kind, **spec),
        attack_name=name,
        classes=[pb.ClassResult(class_name=c, correct=k, total=total) for c, k in zip(CLASSES, correct)],
        metrics=pb.Metrics(average=100.0 * sum(correct) / (total * len(correct)), worst=100.0 * min(correct) / total, worst_10_percent=100.0 * min(correct) / total, nsd=0.25),
        device="cpu",
        elapsed_seconds=1.5,
        cached=cached,
        versions=pb.Versions(evaluator="0.9.0", libtorch="2.13.0", proto="v1"),
        model="uploads/local/mine",
        weights_sha256="ab" * 32,
        dataset="digits",
        split=pb.SPLIT_TEST,
        examples_per_class=total,
        precision=pb.PRECISION_FP32,
        components=list(components),
    )
    if sanity is not None:
        message.sanity.CopyFrom(sanity)
    return message


def sample_messages():
    return [
        attack_message("Clean", pb.CLEAN, [4, 3, 2], seed=0),
        attack_message("PGD-5", pb.PGD, [2, 1, 0], eps=0.1, steps=5, step_size=0.025, seed=3),
        attack_message(
            "AutoAttack",
            pb.AUTOATTACK_STANDARD,
            [1, 1, 0],
            eps=8 / 255,
            seed=3,
            sanity=pb.SanityFlags(zero_gradient_fraction=0.25, possible_gradient_masking=True, targets_requested=9, targets_used=2),
            components=[
                pb.ComponentResult(name="APGD-CE", seconds=0.5, attacked=9, robust_after=[2, 1, 0]),
                pb.ComponentResult(name="APGD-T", seconds=0.7, attacked=3, robust_after=[1, 1, 0]),
            ],
        ),
    ]


class ResultFromMessages(unittest.TestCase):
    def setUp(self):
        self.result = rfb_client.Result.from_messages(
            sample_messages(), requested=["clean", "pgd-5", "aa"], model="uploads/local/mine", elapsed_seconds=3.0
        )

    def test_counts_metrics_and_lookup(self):
        r = self.result
        self.assertEqual(r.names, ["Clean", "PGD-5", "AutoAttack"])
        self.assertEqual(r.class_names, CLASSES)
        self.assertIs(r["pgd-5"], r["PGD-5"])
        self.assertIs(r[2], r["aa"])
        with self.assertRaises(KeyError):
            r["cw"]
        clean = r["clean"]
        self.assertEqual(clean.counts, {"zero": (4, 4), "one": (3, 4), "two": (2, 4)})
        self.assertEqual((clean.correct, clean.total), (9, 12))
        self.assertAlmostEqual(clean.accuracy, 75.0)
        self.assertAlmostEqual(r["pgd-5"].metrics.worst, 0.0)
        self.assertEqual(r["pgd-5"].spec["steps"], 5)
        self.assertEqual(r["pgd-5"].spec["seed"], 3)
        self.assertIsNone(r["clean"].spec["eps"])
        self.assertEqual(r["aa"].components[1].robust_after, {"zero": 1, "one": 1, "two": 0})
        self.assertIsNone(r["clean"].sanity)

    def test_sanity_warnings_in_words(self):
        warnings = self.result.warnings
        self.assertEqual(len(warnings), 2, warnings)
        self.assertTrue(warnings[0].startswith("AutoAttack: 25.0% of the points have a zero cross-entropy gradient"))
        self.assertIn("9 targets asked for, the model has only 2", warnings[1])

    def test_to_dict_is_json_and_carries_provenance(self):
        d = json.loads(json.dumps(self.result.to_dict()))
        p = d["provenance"]
        self.assertEqual(p["weights_sha256"], "ab" * 32)
        self.assertEqual((p["dataset"], p["split"], p["precision"], p["device"]), ("digits", "test", "fp32", "cpu"))
        self.assertEqual(p["versions"]["libtorch"], "2.13.0")
        self.assertEqual(p["attacks"][1]["spec"]["eps"], 0.1)
        self.assertEqual(p["attacks"][1]["spec"]["step_size"], 0.025)
        self.assertEqual(d["attacks"][0]["classes"][1], {"class": "one", "correct": 3, "total": 4})
        self.assertEqual(d["attacks"][2]["sanity"]["targets_used"], 2)
        self.assertEqual(d["elapsed_seconds"], 3.0)

    def test_text_table_repr_and_str(self):
        text = self.result.table(pandas=False)
        lines = text.splitlines()
        self.assertIn("PGD-5", lines[0])
        self.assertTrue(any(l.startswith("zero") and "100.00" in l for l in lines), text)
        for row in ("Avg", "Worst", "Worst-10%", "NSD"):
            self.assertTrue(any(l.startswith(row) for l in lines), row)
        self.assertIn("Clean 75.00%", repr(self.result))
        self.assertIn("WARNING AutoAttack", str(self.result))
        self.assertIn("eps 0.1, 5 steps, step 0.025, seed 3", str(self.result))

    def test_table_is_a_dataframe_when_pandas_is_there(self):
        try:
            import pandas  # noqa: F401
        except ImportError:
            self.assertIsInstance(self.result.table(), str)
            return
        frame = self.result.table()
        self.assertEqual(list(frame.columns), ["Clean", "PGD-5", "AutoAttack"])
        self.assertAlmostEqual(frame.loc["zero", "Clean"], 100.0)


class Parsing(unittest.TestCase):
    def test_eps(self):
        self.assertAlmostEqual(rfb_client.parse_eps("8/255"), 8 / 255)
        self.assertEqual(rfb_client.parse_eps(" 0.1 "), 0.1)
        self.assertEqual(rfb_client.parse_eps(0.05), 0.05)
        self.assertIsNone(rfb_client.parse_eps(None))
        for bad in ("x", "1/0", "2", -0.1):
            with self.assertRaises(ValueError):
                rfb_client.parse_eps(bad)

    def test_attack_names_pass_through(self):
        self.assertEqual(rfb_client.attack_names("clean, pgd-7 ,aa@5"), "clean,pgd-7,aa@5")
        self.assertEqual(rfb_client.attack_names(["clean", "aa:apgd-ce+square"]), "clean,aa:apgd-ce+square")
        with self.assertRaises(ValueError):
            rfb_client.attack_names(" , ")


# ---------------------------------------------------------------- a fake evaluator


class FakeEvaluator(pb_grpc.EvaluatorServicer):
    def __init__(self):
        self.uploads = []
        self.requests = []
        self.lock = threading.Lock()

    def ServerInfo(self, request, context):
        authorization = dict(context.invocation_metadata()).get("authorization", "")
        client = authorization[len("Bearer "):] if authorization.startswith("Bearer ") else "local"
        return pb.ServerInfoResponse(
            versions=pb.Versions(evaluator="0.9.0", libtorch="2.13.0", proto="v1"),
            device="cpu",
            uploads_enabled=True,
            max_upload_bytes=1 << 30,
            your_upload_prefix="uploads/" + client,
            model_code_protection="TorchScript trusted (in-process)",
        )

    def ListModels(self, request, context):
        return pb.ListModelsResponse(models=[pb.ModelInfo(name="natural-s0/best", architecture="digits-cnn", num_classes=3)], problems=["bad: no manifest"])

    def UploadModel(self, request_iterator, context):
        parts = list(request_iterator)
        header = parts[0].header
        chunks = [p.chunk for p in parts[1:]]
        if any(p.WhichOneof("part") != "chunk" for p in parts[1:]):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a second header")
        data = b"".join(chunks)
        if len(data) != header.size or hashlib.sha256(data).hexdigest() != header.sha256:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the bytes sent differ from the header's size or sha256")
        if header.name == "taken":
            context.abort(grpc.StatusCode.ALREADY_EXISTS, "uploads/local/taken exists with other bytes")
        with self.lock:
            self.uploads.append((header, [len(c) for c in chunks], data))
        return pb.ModelInfo(
            name="uploads/local/" + header.name,
            architecture=header.architecture or "torchscript",
            num_classes=3,
            input_shape=[1, 8, 8],
            class_names=CLASSES,
            dataset=header.dataset,
            method=header.method,
            weights_sha256=header.sha256,
            manifest_json=json.dumps({"method": header.method}),
        )

    def DeleteModel(self, request, context):
        if not request.model.startswith("uploads/local/"):
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "%s is not one of your uploads" % request.model)
        return pb.DeleteModelResponse(bytes=123)

    def Evaluate(self, request, context):
        with self.lock:
            self.requests.append(request)
        if request.model == "missing":
            context.abort(grpc.StatusCode.NOT_FOUND, "no model missing under the models directory")
        yield pb.EvaluateEvent(queued=pb.QueuePosition(ahead=1))
        messages = sample_messages()
        for i, message in enumerate(messages):
            yield pb.EvaluateEvent(progress=pb.Progress(attack=message.attack_name, attack_index=i, examples_done=6, examples_total=12, component=message.attack_name, components=1))
            yield pb.EvaluateEvent(result=message)
        yield pb.EvaluateEvent(done=pb.Done(elapsed_seconds=4.5))


@contextlib.contextmanager
def fake_server():
    servicer = FakeEvaluator()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=[("grpc.max_receive_message_length", 5 << 20)])
    pb_grpc.add_EvaluatorServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, "127.0.0.1:%d" % port
    finally:
        server.stop(None)


class AgainstAFakeServer(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls._context = fake_server()
        cls.servicer, cls.address = cls._context.__enter__()
        cls.client = rfb_client.connect(cls.address)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls._context.__exit__(None, None, None)

    def test_server_info_and_listing(self):
        info = self.client.server_info()
        self.assertTrue(info.uploads_enabled)
        self.assertEqual(info.your_upload_prefix, "uploads/local")
        self.assertEqual(info.versions["evaluator"], "0.9.0")
        with rfb_client.connect("http://" + self.address, token="alice") as with_token:
            self.assertEqual(with_token.server_info().your_upload_prefix, "uploads/alice", "the token goes as a bearer")
        models = self.client.list_models()
        self.assertEqual(models.names, ["natural-s0/best"])
        self.assertEqual(models.problems, ["bad: no manifest"])

    def test_evaluate_passes_the_names_eps_and_seed_through(self):
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            result = self.client.evaluate(
                "uploads/local/mine", attacks="clean, pgd-5 ,aa", eps="8/255", step_size="2/255", seed=3,
                examples_per_class=4, precision="bf16", progress=False,
            )
        self.assertEqual(stderr.getvalue(), "", "progress=False writes nothing")
        request = self.servicer.requests[-1]
        self.assertEqual(request.attack_names, "clean,pgd-5,aa")
        self.assertEqual(len(request.attacks), 0)
        self.assertAlmostEqual(request.eps, 8 / 255)
        self.assertAlmostEqual(request.step_size, 2 / 255)
        self.assertEqual((request.seed, request.examples_per_class, request.precision), (3, 4, pb.PRECISION_BF16))
        self.assertEqual(request.split, pb.SPLIT_TEST)
        self.assertFalse(request.HasField("shard"))
        self.assertEqual(result.names, ["Clean", "PGD-5", "AutoAttack"])
        self.assertEqual(result["aa"].requested, "aa")
        self.assertEqual(result.elapsed_seconds, 4.5)

        self.client.evaluate("m", attacks=["fgsm"], eps=None, shard=(1, 3), progress=False)
        request = self.servicer.requests[-1]
        self.assertFalse(request.HasField("eps"))
        self.assertFalse(request.HasField("step_size"))
        self.assertEqual((request.shard.index, request.shard.count), (1, 3))

    def test_plain_progress_without_tqdm(self):
        from rfb_client import progress

        real = progress._tqdm
        progress._tqdm = lambda: None
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):
                self.client.evaluate("uploads/local/mine", progress=True)
        finally:
            progress._tqdm = real
        self.assertIn("[rfb] PGD-5 [2/3]", stderr.getvalue())

    def test_upload_progress_says_the_server_checks_the_model(self):
        from rfb_client import progress

        real = progress._tqdm
        progress._tqdm = lambda: None
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):
                self.client.send(b"0123456789" * 300, "raw", "digits", chunk_size=1024, progress=True)
        finally:
            progress._tqdm = real
        lines = stderr.getvalue().splitlines()
        self.assertIn("the server is checking the model", lines[-1], lines)

    def test_errors_carry_the_servers_message(self):
        with self.assertRaises(rfb_client.NotFound) as caught:
            self.client.evaluate("missing", progress=False)
        self.assertIn("no model missing under the models directory", str(caught.exception))
        self.assertEqual(caught.exception.code, grpc.StatusCode.NOT_FOUND)
        self.assertIsInstance(caught.exception, LookupError)
        with self.assertRaises(rfb_client.AlreadyExists) as caught:
            self.client.send(b"abc", "taken", "digits", progress=False)
        self.assertIn("exists with other bytes", caught.exception.details)
        with self.assertRaises(rfb_client.PermissionDenied):
            self.client.delete("natural-s0/best")
        self.assertEqual(self.client.delete("uploads/local/x"), 123)
        with self.assertRaises(rfb_client.Unavailable) as caught:
            rfb_client.connect("127.0.0.1:1", timeout=5).list_models()
        self.assertIn("cannot reach the evaluator at 127.0.0.1:1", str(caught.exception))

    def test_upload_of_bytes_and_a_path_in_chunks(self):
        data = os.urandom(2 * 1024 + 5)
        info = self.client.send(data, "raw", "digits", chunk_size=1024, progress=False)
        header, chunk_sizes, received = self.servicer.uploads[-1]
        self.assertEqual(received, data)
        self.assertEqual(chunk_sizes, [1024, 1024, 5])
        self.assertEqual((header.size, header.sha256), (len(data), hashlib.sha256(data).hexdigest()))
        self.assertEqual(header.format, pb.MODEL_FORMAT_UNSPECIFIED)
        self.assertEqual(info.name, "uploads/local/raw")
        self.assertEqual((info.upload_bytes, info.export), (len(data), "bytes"))
        self.assertGreater(info.upload_seconds, 0)

        with tempfile.TemporaryDirectory() as work:
            path = os.path.join(work, "my weights.pt")
            with open(path, "wb") as f:
                f.write(data)
            info = self.client.send(path, None, "digits", arch="digits-cnn", mean=[0.5], std=[0.25], progress=False)
        header, _, received = self.servicer.uploads[-1]
        self.assertEqual(received, data)
        self.assertEqual(header.name, "my-weights-" + hashlib.sha256(data).hexdigest()[:12])
        self.assertEqual((header.format, header.architecture, header.file_name), (pb.MODEL_FORMAT_STATE_DICT, "digits-cnn", "my_weights.pt"))
        self.assertEqual((list(header.mean), list(header.std), header.method), ([0.5], [0.25], "imported"))
        with self.assertRaises(ValueError):
            self.client.send(data, "x", "digits", chunk_size=5 << 20)
        with self.assertRaises(ValueError):
            self.client.send(data, "x", "digits", mean=[0.5])

    def test_modules_are_scripted_or_traced_and_state_dicts_need_an_arch(self):
        try:
            import torch
        except ImportError:
            self.skipTest("no torch")
        import torch.nn as nn

        class Scriptable(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(64, 3)

            def forward(self, x):
                return self.fc(x.flatten(1))

        class NotScriptable(Scriptable):
            def forward(self, x):
                # **kwargs-style Python that torch.jit.script refuses, but tracing records.
                shape = dict(start_dim=1)
                return self.fc(x.flatten(**shape))

        torch.manual_seed(0)
        for module, how in ((Scriptable(), "torch.jit.script"), (NotScriptable(), "torch.jit.trace")):
            module.train()
            info = self.client.send(module, None, "digits", progress=False)
            self.assertTrue(info.export.startswith(how), info.export)
            self.assertTrue(module.training, "the caller's module is left as it was")
            header, _, data = self.servicer.uploads[-1]
            self.assertEqual(header.format, pb.MODEL_FORMAT_TORCHSCRIPT)
            loaded = torch.jit.load(io.BytesIO(data))
            x = torch.rand(5, 1, 8, 8)
            torch.testing.assert_close(loaded(x), module(x))
        state_dict = Scriptable().state_dict()
        with self.assertRaises(ValueError):
            self.client.send(state_dict, "sd", "digits", progress=False)
        info = self.client.send(state_dict, "sd", "digits", arch="digits-cnn", progress=False)
        header, _, data = self.servicer.uploads[-1]
        self.assertEqual((header.format, header.architecture), (pb.MODEL_FORMAT_STATE_DICT, "digits-cnn"))
        self.assertEqual(set(torch.load(io.BytesIO(data), weights_only=True)), set(state_dict))
        with self.assertRaises(TypeError):
            self.client.send(object(), "x", "digits", progress=False)

    def test_benchmark_in_one_call(self):
        result = rfb_client.benchmark(b"model bytes", dataset="digits", attacks="clean,pgd-5,aa", eps=0.1, address=self.address, progress=False, delete_after=True)
        self.assertEqual(result.model_info.name, "uploads/local/model-" + hashlib.sha256(b"model bytes").hexdigest()[:12])
        self.assertEqual(self.servicer.requests[-1].model, result.model_info.name)
        self.assertAlmostEqual(self.servicer.requests[-1].eps, 0.1)
        self.assertEqual(len(result), 3)


if __name__ == "__main__":
    unittest.main(verbosity=2)
