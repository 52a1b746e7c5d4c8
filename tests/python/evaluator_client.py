#!/usr/bin/env python3
"""A client of the evaluator in another language, from nothing but the .proto.

Generates the Python stubs of proto/rfb/v1/evaluator.proto at run time with grpc_tools (into
a temporary directory), then against a running `evaluator serve`:

1. checks the standard health service (rfb.v1.Evaluator must be SERVING);
2. lists the models and runs one evaluation (CLEAN and FGSM, 2 examples per class), checking
   the stream (results in request order, per-class totals, Done last);
3. discovers the service through server reflection (grpcio-reflection's
   ProtoReflectionDescriptorDatabase, no stubs) and calls ListModels with message classes built
   from the reflected descriptors.

Prints one JSON line with what it found; exits non-zero on any failure.

    python tests/python/evaluator_client.py --address 127.0.0.1:50051 \
        --model natural-s0/best --proto-dir proto/proto [--token TOKEN]
"""

import argparse
import importlib
import json
import os
import sys
import tempfile


def generate_stubs(proto_dir, out_dir):
    from grpc_tools import protoc
    import grpc_tools

    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    code = protoc.main(
        [
            "grpc_tools.protoc",
            "-I" + proto_dir,
            "-I" + include,
            "--python_out=" + out_dir,
            "--grpc_python_out=" + out_dir,
            "rfb/v1/evaluator.proto",
        ]
    )
    if code != 0:
        raise SystemExit("protoc failed with exit code %d" % code)
    sys.path.insert(0, out_dir)
    pb2 = importlib.import_module("rfb.v1.evaluator_pb2")
    pb2_grpc = importlib.import_module("rfb.v1.evaluator_pb2_grpc")
    return pb2, pb2_grpc


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", required=True, help="host:port of `evaluator serve`")
    parser.add_argument("--model", required=True, help="model name relative to the models directory")
    parser.add_argument("--proto-dir", required=True, help="directory holding rfb/v1/evaluator.proto")
    parser.add_argument("--token", help="bearer token, if the server requires one")
    parser.add_argument("--per-class", type=int, default=2)
    args = parser.parse_args()

    import grpc
    from google.protobuf import descriptor_pool, message_factory
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    metadata = [("authorization", "Bearer " + args.token)] if args.token else []
    summary = {}
    with tempfile.TemporaryDirectory() as stubs, grpc.insecure_channel(args.address) as channel:
        pb2, pb2_grpc = generate_stubs(args.proto_dir, stubs)

        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(service="rfb.v1.Evaluator"), timeout=10)
        summary["health"] = health_pb2.HealthCheckResponse.ServingStatus.Name(status.status)

        stub = pb2_grpc.EvaluatorStub(channel)
        listing = stub.ListModels(pb2.ListModelsRequest(), metadata=metadata, timeout=30)
        summary["models"] = [m.name for m in listing.models]
        check(args.model in summary["models"], "%s not in %s" % (args.model, summary["models"]))

        request = pb2.EvaluateRequest(
            model=args.model,
            examples_per_class=args.per_class,
            attacks=[
                pb2.AttackSpec(kind=pb2.CLEAN),
                pb2.AttackSpec(kind=pb2.FGSM, eps=0.1),
            ],
        )
        results, done, progress = [], False, 0
        for event in stub.Evaluate(request, metadata=metadata, timeout=120):
            kind = event.WhichOneof("event")
            check(not done, "nothing may follow Done")
            if kind == "result":
                results.append(event.result)
            elif kind == "progress":
                progress += 1
            elif kind == "done":
                done = True
        check(done, "the stream ended without Done")
        check(progress > 0, "no progress events")
        summary["attacks"] = [r.attack_name for r in results]
        summary["examples"] = [sum(c.total for c in r.classes) for r in results]
        for r in results:
            check(all(c.total == args.per_class for c in r.classes), "per-class totals of %s" % r.attack_name)
            check(0 <= r.metrics.average <= 100, "average of %s" % r.attack_name)
        check(sum(c.correct for c in results[1].classes) <= sum(c.correct for c in results[0].classes) + 2,
              "FGSM far above clean")

        # Discovery by reflection: no stubs, only what the server describes.
        database = ProtoReflectionDescriptorDatabase(channel)
        summary["reflection_services"] = sorted(database.get_services())
        pool = descriptor_pool.DescriptorPool(database)
        service = pool.FindServiceByName("rfb.v1.Evaluator")
        summary["reflection_methods"] = [m.name for m in service.methods]
        method = service.methods_by_name["ListModels"]
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        call = channel.unary_unary(
            "/%s/%s" % (service.full_name, method.name),
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        dynamic = call(request_class(), metadata=metadata, timeout=30)
        summary["dynamic_models"] = [m.name for m in dynamic.models]

    print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    main()
