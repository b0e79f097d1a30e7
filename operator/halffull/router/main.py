"""`halffull router`: the SAL routing sidecar (see docs/router.md)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from pathlib import Path

from halffull.policy.registry import ROUTING_POLICIES
from halffull.router.app import Router
from halffull.router.config import FlagOverrides, load_config_file, merge, resolve_config_path
from halffull.router.requests import load_tokenizer

log = logging.getLogger("halffull.router")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="router.json, or the directory a ConfigMap is mounted at; reloaded when it changes",
    )
    parser.add_argument(
        "--endpoint",
        action="append",
        default=[],
        metavar="URL",
        help="an engine replica (repeatable); added to the config file's endpoints",
    )
    parser.add_argument("--host", default="0.0.0.0", help="address of both ports")
    parser.add_argument("--port", type=int, default=8000, help="public OpenAI-compatible port")
    parser.add_argument(
        "--admin-port", type=int, default=9000, help="port of /health, /ready, /metrics"
    )
    parser.add_argument(
        "--policy", choices=sorted(ROUTING_POLICIES), help="overrides the file's policy"
    )
    parser.add_argument("--beta", type=float, help="SAL's memory weight; overrides the file")
    parser.add_argument(
        "--poll-interval-ms", type=int, help="engine /metrics poll interval; overrides the file"
    )
    parser.add_argument("--model", help="served model name (informational; overrides the file)")
    parser.add_argument(
        "--api-key-file",
        metavar="PATH",
        help="file holding the bearer token clients must send (e.g. a mounted Secret key)",
    )
    parser.add_argument(
        "--tokenizer",
        metavar="PATH",
        help="the model's tokenizer.json: count text prompts exactly instead of estimating "
        "(needs the 'tokenizers' package)",
    )
    parser.add_argument("--max-body-bytes", type=int, default=16 * 1024 * 1024)
    parser.add_argument(
        "--max-attempts",
        type=int,
        default=3,
        help="endpoints tried per request when connections are refused",
    )
    parser.add_argument("--log-level", default="INFO")


async def _serve(router: Router, host: str, port: int, admin_port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await router.start(host, port, admin_port)
    try:
        await stop.wait()
        log.info("stopping: finishing requests in flight")
    finally:
        await router.stop()


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    flags = FlagOverrides(
        endpoints=tuple(args.endpoint),
        policy=args.policy,
        beta=args.beta,
        poll_interval_ms=args.poll_interval_ms,
        model=args.model,
    )
    config_path = resolve_config_path(args.config) if args.config else None
    try:
        config = load_config_file(config_path) if config_path else None
        settings = merge(config, flags, str(config_path) if config_path else "flags")
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    if not settings.endpoints and settings.discovery is None:
        log.error("no endpoints: give --config with endpoints or discovery, or --endpoint URL")
        return 2
    try:
        count_text = load_tokenizer(args.tokenizer) if args.tokenizer else None
        router = Router(
            settings,
            flags=flags,
            config_path=config_path,
            api_key_file=Path(args.api_key_file) if args.api_key_file else None,
            max_body_bytes=args.max_body_bytes,
            max_attempts=args.max_attempts,
            count_text=count_text,
        )
    except (OSError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    with contextlib.suppress(ImportError):
        import uvloop  # optional: noticeably lower per-request overhead when installed

        uvloop.install()
    asyncio.run(_serve(router, args.host, args.port, args.admin_port))
    return 0
