"""Turning what a user has (an nn.Module, a state dict, a file, bytes) into the file an upload
sends: its bytes (or path), format, size, sha256 and how it was made."""

import copy
import hashlib
import io
import os
import re
import sys
import warnings

from ._generated import evaluator_pb2 as pb

# Each data set's input shape (channels, height, width), as the evaluator's `DatasetKind`.
INPUT_SHAPES = {
    "digits": (1, 8, 8),
    "cifar10": (3, 32, 32),
    "cifar100": (3, 32, 32),
    "tiny-imagenet": (3, 64, 64),
}

READ_BLOCK = 1 << 20


class ModelFile:
    """A model file ready to send: ``data`` (bytes) or ``path``, ``size``, ``sha256``,
    ``format`` (a ModelFormat value), ``file_name``, and ``export`` (how it was made, e.g.
    "torch.jit.script", "torch.jit.trace (torch.jit.script failed: ...)", "state dict", "file")."""

    def __init__(self, size, sha256, format, file_name, export, data=None, path=None):
        self.size, self.sha256, self.format = size, sha256, format
        self.file_name, self.export, self.data, self.path = file_name, export, data, path

    def chunks(self, chunk_size):
        """The file's bytes in pieces of at most chunk_size."""
        if self.data is not None:
            view = memoryview(self.data)
            for start in range(0, len(view), chunk_size):
                yield bytes(view[start : start + chunk_size])
        else:
            with open(self.path, "rb") as f:
                while True:
                    block = f.read(chunk_size)
                    if not block:
                        break
                    yield block


def _from_bytes(data, format, file_name, export):
    data = bytes(data)
    return ModelFile(len(data), hashlib.sha256(data).hexdigest(), format, file_name, export, data=data)


def _from_path(path, format):
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while True:
            block = f.read(READ_BLOCK)
            if not block:
                break
            digest.update(block)
            size += len(block)
    return ModelFile(size, digest.hexdigest(), format, file_name(path), "file", path=os.fspath(path))


_FILE_NAME_OK = re.compile(r"[^A-Za-z0-9_+.-]+")


def file_name(path):
    """The file's name as the server records it: letters, digits, '-', '_', '+' and '.', not
    starting with '.' (others become '_')."""
    name = _FILE_NAME_OK.sub("_", os.path.basename(os.fspath(path))).lstrip(".")
    return name[:128] or "upload"


def _torch():
    """torch, if the caller could have handed us a torch object (it is then already imported)."""
    return sys.modules.get("torch")


def _is_module(model):
    torch = _torch()
    return torch is not None and isinstance(model, torch.nn.Module)


def _is_state_dict(model):
    if not isinstance(model, dict):
        return False
    torch = _torch()
    return torch is not None and all(isinstance(k, str) for k in model)


def _first_line(error):
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:200]


def _check_export(original, exported, example):
    """Warns when the exported module does not compute what the original does on ``example``."""
    torch = _torch()
    with torch.no_grad():
        want = original(example)
        got = exported(example)
    if not (isinstance(want, torch.Tensor) and isinstance(got, torch.Tensor)):
        raise TypeError("the model must return one tensor of logits, got %s" % type(want).__name__)
    if want.shape != got.shape or not torch.allclose(want, got, rtol=1e-4, atol=1e-5):
        warnings.warn(
            "the exported TorchScript module's outputs differ from the model's on a random input "
            "(largest difference %.3g): check the model has no data-dependent control flow"
            % (want - got).abs().max().item()
            if want.shape == got.shape
            else "the exported module's output shape %s differs from the model's %s" % (tuple(got.shape), tuple(want.shape))
        )


def export_module(module, dataset, example_input=None):
    """An nn.Module as TorchScript bytes: ``torch.jit.script``, falling back to
    ``torch.jit.trace`` on an example input of the data set's shape (two random images, or
    ``example_input``). The module is exported from a CPU copy in eval mode (the caller's module
    is left as it is). Returns (bytes, how: "torch.jit.script" or "torch.jit.trace (...)")."""
    torch = _torch()
    if isinstance(module, torch.jit.ScriptModule):
        scripted, how = module, "TorchScript module as given"
    else:
        scripted, how = None, None
    with warnings.catch_warnings():
        # torch 2.13 marks torch.jit deprecated; TorchScript is still what the evaluator loads.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit")
        return _export(module, scripted, how, dataset, example_input)


def _export(module, scripted, how, dataset, example_input):
    torch = _torch()
    model = copy.deepcopy(module).cpu().eval()
    if example_input is None:
        if dataset not in INPUT_SHAPES:
            raise ValueError("unknown data set %r (known: %s)" % (dataset, ", ".join(INPUT_SHAPES)))
        generator = torch.Generator().manual_seed(0)
        example_input = torch.rand((2,) + INPUT_SHAPES[dataset], generator=generator)
    example_input = example_input.cpu()
    if scripted is None:
        try:
            scripted = torch.jit.script(model)
            how = "torch.jit.script"
        except Exception as error:  # scripting refuses much ordinary Python
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                scripted = torch.jit.trace(model, example_input, check_trace=False)
            how = "torch.jit.trace (torch.jit.script failed: %s)" % _first_line(error)
    else:
        scripted = copy.deepcopy(scripted).cpu().eval()
    _check_export(model, scripted, example_input)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    return buffer.getvalue(), how


def state_dict_bytes(state_dict):
    """A state dict saved with torch.save (tensors moved to the CPU)."""
    torch = _torch()
    cpu = {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in state_dict.items()}
    buffer = io.BytesIO()
    torch.save(cpu, buffer)
    return buffer.getvalue()


def prepare(model, dataset, arch=None, example_input=None):
    """The ModelFile for ``model``:

    * an ``nn.Module``: with ``arch`` (one of the evaluator's architectures), its state dict;
      without, TorchScript (script, else trace; see :func:`export_module`);
    * a state dict (a dict of tensors): needs ``arch``;
    * a path (str or os.PathLike) to a .pt/.pth file: a state dict when ``arch`` is given, else
      the server tells the format from the contents;
    * bytes: the same as a file's contents.
    """
    is_torchscript_arch = arch in (None, "", "torchscript")
    if _is_module(model):
        if not is_torchscript_arch:
            return _from_bytes(state_dict_bytes(model.state_dict()), pb.MODEL_FORMAT_STATE_DICT, "state_dict.pt", "state dict of the module")
        data, how = export_module(model, dataset, example_input)
        return _from_bytes(data, pb.MODEL_FORMAT_TORCHSCRIPT, "%s.pt" % type(model).__name__, how)
    if _is_state_dict(model):
        if is_torchscript_arch:
            raise ValueError("a state dict needs arch= (one of the evaluator's architectures, e.g. 'resnet18')")
        return _from_bytes(state_dict_bytes(model), pb.MODEL_FORMAT_STATE_DICT, "state_dict.pt", "state dict")
    fmt = pb.MODEL_FORMAT_UNSPECIFIED if is_torchscript_arch else pb.MODEL_FORMAT_STATE_DICT
    if isinstance(model, (bytes, bytearray, memoryview)):
        return _from_bytes(model, fmt, "upload", "bytes")
    if isinstance(model, (str, os.PathLike)):
        if not os.path.isfile(model):
            raise FileNotFoundError("no model file at %s" % os.fspath(model))
        return _from_path(model, fmt)
    raise TypeError(
        "cannot send a %s: give an nn.Module, a state dict (with arch=), a path to a .pt file, or bytes" % type(model).__name__
    )


_NAME_OK = re.compile(r"[^A-Za-z0-9._/-]+")


def default_name(model, model_file):
    """A name for an upload: the file's stem or the module's class, then 12 hex digits of the
    sha256 (so that sending the same bytes again is idempotent and other bytes get a new name)."""
    if isinstance(model, (str, os.PathLike)):
        stem = os.path.splitext(os.path.basename(os.fspath(model)))[0]
    elif _is_module(model):
        stem = type(model).__name__.lower()
    else:
        stem = "model"
    stem = _NAME_OK.sub("-", stem).strip("-./") or "model"
    return "%s-%s" % (stem[:100], model_file.sha256[:12])
