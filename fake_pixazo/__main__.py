"""Serve the fake Pixazo gateway from the command line, for trying the bot without a key.

    python -m fake_pixazo [--host 127.0.0.1] [--port 8088] [--api-key demo-key]
        [--queued-seconds S] [--processing-seconds S] [--long-edge PX] [--noisy]
        [--balance N] [--rate-limit PER_SECOND] [--quiet]

Prints one line with the PIXAZO_BASE_URL and PIXAZO_API_KEY to give the bot, then serves
until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence

from fake_pixazo.server import FakePixazo


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``python -m fake_pixazo``."""
    parser = argparse.ArgumentParser(
        prog="python -m fake_pixazo",
        description="Serve a fake Pixazo gateway for Krea 2 Large on loopback.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8088, help="port, 0 for any (default 8088)")
    parser.add_argument("--api-key", default="demo-key", help="accepted key (default demo-key)")
    parser.add_argument("--queued-seconds", type=float, default=1.0, help="time QUEUED (1.0)")
    parser.add_argument(
        "--processing-seconds", type=float, default=4.0, help="time PROCESSING (4.0)"
    )
    parser.add_argument("--long-edge", type=int, default=1024, help="image long edge, px (1024)")
    parser.add_argument("--noisy", action="store_true", help="serve noisy, incompressible images")
    parser.add_argument("--balance", type=int, default=None, help="submits allowed (unlimited)")
    parser.add_argument("--rate-limit", type=float, default=None, help="max requests/second")
    parser.add_argument("--quiet", action="store_true", help="do not log each request")
    return parser


async def serve(args: argparse.Namespace) -> None:
    """Run the fake until cancelled, after printing where it listens."""
    fake = FakePixazo(
        api_key=args.api_key,
        queued_seconds=args.queued_seconds,
        processing_seconds=args.processing_seconds,
        long_edge=args.long_edge,
        noisy=args.noisy,
        balance=args.balance,
        rate_limit=args.rate_limit,
    )
    await fake.start(args.host, args.port)
    try:
        print(
            f"Fake Pixazo gateway ready: PIXAZO_BASE_URL={fake.base_url} "
            f"PIXAZO_API_KEY={fake.api_key}  (Ctrl-C to stop)",
            flush=True,
        )
        await asyncio.Event().wait()
    finally:
        await fake.close()


def main(argv: Sequence[str] | None = None) -> None:
    """Parse arguments and serve until Ctrl-C."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
