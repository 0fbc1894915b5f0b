"""One exception type for every failure, carrying the gRPC status code and the server's
message (which says what to fix)."""
from __future__ import annotations

import grpc


class Error(Exception):
    """A coldfuse call failed. `code` is a grpc.StatusCode (e.g. UNAUTHENTICATED,
    PERMISSION_DENIED, FAILED_PRECONDITION, INVALID_ARGUMENT); `message` is the server's
    explanation (or the client's, for problems found before sending)."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


def wrap(e: grpc.RpcError, what: str) -> Error:
    """An Error from a failed RPC, named after the call."""
    code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    details = e.details() if hasattr(e, "details") else str(e)
    return Error(code, f"{what}: {details}")
