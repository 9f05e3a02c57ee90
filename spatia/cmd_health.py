"""``spatia health``: ask a server's gRPC health service (grpc.health.v1) whether it is SERVING; exit 0 if so, 1
if not. The container's HEALTHCHECK (Dockerfile) runs it; it needs only the slim install (grpcio and
grpcio-health-checking), and the health service needs no token."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("health", help="check that a server is SERVING (exit 0) or not (exit 1)")
    p.add_argument("--server", default="127.0.0.1:50051", help="host:port (default 127.0.0.1:50051)")
    p.add_argument("--service", default="", help="service name; default '' = the whole server")
    p.add_argument("--timeout-s", type=float, default=3.0, help="give up after this long (default 3)")
    p.add_argument("--tls-ca", type=Path, help="PEM root certificates: the server uses TLS")


def check(server: str, service: str = "", timeout_s: float = 3.0, tls_ca: Path | None = None) -> str:
    """The serving status name (SERVING, NOT_SERVING, SERVICE_UNKNOWN, ...) or UNREACHABLE: <why>."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if tls_ca is not None:
        channel = grpc.secure_channel(server, grpc.ssl_channel_credentials(tls_ca.read_bytes()))
    else:
        channel = grpc.insecure_channel(server)
    with channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                             timeout=timeout_s)
        except grpc.RpcError as exc:
            return f"UNREACHABLE: {exc.code().name}: {exc.details()}"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


def run(args: argparse.Namespace) -> int:
    status = check(args.server, args.service, args.timeout_s, args.tls_ca)
    print(f"{args.server} {args.service or '(server)'}: {status}")
    return 0 if status == "SERVING" else 1
