"""Checks of what the CRD's OpenAPI schema cannot say (it has no cross-field rules on 1.20).

Each problem names the field, so the Degraded condition tells the user what to fix.
"""

from __future__ import annotations

import re

from halffull.api.spec import LLMService

# Longest child suffix is "-scheduler" (10 characters); children's names must be DNS-1035 labels.
MAX_NAME_LENGTH = 53
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

# Flags the operator sets from the spec; extraArgs may not repeat them.
RESERVED_ENGINE_FLAGS = {
    "--model": "spec.model",
    "--served-model-name": "spec.servedModelName",
    "--host": "(set by the operator)",
    "--port": "(set by the operator)",
    "--scheduler-cls": "spec.scheduler.policy",
    "--max-num-seqs": "spec.engine.maxNumSeqs",
    "--max-num-batched-tokens": "spec.engine.maxNumBatchedTokens",
    "--gpu-memory-utilization": "spec.engine.gpuMemoryUtilization",
    "--max-model-len": "spec.engine.maxModelLen",
    "--tensor-parallel-size": "spec.engine.gpus",
    "-tp": "spec.engine.gpus",
    "--revision": "spec.source.huggingFace.revision",
}


def problems(svc: LLMService) -> list[str]:
    """Everything wrong with the spec that the API server could not refuse; empty when valid."""
    out: list[str] = []
    name = svc.meta.name
    if len(name) > MAX_NAME_LENGTH or not _DNS_1035.match(name):
        out.append(
            f"metadata.name {name!r} must be a DNS-1035 label of at most {MAX_NAME_LENGTH} "
            "characters (lowercase letters, digits, '-', starting with a letter): child "
            "Services are named after it"
        )
    engine = svc.spec.engine
    for i, arg in enumerate(engine.extra_args):
        flag = arg.split("=", 1)[0]
        if flag in RESERVED_ENGINE_FLAGS:
            out.append(
                f"spec.engine.extraArgs[{i}]: {flag} is set by the operator; "
                f"use {RESERVED_ENGINE_FLAGS[flag]} instead"
            )
    seqs, budget = engine.max_num_seqs, engine.max_num_batched_tokens
    if seqs is not None and budget is not None and budget < seqs:
        out.append(
            f"spec.engine.maxNumBatchedTokens ({budget}) must be at least "
            f"spec.engine.maxNumSeqs ({seqs}): vLLM refuses a step budget below the batch size"
        )
    if svc.spec.router.api_key_secret is not None and not svc.spec.router.enabled:
        out.append(
            "spec.router.apiKeySecret needs spec.router.enabled=true: without the router "
            "nothing checks the key, and the endpoint would be open"
        )
    out += source_problems(svc)
    return out


def source_problems(svc: LLMService) -> list[str]:
    """`spec.source` beyond the schema: one kind (also past an older CRD), a path that stays
    inside its volume, and a Hugging Face token set in one place only."""
    src, out = svc.spec.source, []
    kinds = src.kinds()
    if len(kinds) != 1:
        out.append(
            "spec.source must set exactly one of huggingFace, persistentVolumeClaim, hostPath, "
            f"image; found {kinds or 'none'}"
        )
    claim = src.persistent_volume_claim
    if claim is not None and (claim.path.startswith("/") or ".." in claim.path.split("/")):
        out.append(
            f"spec.source.persistentVolumeClaim.path {claim.path!r} must be relative to the "
            "volume and may not contain '..'"
        )
    if src.hugging_face is not None and src.hugging_face.token_secret is not None:
        for i, env in enumerate(svc.spec.engine.env):
            if env.get("name") == "HF_TOKEN":
                out.append(
                    f"spec.engine.env[{i}]: HF_TOKEN is set from "
                    "spec.source.huggingFace.tokenSecret; set it in one place only"
                )
    return out
