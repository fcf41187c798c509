"""The image's HEALTHCHECK: is the component this container runs healthy?

The component is read from PID 1's command line (``python -m <component> [command]``):
a service answers SERVING on the standard gRPC health service (overall, ``""``) on its
port, the gateway answers 200 on ``/healthz``. A one-off command (``migrate``, ``seed``,
``dlq`` ...) is healthy while it runs. Kubernetes ignores HEALTHCHECK and uses the
probes of the manifests (k8s/); this is for ``docker run`` and podman.

    python scripts/healthcheck.py [component]      # exit 0 healthy, 1 not
"""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path

PORTS = {"members": 50051, "points": 50052, "orders": 50053, "community": 50054}


def running_component() -> tuple[str, str]:
    try:
        args = Path("/proc/1/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return "", ""
    if "-m" in args and args.index("-m") + 1 < len(args):
        rest = args[args.index("-m") + 1:]
        return rest[0], (rest[1] if len(rest) > 1 and rest[1] else "serve")
    return "", ""


def main() -> int:
    component, command = (sys.argv[1], "serve") if len(sys.argv) > 1 else running_component()
    if command != "serve":
        return 0
    if component == "gateway":
        port = os.environ.get("GATEWAY_PORT", "8080")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:  # noqa: S310
                return 0 if resp.status == 200 else 1
        except OSError:
            return 1
    if component in PORTS:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        port = os.environ.get(f"{component.upper()}_PORT", str(PORTS[component]))
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
            except grpc.RpcError:
                return 1
        return 0 if resp.status == health_pb2.HealthCheckResponse.SERVING else 1
    return 0  # the fakes and anything else: alive while running


if __name__ == "__main__":
    sys.exit(main())
