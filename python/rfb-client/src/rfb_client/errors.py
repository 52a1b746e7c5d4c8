"""Exceptions of rfb_client: every gRPC status the evaluator answers becomes one of these, with
the server's own message.

    try:
        client.send("mine.pt", "mine", "cifar10")
    except rfb_client.AlreadyExists as e:
        print(e.details)        # the server's sentence
        print(e.code)           # grpc.StatusCode.ALREADY_EXISTS
"""

import grpc


class RfbError(Exception):
    """A call to the evaluator failed.

    Attributes: ``code`` (a ``grpc.StatusCode``, or None for an error found by the client
    itself), ``details`` (the server's message), ``call`` (which RPC, e.g. "UploadModel"),
    ``rpc_error`` (the original ``grpc.RpcError``, if any).
    """

    code = None

    def __init__(self, details, call=None, code=None, rpc_error=None):
        self.details = details
        self.call = call
        if code is not None:
            self.code = code
        self.rpc_error = rpc_error
        super().__init__(str(self))

    def __str__(self):
        where = "%s: " % self.call if self.call else ""
        status = "%s: " % self.code.name if self.code is not None else ""
        return "%s%s%s" % (where, status, self.details)


class InvalidArgument(RfbError, ValueError):
    """INVALID_ARGUMENT: a bad request (unknown attack name, bad header, not a model, size or
    sha256 mismatch...)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(RfbError, LookupError):
    """NOT_FOUND: no such model (or data set files) on the server."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(RfbError):
    """ALREADY_EXISTS: another model (other bytes or another header) already has this name."""

    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(RfbError):
    """PERMISSION_DENIED: e.g. deleting a model this client did not upload."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(RfbError):
    """UNAUTHENTICATED: the server wants a token (connect(..., token=...)) or refused this one."""

    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(RfbError):
    """RESOURCE_EXHAUSTED: over a limit (job cost, queue, upload size or count)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(RfbError):
    """FAILED_PRECONDITION: e.g. uploads are off on this server, or it cannot run TorchScript."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(RfbError):
    """UNAVAILABLE: the server cannot be reached or is shutting down."""

    code = grpc.StatusCode.UNAVAILABLE


class Unimplemented(RfbError):
    """UNIMPLEMENTED: the server is older than this client's contract."""

    code = grpc.StatusCode.UNIMPLEMENTED


class Cancelled(RfbError):
    """CANCELLED: the call was cancelled (by this client, or the stream ended early)."""

    code = grpc.StatusCode.CANCELLED


class DeadlineExceeded(RfbError, TimeoutError):
    """DEADLINE_EXCEEDED: the call's timeout passed."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ServerError(RfbError):
    """INTERNAL, UNKNOWN, DATA_LOSS or any other status."""


_BY_CODE = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        Unauthenticated,
        ResourceExhausted,
        FailedPrecondition,
        Unavailable,
        Unimplemented,
        Cancelled,
        DeadlineExceeded,
    )
}


def from_rpc_error(error, call, address=None):
    """The RfbError for a ``grpc.RpcError`` raised by ``call``."""
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else None
    if not details:
        details = str(error)
    if code == grpc.StatusCode.UNAVAILABLE and address:
        details = "cannot reach the evaluator at %s: %s" % (address, details)
    cls = _BY_CODE.get(code, ServerError)
    return cls(details, call=call, code=code, rpc_error=error)
