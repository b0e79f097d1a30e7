"""The OpenAI server path: the real `vllm.entrypoints.openai.api_server` with our plugin, its
parameter file mounted the way kubelet mounts a ConfigMap, checked at the default interval."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from halffull_dev.cluster.controlplane import free_port
from halffull_dev.testing import volumes
from halffull_dev.testing.vllm_engine import PLUGIN, prompt_ids
from halffull_dev.testing.vllm_launch import VllmServer, VllmSpec, vllm_server

pytestmark = pytest.mark.engine


def publish(mount: Path, text: str) -> None:
    """A new ConfigMap version, as kubelet writes it (timestamped dir + `..data` swap)."""
    volumes.publish(mount, {"scheduler.json": text})


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return str(response.read().decode())


def metric(text: str, name: str, labels: str = "") -> float | None:
    """The value of one sample in Prometheus text, or None if absent."""
    pattern = re.escape(name) + (r"\{" + labels + r"[^}]*\}" if labels else r"(\{[^}]*\})?")
    found = re.search(r"^" + pattern + r" ([0-9.eE+-]+)$", text, re.MULTILINE)
    return float(found.group(found.lastindex or 1)) if found else None


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@dataclass
class Served:
    server: VllmServer
    mount: Path
    plugin_metrics: str
    model: str

    def complete(self, index: int, length: int, max_tokens: int = 4) -> dict[str, object]:
        body = json.dumps(
            {
                "model": self.model,
                "prompt": prompt_ids(index, length),
                "max_tokens": max_tokens,
                "ignore_eos": True,
            }
        ).encode()
        request = urllib.request.Request(
            self.server.url + "/v1/completions", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            assert response.status == 200
            result: dict[str, object] = json.load(response)
            return result

    def plugin(self) -> str:
        return get(self.plugin_metrics)

    def vllm(self) -> str:
        return get(self.server.url + "/metrics")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    work = tmp_path_factory.mktemp("larry-server")
    mount = work / "scheduler"
    mount.mkdir()
    publish(mount, json.dumps({"policy": "larry", "alpha": 0.5}))
    prom = work / "prometheus"
    prom.mkdir()
    port = free_port()
    env = {
        "HALFFULL_SCHEDULER_CONFIG": str(mount / "scheduler.json"),
        "HALFFULL_ENGINE_METRICS_PORT": str(port),
        "HALFFULL_ENGINE_METRICS_HOST": "127.0.0.1",
        "PROMETHEUS_MULTIPROC_DIR": str(prom),
    }
    spec = VllmSpec(
        kv_cache_memory_bytes=8 * 1024 * 1024,
        max_model_len=2048,
        scheduler_cls=PLUGIN,
        engine_args={"max_num_seqs": 4},
        env=env,
    )
    with vllm_server(spec, workdir=work) as server:
        models = json.loads(get(server.url + "/v1/models"))
        yield Served(server, mount, f"http://127.0.0.1:{port}/metrics", models["data"][0]["id"])


def test_engine_core_builds_our_class(served: Served) -> None:
    log = served.server.log_text()
    # vLLM's own warning, printed by the engine core when it resolves --scheduler-cls.
    assert re.search(r"EngineCore.*Using custom scheduler class " + re.escape(PLUGIN), log)
    assert "LarryScheduler loaded (base Scheduler)" in log
    assert "policy=larry alpha=0.5 maxWaitSeconds=3 in force" in log


def test_token_id_completions_and_metrics(served: Served) -> None:
    before = metric(served.vllm(), "vllm:prompt_tokens_total") or 0.0
    lengths = [900, 30, 600, 5, 300, 1200, 64, 2]
    with ThreadPoolExecutor(len(lengths)) as pool:
        results = list(pool.map(lambda a: served.complete(*a), enumerate(lengths)))
    for length, result in zip(lengths, results, strict=True):
        usage = result["usage"]
        assert isinstance(usage, dict)
        assert usage["prompt_tokens"] == length
        assert usage["completion_tokens"] == 4
    text = served.vllm()
    assert metric(text, "vllm:prompt_tokens_total") == before + sum(lengths)
    assert metric(text, "vllm:num_requests_waiting") == 0.0
    # The plugin's gauges, inside vLLM's /metrics (PROMETHEUS_MULTIPROC_DIR) and on their port.
    for source in (text, served.plugin()):
        assert metric(source, "halffull_scheduler_policy", 'policy="larry"') == 1.0
        assert metric(source, "halffull_scheduler_policy", 'policy="fcfs"') == 0.0
        assert metric(source, "halffull_scheduler_alpha") == 0.5
    plugin = served.plugin()
    capacity = metric(plugin, "halffull_engine_kv_capacity_tokens")
    assert capacity == 4096.0  # 8 MiB / (2 KiB per token), as the engine sized it
    assert "CPU KV cache size: 4,096 tokens" in served.server.log_text()
    assert metric(plugin, "halffull_engine_max_num_batched_tokens") is not None


def test_live_switch_without_restart(served: Served) -> None:
    pid = served.server.process.pid
    publish(served.mount, json.dumps({"policy": "larry-literal", "alpha": 2.0}))
    wait_for(
        lambda: (
            metric(served.plugin(), "halffull_scheduler_policy", 'policy="larry-literal"') == 1.0
        ),
        "the engine to take larry-literal",
    )
    assert metric(served.plugin(), "halffull_scheduler_alpha") == 2.0
    assert metric(served.plugin(), "halffull_scheduler_max_wait_seconds") == 3.0
    assert "policy=larry-literal alpha=2 maxWaitSeconds=3 in force (was policy=larry alpha=0.5" in (
        served.server.log_text()
    )
    assert served.complete(0, 50)["usage"] is not None
    assert served.server.process.pid == pid and served.server.process.poll() is None
    publish(served.mount, json.dumps({"policy": "larry", "alpha": 0.5}))
    wait_for(
        lambda: metric(served.plugin(), "halffull_scheduler_policy", 'policy="larry"') == 1.0,
        "the engine to go back to larry",
    )


@pytest.mark.parametrize("broken", ['{"policy": "larry", "alpha": -1}', "not json"])
def test_broken_file_leaves_the_engine_serving(served: Served, broken: str) -> None:
    errors = metric(served.plugin(), "halffull_scheduler_config_errors_total") or 0.0
    publish(served.mount, broken)
    wait_for(
        lambda: (metric(served.plugin(), "halffull_scheduler_config_errors_total") or 0.0) > errors,
        "the engine to reject the file",
    )
    assert metric(served.plugin(), "halffull_scheduler_policy", 'policy="larry"') == 1.0
    assert "rejected" in served.server.log_text()
    usage = served.complete(3, 100)["usage"]
    assert isinstance(usage, dict)
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (100, 4)
    assert served.server.process.poll() is None
    publish(served.mount, json.dumps({"policy": "larry", "alpha": 0.5}))
