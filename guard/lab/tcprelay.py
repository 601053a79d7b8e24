"""
A dumb TCP relay for the lab: it listens where the guard would and copies
bytes to a fixed destination, nothing more.  TLS then runs end to end between
the two Prosodies.  It is the baseline the guard is benchmarked against.

Run it as a process::

    python -m guard.lab.tcprelay --route 127.0.3.1:5269=127.0.2.1:5269 \\
        --route 127.0.3.2:5269=127.0.1.1:5269
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass
from typing import Sequence

CHUNK = 64 * 1024
CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True)
class Route:
    """Connections accepted on ``listen`` are relayed to ``destination``."""

    listen_host: str
    listen_port: int
    destination_host: str
    destination_port: int

    @classmethod
    def parse(cls, text: str) -> "Route":
        listen, separator, destination = text.partition("=")
        if not separator:
            raise argparse.ArgumentTypeError(f"expected host:port=host:port, got {text!r}")
        try:
            listen_host, listen_port = _host_port(listen)
            destination_host, destination_port = _host_port(destination)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from error
        return cls(listen_host, listen_port, destination_host, destination_port)


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected host:port, got {text!r}")
    return host, int(port)


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until end of stream, honouring the writer's flow control."""
    try:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError, RuntimeError):
            writer.close()


async def _relay_one(route: Route, client_reader, client_writer) -> None:
    try:
        server_reader, server_writer = await asyncio.wait_for(
            asyncio.open_connection(route.destination_host, route.destination_port),
            CONNECT_TIMEOUT,
        )
    except (OSError, asyncio.TimeoutError):
        client_writer.close()
        return
    try:
        await asyncio.gather(
            _copy(client_reader, server_writer),
            _copy(server_reader, client_writer),
        )
    finally:
        server_writer.close()
        client_writer.close()


async def serve(routes: Sequence[Route]) -> list[asyncio.base_events.Server]:
    """Listen on every route; return the servers (already serving)."""
    servers = []
    for route in routes:

        async def accepted(reader, writer, route=route):
            await _relay_one(route, reader, writer)

        servers.append(await asyncio.start_server(accepted, route.listen_host, route.listen_port))
    return servers


async def _run(routes: Sequence[Route]) -> None:
    servers = await serve(routes)
    described = ", ".join(
        f"{r.listen_host}:{r.listen_port}->{r.destination_host}:{r.destination_port}" for r in routes
    )
    print(f"lab tcp relay: {described}", flush=True)
    await asyncio.gather(*(server.serve_forever() for server in servers))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m guard.lab.tcprelay")
    parser.add_argument("--route", action="append", type=Route.parse, required=True,
                        metavar="LISTEN_HOST:PORT=DEST_HOST:PORT")
    arguments = parser.parse_args(argv)
    try:
        asyncio.run(_run(arguments.route))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
