"""gRPC stubs generated from proto/coldfuse/v1 when the package is built."""
