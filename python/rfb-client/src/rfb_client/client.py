"""The evaluator's client: connect, send a model, evaluate it, read the result."""

import os
import time

import grpc

from . import errors
from ._generated import evaluator_pb2 as pb
from ._generated import evaluator_pb2_grpc as pb_grpc
from .model_file import default_name, prepare
from .progress import Bar, _size
from .result import Result

DEFAULT_ADDRESS = "127.0.0.1:50051"
# The contract's limit on one chunk of an upload is 4 MiB; 1 MiB leaves room for the message's
# own bytes under a server's 4 MiB message limit.
DEFAULT_CHUNK = 1 << 20
MAX_CHUNK = 4 << 20
DEFAULT_ATTACKS = "clean,pgd,aa"
PRECISIONS = {"fp32": pb.PRECISION_FP32, "bf16": pb.PRECISION_BF16, "fp32-fast": pb.PRECISION_FP32_FAST}
SPLITS = {"test": pb.SPLIT_TEST, "validation": pb.SPLIT_VALIDATION, "val": pb.SPLIT_VALIDATION, "train": pb.SPLIT_TRAIN}


def parse_eps(value):
    """A radius as a float: a number, or text such as "8/255", "0.1" or "2e-2" (the grammar of
    the command lines); must lie in [0, 1] (pixel scale). None stays None (the server's
    default)."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            if "/" in text:
                numerator, denominator = text.split("/", 1)
                number = float(numerator) / float(denominator)
            else:
                number = float(text)
        except (ValueError, ZeroDivisionError):
            raise ValueError("eps %r: not a number or a fraction like 8/255" % value) from None
    else:
        number = float(value)
    if not (0.0 <= number <= 1.0):
        raise ValueError("eps %r: must be a finite number in [0, 1] (pixel scale)" % (value,))
    return number


def attack_names(attacks):
    """Attack names as one comma-separated string, as the server parses them ("clean,pgd-7,aa");
    a list of names is joined."""
    if attacks is None:
        return DEFAULT_ATTACKS
    if isinstance(attacks, str):
        names = [a.strip() for a in attacks.split(",")]
    else:
        names = [str(a).strip() for a in attacks]
    names = [n for n in names if n]
    if not names:
        raise ValueError("no attacks given")
    return ",".join(names)


class ModelInfo:
    """A model on the server (its manifest in short). Attributes: ``name`` (what evaluate()
    takes), ``architecture``, ``num_classes``, ``input_shape``, ``class_names``, ``dataset``,
    ``method``, ``seed``, ``epoch`` (None when not recorded), ``weights_sha256``,
    ``parameter_count``, ``manifest`` (the whole manifest.json as a dict). After send(), also
    ``export`` (how the file was made), ``upload_bytes`` and ``upload_seconds``."""

    def __init__(self, message):
        import json

        self.message = message
        self.name = message.name
        self.architecture = message.architecture
        self.num_classes = message.num_classes
        self.input_shape = list(message.input_shape)
        self.class_names = list(message.class_names)
        self.dataset = message.dataset
        self.method = message.method
        self.seed = message.seed if message.HasField("seed") else None
        self.epoch = message.epoch if message.HasField("epoch") else None
        self.weights_sha256 = message.weights_sha256
        self.parameter_count = message.parameter_count
        try:
            self.manifest = json.loads(message.manifest_json) if message.manifest_json else {}
        except ValueError:
            self.manifest = {"unparsed": message.manifest_json}
        self.export = None
        self.upload_bytes = None
        self.upload_seconds = None

    def to_dict(self):
        out = {k: getattr(self, k) for k in (
            "name", "architecture", "num_classes", "input_shape", "class_names", "dataset", "method",
            "seed", "epoch", "weights_sha256", "parameter_count",
        )}
        if self.upload_seconds is not None:
            out.update(export=self.export, upload_bytes=self.upload_bytes, upload_seconds=self.upload_seconds)
        return out

    def __repr__(self):
        return "<ModelInfo %s: %s, %s, %d classes, %s parameters>" % (
            self.name,
            self.architecture,
            self.dataset,
            self.num_classes,
            "{:,}".format(self.parameter_count),
        )


class Models(list):
    """ListModels' answer: a list of ModelInfo, plus ``problems`` (directories the server could
    not read, with the reason)."""

    problems = ()

    @property
    def names(self):
        return [m.name for m in self]


class ServerInfo:
    """What a server is and allows: ``versions``, ``device``, ``uploads_enabled``, the upload
    limits (``max_upload_bytes``, ``max_uploads_per_client``, ``max_upload_bytes_per_client``;
    0 when uploads are off), ``model_code_protection`` (how model code runs) and
    ``your_upload_prefix`` (where this client's uploads go, e.g. "uploads/alice")."""

    FIELDS = (
        "device",
        "uploads_enabled",
        "max_upload_bytes",
        "max_uploads_per_client",
        "max_upload_bytes_per_client",
        "model_code_protection",
        "your_upload_prefix",
    )

    def __init__(self, message):
        self.message = message
        self.versions = {
            "evaluator": message.versions.evaluator,
            "libtorch": message.versions.libtorch,
            "proto": message.versions.proto,
        }
        for field in self.FIELDS:
            setattr(self, field, getattr(message, field))

    def to_dict(self):
        out = {"versions": self.versions}
        out.update({f: getattr(self, f) for f in self.FIELDS})
        return out

    def __repr__(self):
        return "<ServerInfo evaluator %s on %s, uploads %s, %s>" % (
            self.versions["evaluator"],
            self.device,
            "on (%s a file)" % _size(self.max_upload_bytes) if self.uploads_enabled else "off",
            self.model_code_protection,
        )


def _split_address(address, tls):
    for scheme, secure in (("https://", True), ("http://", False), ("grpc://", False), ("grpcs://", True)):
        if address.startswith(scheme):
            address = address[len(scheme):].rstrip("/")
            if secure and not tls:
                tls = True
            break
    return address, tls


class Client:
    """A connection to `evaluator serve`. Use :func:`connect` to make one; it closes its channel
    on ``close()`` or at the end of a ``with`` block.

    Every method raises an :class:`rfb_client.RfbError` subclass carrying the server's message
    when the call fails (e.g. :class:`~rfb_client.NotFound`, :class:`~rfb_client.AlreadyExists`).
    """

    def __init__(self, address=DEFAULT_ADDRESS, token=None, tls=False, timeout=None, options=None):
        address, tls = _split_address(address, tls)
        self.address = address
        self.timeout = timeout
        self._metadata = (("authorization", "Bearer " + token),) if token else ()
        channel_options = [
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20),
        ] + list(options or [])
        if tls:
            root = None
            if isinstance(tls, (str, os.PathLike)):
                with open(tls, "rb") as f:
                    root = f.read()
            elif isinstance(tls, bytes):
                root = tls
            credentials = grpc.ssl_channel_credentials(root_certificates=root)
            self.channel = grpc.secure_channel(address, credentials, channel_options)
        else:
            self.channel = grpc.insecure_channel(address, channel_options)
        self.stub = pb_grpc.EvaluatorStub(self.channel)

    # ---------------------------------------------------------------- plumbing

    def close(self):
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self):
        return "<rfb_client.Client %s>" % self.address

    def _call(self, name, request, timeout=None):
        try:
            return getattr(self.stub, name)(request, metadata=self._metadata, timeout=timeout or self.timeout)
        except grpc.RpcError as error:
            raise errors.from_rpc_error(error, name, self.address) from None

    # ---------------------------------------------------------------- models

    def server_info(self):
        """The server's versions, device, upload limits and model-code protection (ServerInfo)."""
        return ServerInfo(self._call("ServerInfo", pb.ServerInfoRequest()))

    def list_models(self):
        """Every model the server serves (a list of ModelInfo with ``.names`` and ``.problems``)."""
        answer = self._call("ListModels", pb.ListModelsRequest())
        models = Models(ModelInfo(m) for m in answer.models)
        models.problems = list(answer.problems)
        return models

    def describe(self, name):
        """One model's ModelInfo."""
        return ModelInfo(self._call("DescribeModel", pb.DescribeModelRequest(model=name)))

    def send(
        self,
        model,
        name=None,
        dataset="cifar10",
        arch=None,
        mean=None,
        std=None,
        class_names=None,
        method="imported",
        progress=True,
        example_input=None,
        chunk_size=DEFAULT_CHUNK,
        timeout=None,
    ):
        """Uploads a model (UploadModel) and returns its ModelInfo, whose ``name`` (e.g.
        "uploads/local/mine") is what :meth:`evaluate` takes.

        ``model`` is one of:

        * an ``nn.Module``: exported to TorchScript for you (``torch.jit.script``, falling back
          to ``torch.jit.trace`` on an example input of the data set's shape, or
          ``example_input``); the returned info's ``export`` says which was used. With ``arch``
          (one of the evaluator's architectures, e.g. "resnet18") its state dict is sent
          instead, which needs no TorchScript support on the server;
        * a state dict (needs ``arch``);
        * a path to a .pt/.pth file (a state dict with ``arch``, else TorchScript or whatever the
          server tells from the contents);
        * the bytes of such a file.

        ``name``: the model's name under this client's upload prefix (letters, digits, '-', '_',
        '.', '/'); None makes one from the file's stem or the module's class and the first 12
        hex digits of the file's sha256. ``dataset``: "digits", "cifar10", "cifar100" or
        "tiny-imagenet" (its classes and input shape). ``mean``/``std``: a per-channel input
        normalisation the server applies in front of the model (both or neither; the model then
        takes [0, 1] pixels as every attack does). ``class_names``: None for the data set's.
        ``method``: how the model was trained, recorded in its manifest.

        The file's size and sha256 are computed here and checked by the server; the bytes go in
        chunks of ``chunk_size`` (at most 4 MiB). Sending the same bytes with the same header
        again answers the existing model; other bytes under a taken name raise AlreadyExists.
        """
        if not 0 < chunk_size <= MAX_CHUNK:
            raise ValueError("chunk_size must be in (0, 4 MiB], got %d" % chunk_size)
        if (mean is None) != (std is None):
            raise ValueError("mean and std go together (both or neither)")
        model_file = prepare(model, dataset, arch=arch, example_input=example_input)
        if name is None:
            name = default_name(model, model_file)
        header = pb.UploadHeader(
            name=name,
            dataset=dataset,
            format=model_file.format,
            architecture="" if arch in (None, "torchscript") else arch,
            mean=[float(m) for m in (mean or [])],
            std=[float(s) for s in (std or [])],
            class_names=list(class_names or []),
            method=method or "",
            size=model_file.size,
            sha256=model_file.sha256,
            file_name=model_file.file_name,
        )
        bar = Bar(progress, "upload %s" % name, total=model_file.size, unit="B")

        def requests():
            yield pb.UploadModelRequest(header=header)
            for chunk in model_file.chunks(chunk_size):
                yield pb.UploadModelRequest(chunk=chunk)
                bar.update(len(chunk))
            # Everything is sent; the server now checks and converts the model, which may take
            # a while (a TorchScript module is run a few times, or waits for its turn).
            bar.set("upload %s: sent; the server is checking the model" % name, model_file.size, model_file.size)

        started = time.monotonic()
        try:
            answer = self._call("UploadModel", requests(), timeout=timeout)
        finally:
            bar.close()
        info = ModelInfo(answer)
        info.export = model_file.export
        info.upload_bytes = model_file.size
        info.upload_seconds = time.monotonic() - started
        return info

    def delete(self, name):
        """Removes a model this client uploaded; returns the bytes freed."""
        return self._call("DeleteModel", pb.DeleteModelRequest(model=name)).bytes

    # ---------------------------------------------------------------- evaluation

    def evaluate(
        self,
        model_name,
        attacks=DEFAULT_ATTACKS,
        eps="8/255",
        examples_per_class=0,
        precision="fp32",
        seed=0,
        step_size=None,
        dataset=None,
        split="test",
        batch_size=0,
        shard=None,
        progress=True,
        timeout=None,
    ):
        """Runs ``attacks`` on ``model_name`` and returns a :class:`Result`.

        ``attacks``: names as the command lines write them, comma-separated or as a list:
        clean, fgsm, pgd (PGD-20) or pgd-N, cw or cw-N, aa (AutoAttack standard), aa-rand,
        aa:COMPONENT+..., any aa with @N for a quick check; the server parses them.
        ``eps``: the L-inf radius in pixel scale, a float or text like "8/255" (None: each
        attack's default). ``step_size`` (PGD and CW-inf; None: eps/4) likewise. ``seed``: the
        randomised attacks' seed. ``examples_per_class``: the first N test examples of every
        class (0: the whole split). ``precision``: "fp32", "fp32-fast" or "bf16". ``dataset``:
        None for the model's own. ``split``: "test", "validation" or "train". ``shard``: (index,
        count) to evaluate one slice. ``batch_size``: 0 for the server's default. ``timeout``:
        seconds for the whole call (None: no limit).

        Shows the queue position and the progress of each attack (``progress=False``: nothing).
        Ctrl-C cancels the job on the server.
        """
        if precision not in PRECISIONS:
            raise ValueError("precision must be one of %s, got %r" % (", ".join(PRECISIONS), precision))
        if split not in SPLITS:
            raise ValueError("split must be one of test, validation, train; got %r" % (split,))
        names = attack_names(attacks)
        request = pb.EvaluateRequest(
            model=model_name,
            dataset=dataset or "",
            split=SPLITS[split],
            examples_per_class=int(examples_per_class or 0),
            batch_size=int(batch_size or 0),
            precision=PRECISIONS[precision],
            attack_names=names,
            seed=int(seed or 0),
        )
        eps = parse_eps(eps)
        if eps is not None:
            request.eps = eps
        step_size = parse_eps(step_size)
        if step_size is not None:
            request.step_size = step_size
        if shard is not None:
            index, count = shard
            request.shard.index, request.shard.count = int(index), int(count)
        return self._evaluate(request, names.split(","), progress, timeout)

    def _evaluate(self, request, requested, progress, timeout):
        bar = Bar(progress, "%s: waiting" % request.model, total=None, unit="ex")
        results, elapsed = [], None
        started = time.monotonic()
        call = None
        try:
            call = self.stub.Evaluate(request, metadata=self._metadata, timeout=timeout or self.timeout)
            for event in call:
                kind = event.WhichOneof("event")
                if kind == "queued":
                    bar.set("%s: queued, %d job(s) ahead" % (request.model, event.queued.ahead), 0, None)
                elif kind == "progress":
                    p = event.progress
                    stage = "%s [%d/%d]" % (p.attack, p.attack_index + 1, len(requested))
                    if p.components > 1 or (p.component and p.component != p.attack):
                        stage += " %s (%d/%d)" % (p.component, p.component_index + 1, p.components)
                    bar.set(stage, p.examples_done, p.examples_total or None)
                elif kind == "result":
                    results.append(event.result)
                elif kind == "done":
                    elapsed = event.done.elapsed_seconds
        except grpc.RpcError as error:
            raise errors.from_rpc_error(error, "Evaluate", self.address) from None
        except KeyboardInterrupt:
            if call is not None:
                call.cancel()
            raise
        finally:
            bar.close()
        if elapsed is None:
            raise errors.ServerError("the result stream ended without its Done message", call="Evaluate")
        return Result.from_messages(
            results,
            requested=requested,
            model=request.model,
            elapsed_seconds=elapsed,
            wall_seconds=time.monotonic() - started,
            request=request,
        )


def connect(address=DEFAULT_ADDRESS, token=None, tls=False, timeout=None, options=None):
    """A :class:`Client` of the evaluator at ``address`` ("host:port"; "https://host:port"
    turns TLS on).

    ``token``: the bearer token, for a server run with --token-file. ``tls``: False for a
    plain connection, True for TLS checked against the system's roots, or the path (or PEM
    bytes) of a CA certificate to check the server's against. ``timeout``: default seconds for
    every call (None: none). ``options``: extra gRPC channel options. The connection is made
    lazily, on the first call.
    """
    return Client(address, token=token, tls=tls, timeout=timeout, options=options)


def benchmark(
    model,
    dataset="cifar10",
    attacks=DEFAULT_ATTACKS,
    eps="8/255",
    address=DEFAULT_ADDRESS,
    token=None,
    tls=False,
    name=None,
    arch=None,
    mean=None,
    std=None,
    class_names=None,
    method="imported",
    examples_per_class=0,
    precision="fp32",
    seed=0,
    step_size=None,
    progress=True,
    delete_after=False,
):
    """Sends ``model`` to the evaluator at ``address``, evaluates it under ``attacks`` at
    ``eps`` on ``dataset``'s test split, and returns the :class:`Result`: RobustBench's
    ``benchmark(model, dataset=..., threat_model=...)`` for robust fairness.

        import rfb_client
        result = rfb_client.benchmark(model, dataset="cifar10", attacks="clean,pgd,aa", address="gpu-box:50051")
        print(result)

    ``model``: an nn.Module (exported to TorchScript; give ``arch`` to send its state dict for
    one of the evaluator's architectures instead), a state dict (with ``arch``), a file path or
    bytes; see :meth:`Client.send`. ``name``: None names the upload after the model and its
    sha256, so that benchmarking the same weights twice reuses the upload and the server's
    cached results. ``examples_per_class``: 0 for the whole test split (the paper's
    evaluation), or the first N of each class for a quick look. ``delete_after``: remove the
    upload once evaluated. The other arguments are those of :meth:`Client.send` and
    :meth:`Client.evaluate`. The ModelInfo of the upload is kept as ``result.model_info``.
    """
    with connect(address, token=token, tls=tls) as client:
        info = client.send(
            model,
            name=name,
            dataset=dataset,
            arch=arch,
            mean=mean,
            std=std,
            class_names=class_names,
            method=method,
            progress=progress,
        )
        result = client.evaluate(
            info.name,
            attacks=attacks,
            eps=eps,
            examples_per_class=examples_per_class,
            precision=precision,
            seed=seed,
            step_size=step_size,
            progress=progress,
        )
        result.model_info = info
        if delete_after:
            client.delete(info.name)
        return result
