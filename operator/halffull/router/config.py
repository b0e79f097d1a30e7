"""The router's settings: `router.json` (written by the operator into a ConfigMap) and/or flags.

Reading and merging only; `halffull.router.reload` notices new versions of the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import ValidationError

from halffull.api.runtime_config import (
    ROUTER_CONFIG_FILE,
    RouterConfig,
    RouterDiscovery,
    RouterEndpoint,
    RouterPolicy,
)


@dataclass(frozen=True, slots=True)
class FlagOverrides:
    """Flags that, when given, win over the file (None: not given)."""

    endpoints: tuple[str, ...] = ()
    policy: str | None = None
    beta: float | None = None
    poll_interval_ms: int | None = None
    model: str | None = None


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
    policy: RouterPolicy | str = flags.policy or (config.policy if config else "sal")
    return Settings(
        model=flags.model or (config.model if config else None),
        policy=policy,
        beta=flags.beta
        if flags.beta is not None
        else (config.beta if config else RouterConfig.model_fields["beta"].default),
        poll_interval_ms=flags.poll_interval_ms or (config.poll_interval_ms if config else 100),
        max_num_batched_tokens=config.max_num_batched_tokens if config else None,
        max_model_len=config.max_model_len if config else None,
        endpoints=tuple(endpoints),
        discovery=config.discovery if config else None,
        source=source,
    )
