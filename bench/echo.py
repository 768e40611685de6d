"""The unary baseline: a plain ``grpc.aio`` service that answers every call
with the bytes it received. It runs as its own process with the server's
options, so the only difference from ProcessFlow is the work done per call.

Run as ``python -m bench.echo --listen 127.0.0.1:PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Sequence

import grpc

from server.settings import ServerSettings

SERVICE = "bench.v1.EchoService"
METHOD = f"/{SERVICE}/Echo"


def _identity(data: bytes) -> bytes:
    return data


async def _echo(
    request: bytes, _context: grpc.aio.ServicerContext[bytes, bytes]
) -> bytes:
    return request


def echo_handler() -> grpc.GenericRpcHandler[bytes, bytes]:
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(
                _echo, request_deserializer=_identity, response_serializer=_identity
            )
        },
    )


def server_options(settings: ServerSettings) -> list[tuple[str, int]]:
    """The options server/app.py starts ProcessFlow's server with."""
    return [
        ("grpc.max_receive_message_length", settings.max_receive_message_bytes),
        ("grpc.so_reuseport", 0),
    ]


async def serve(listen: str) -> None:
    settings = ServerSettings()
    server = grpc.aio.server(
        options=server_options(settings),
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs or None,
    )
    server.add_generic_rpc_handlers((echo_handler(),))
    server.add_insecure_port(listen)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(1.0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.echo")
    parser.add_argument("--listen", required=True, help="HOST:PORT to listen on")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.listen))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
