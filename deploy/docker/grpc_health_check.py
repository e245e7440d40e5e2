"""Container health check: asks a gRPC server's grpc.health.v1 service whether it is SERVING.

    python grpc_health_check.py PORT            # 127.0.0.1:PORT, the whole server ("")
    python grpc_health_check.py HOST:PORT [SERVICE]

Exit status 0 when SERVING, 1 otherwise, so Docker's HEALTHCHECK and compose's `healthcheck`
can run it as is. It needs only grpcio and grpcio-health-checking, which every image has.
"""

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TIMEOUT_SECONDS = 2.0


def target_address(argument: str) -> str:
    return f"127.0.0.1:{argument}" if argument.isdigit() else argument


def is_serving(address: str, service: str = "", timeout: float = TIMEOUT_SECONDS) -> bool:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError:
            return False
    return response.status == health_pb2.HealthCheckResponse.SERVING


def main(arguments: list[str]) -> int:
    if not 1 <= len(arguments) <= 2:
        print(__doc__, file=sys.stderr)
        return 2
    address = target_address(arguments[0])
    service = arguments[1] if len(arguments) == 2 else ""
    if is_serving(address, service):
        return 0
    print(f"{address} is not serving {service or 'the server'}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
