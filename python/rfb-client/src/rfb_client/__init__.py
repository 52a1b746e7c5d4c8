"""rfb_client: benchmark a model's robust fairness with the evaluator service, in one call.

    import rfb_client
    result = rfb_client.benchmark(model, dataset="cifar10", attacks="clean,pgd,aa", address="gpu-box:50051")
    print(result)          # per-class accuracy under each attack, Avg / Worst / Worst-10% / NSD

Or step by step:

    client = rfb_client.connect("gpu-box:50051", token="...")
    info = client.send(model, "mine", "cifar10")          # an nn.Module, a state dict, a path, bytes
    result = client.evaluate(info.name, attacks="clean,pgd,aa", eps="8/255")
    result.to_dict(); result.table()
    client.delete(info.name)

The gRPC contract is proto/proto/rfb/v1/evaluator.proto; its stubs are in
``rfb_client._generated`` (``evaluator_pb2``, ``evaluator_pb2_grpc``) for anything this API
does not cover.
"""

from .client import DEFAULT_ADDRESS, Client, ModelInfo, Models, ServerInfo, attack_names, benchmark, connect, parse_eps
from .errors import (
    AlreadyExists,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    RfbError,
    ServerError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from .result import AttackResult, ClassCount, Component, Metrics, Result, Sanity

__version__ = "0.1.0"

__all__ = [
    "benchmark",
    "connect",
    "Client",
    "ModelInfo",
    "Models",
    "ServerInfo",
    "Result",
    "AttackResult",
    "ClassCount",
    "Component",
    "Metrics",
    "Sanity",
    "RfbError",
    "AlreadyExists",
    "Cancelled",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "ServerError",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "attack_names",
    "parse_eps",
    "DEFAULT_ADDRESS",
]
