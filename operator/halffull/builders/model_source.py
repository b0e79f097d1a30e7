"""What `spec.source` adds to the engine pod: the `--model` argument, volumes, mounts, env.

A volume that holds a ready model is mounted read-only: nothing in the pod can damage a shared
copy. A Hugging Face download cache on a claim is the one writable exception (vLLM writes the
download there). The default source adds nothing to the pod, so objects created before
`spec.source` existed keep byte-identical children and are not rolled by an operator upgrade.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any

from halffull.api.spec import LLMService

MODEL_MOUNT = "/models"
"""Where a volume holding the weights appears in the engine container."""
MODEL_VOLUME = "model"
HF_CACHE_VOLUME = "hf-cache"
HF_TOKEN_ENV = "HF_TOKEN"


@dataclass(frozen=True)
class Placement:
    model_arg: str
    args: list[str] = field(default_factory=list)
    env: list[dict[str, Any]] = field(default_factory=list)
    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)


def _read_only_model(volume: dict[str, Any], model_arg: str) -> Placement:
    return Placement(
        model_arg=model_arg,
        # Weights are local: the Hub is never asked, even for a missing tokenizer file.
        env=[{"name": "HF_HUB_OFFLINE", "value": "1"}],
        volumes=[{"name": MODEL_VOLUME, **volume}],
        mounts=[{"name": MODEL_VOLUME, "mountPath": MODEL_MOUNT, "readOnly": True}],
    )


def placement(svc: LLMService, hf_home: str) -> Placement:
    """The pod parts for the spec's source; `hf_home` is where HF_HOME points in the pod."""
    src = svc.spec.source
    if src.persistent_volume_claim is not None:
        claim = src.persistent_volume_claim
        path = posixpath.join(MODEL_MOUNT, claim.path) if claim.path else MODEL_MOUNT
        volume = {"persistentVolumeClaim": {"claimName": claim.claim_name, "readOnly": True}}
        return _read_only_model(volume, path)
    if src.host_path is not None:
        volume = {"hostPath": {"path": src.host_path.path, "type": "Directory"}}
        return _read_only_model(volume, MODEL_MOUNT)
    if src.image is not None:
        return Placement(model_arg=src.image.path, env=[{"name": "HF_HUB_OFFLINE", "value": "1"}])
    hf = src.hugging_face
    if hf is None:  # a spec from before spec.source: the Hub, as then
        return Placement(model_arg=svc.spec.model)
    out = Placement(model_arg=svc.spec.model)
    if hf.revision:
        out.args.extend(["--revision", hf.revision])
    if hf.token_secret is not None:
        ref = {"name": hf.token_secret.name, "key": hf.token_secret.key}
        # The pod reads the Secret itself: the operator never sees or logs the token.
        out.env.append({"name": HF_TOKEN_ENV, "valueFrom": {"secretKeyRef": ref}})
    if hf.cache_claim_name:
        out.volumes.append(
            {"name": HF_CACHE_VOLUME, "persistentVolumeClaim": {"claimName": hf.cache_claim_name}}
        )
        out.mounts.append({"name": HF_CACHE_VOLUME, "mountPath": hf_home})
    return out
