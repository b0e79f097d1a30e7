"""`halffull router`: the SAL routing sidecar (see docs/router.md)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path

import uvloop

from halffull import defaults as D
from halffull.policy.registry import ROUTING_POLICIES
from halffull.router.app import Router
from halffull.router.config import FlagOverrides, load_config_file, merge, resolve_config_path
from halffull.router.requests import load_encoder

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
    parser.add_argument("--max-body-bytes", type=int, default=D.MAX_BODY_BYTES)
    parser.add_argument(
        "--max-attempts",
        type=int,
        help=f"endpoints tried per request, only while it cannot have reached an engine; "
        f"overrides the file (default {D.MAX_ATTEMPTS})",
    )
    t = parser.add_argument_group("timeouts (seconds; override the file's `timeouts`)")
    t.add_argument("--connect-timeout", type=float, help=f"default {D.CONNECT_TIMEOUT_S:g}")
    t.add_argument(
        "--first-byte-timeout",
        type=float,
        help=f"request sent to first body byte; default {D.FIRST_BYTE_TIMEOUT_S:g}",
    )
    t.add_argument(
        "--stream-idle-timeout",
        type=float,
        help=f"longest silence inside an answer; default {D.STREAM_IDLE_TIMEOUT_S:g}",
    )
    parser.add_argument(
        "--shed-queued-batches",
        type=int,
        help="answer 429 when every replica has more queued prefill than this many engine steps "
        f"(0: never); overrides the file (default {D.SHED_QUEUED_BATCHES})",
    )
    parser.add_argument(
        "--engine-api-key-file",
        metavar="PATH",
        help="file holding the key the engines require (sent as a bearer token; re-read live)",
    )
    parser.add_argument(
        "--shutdown-delay",
        type=float,
        default=D.SHUTDOWN_DELAY_S,
        help="after SIGTERM, seconds of failing /ready while still serving, before the listener "
        "closes",
    )
    parser.add_argument(
        "--drain-grace",
        type=float,
        default=float(D.DRAIN_GRACE_S),
        help="after the listener closes, seconds answers in flight get to finish",
    )
    parser.add_argument("--log-level", default="INFO")


async def _serve(
    router: Router, host: str, port: int, admin_port: int, shutdown_delay_s: float
) -> None:
    """Serve until SIGTERM or SIGINT, then drain: /ready fails at once (the Service drops the
    pod), requests keep being served for `shutdown_delay_s`, then the listener closes and answers
    in flight get the drain grace to finish."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await router.start(host, port, admin_port)
    try:
        await stop.wait()
        router.begin_drain()
        log.info("stopping: not ready; closing the listener in %.1f s", shutdown_delay_s)
        await asyncio.sleep(shutdown_delay_s)
        log.info("stopping: listener closed, finishing requests in flight")
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
        max_attempts=args.max_attempts,
        connect_seconds=args.connect_timeout,
        first_byte_seconds=args.first_byte_timeout,
        stream_idle_seconds=args.stream_idle_timeout,
        shed_queued_batches=args.shed_queued_batches,
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
        encode = load_encoder(args.tokenizer) if args.tokenizer else None
        count_text = (lambda text: max(1, len(encode(text)))) if encode else None
        router = Router(
            settings,
            flags=flags,
            config_path=config_path,
            api_key_file=Path(args.api_key_file) if args.api_key_file else None,
            max_body_bytes=args.max_body_bytes,
            engine_api_key_file=Path(args.engine_api_key_file)
            if args.engine_api_key_file
            else None,
            drain_grace_s=args.drain_grace,
            count_text=count_text,
            encode=encode,
        )
    except (OSError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    uvloop.install()  # libuv's event loop, cheaper per proxied request than asyncio's own
    asyncio.run(_serve(router, args.host, args.port, args.admin_port, args.shutdown_delay))
    return 0
