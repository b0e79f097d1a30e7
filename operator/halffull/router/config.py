"""The router's settings: `router.json` (written by the operator into a ConfigMap) and/or flags.

Reading and merging only; `halffull.router.reload` notices new versions of the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import ValidationError

from halffull import defaults as D
from halffull.api.runtime_config import (
    ROUTER_CONFIG_FILE,
    RouterConfig,
    RouterDiscovery,
    RouterEndpoint,
    RouterPolicy,
    RouterTimeouts,
)


@dataclass(frozen=True, slots=True)
class FlagOverrides:
    """Flags that, when given, win over the file (None: not given)."""

    endpoints: tuple[str, ...] = ()
    policy: str | None = None
    beta: float | None = None
    poll_interval_ms: int | None = None
    model: str | None = None
    max_attempts: int | None = None
    connect_seconds: float | None = None
    first_byte_seconds: float | None = None
    stream_idle_seconds: float | None = None
    shed_queued_batches: int | None = None


@dataclass(frozen=True, slots=True)
class Settings:
    model: str | None
    policy: str
    beta: float
    poll_interval_ms: int
    max_num_batched_tokens: int | None
    max_model_len: int | None
    endpoints: tuple[RouterEndpoint, ...]
    discovery: RouterDiscovery | None = None
    source: str = field(default="flags", compare=False)
    max_attempts: int = D.MAX_ATTEMPTS
    timeouts: RouterTimeouts = field(default_factory=RouterTimeouts)
    shed_queued_batches: int = D.SHED_QUEUED_BATCHES
    engine_metrics_port: int | None = None


def endpoint_from_url(url: str) -> RouterEndpoint:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"endpoint {url!r} is not an http(s) URL")
    return RouterEndpoint(name=parts.netloc, url=url.rstrip("/"))


def resolve_config_path(path: str) -> Path:
    p = Path(path)
    return p / ROUTER_CONFIG_FILE if p.is_dir() else p


def load_config_file(path: Path) -> RouterConfig:
    """Parse `router.json`; raises ValueError with the reason when it cannot be used."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc
    try:
        return RouterConfig.model_validate_json(text)
    except ValidationError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def merge(config: RouterConfig | None, flags: FlagOverrides, source: str) -> Settings:
    """The settings in force: the file's, with the flags given on the command line on top.
    Flag endpoints are added to the file's (names are host:port)."""
    endpoints = list(config.endpoints) if config is not None else []
    known = {e.url.rstrip("/") for e in endpoints}
    for url in flags.endpoints:
        ep = endpoint_from_url(url)
        if ep.url not in known:
            endpoints.append(ep)
            known.add(ep.url)
    policy: RouterPolicy | str = flags.policy or (config.policy if config else D.ROUTER_POLICY)
    timeouts = config.timeouts if config else RouterTimeouts()
    given = {
        "connect_seconds": flags.connect_seconds,
        "first_byte_seconds": flags.first_byte_seconds,
        "stream_idle_seconds": flags.stream_idle_seconds,
    }
    if any(v is not None for v in given.values()):
        try:
            timeouts = RouterTimeouts.model_validate(
                {**timeouts.model_dump(), **{k: v for k, v in given.items() if v is not None}}
            )
        except ValidationError as exc:
            raise ValueError(f"timeout flags: {exc}") from exc

    def pick(name: str, default: float) -> float:
        """The flag when given, else the file's value, else the default."""
        flag = getattr(flags, name)
        if flag is not None:
            return float(flag)
        return float(getattr(config, name)) if config is not None else default

    return Settings(
        model=flags.model or (config.model if config else None),
        policy=policy,
        beta=pick("beta", D.BETA),
        poll_interval_ms=int(pick("poll_interval_ms", D.POLL_INTERVAL_MS)),
        max_num_batched_tokens=config.max_num_batched_tokens if config else None,
        max_model_len=config.max_model_len if config else None,
        endpoints=tuple(endpoints),
        discovery=config.discovery if config else None,
        source=source,
        max_attempts=int(pick("max_attempts", D.MAX_ATTEMPTS)),
        timeouts=timeouts,
        shed_queued_batches=int(pick("shed_queued_batches", D.SHED_QUEUED_BATCHES)),
        engine_metrics_port=config.engine_metrics_port if config else None,
    )
