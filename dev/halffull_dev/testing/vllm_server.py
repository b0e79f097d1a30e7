"""Run the real vLLM OpenAI server on loopback with a tiny dummy-weight model.

Used by the engine tests, the router tests and the benchmarks. No weights can be downloaded on
the machines this project is tested on, so the model is a Llama config written here and served
with `--load-format dummy` (random weights) and `--skip-tokenizer-init` (prompts are token ids).
The server runs in its own process group with private cache and temp directories, and is
stopped with its engine-core child when the context exits.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

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


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on `host`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class VllmServer:
    """A running vLLM OpenAI server started by `start_vllm_server`."""

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


def start_vllm_server(
    model_dir: Path | None = None,
    *,
    kv_cache_memory_bytes: int = DEFAULT_KV_CACHE_BYTES,
    max_model_len: int | None = None,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    workdir: Path | None = None,
    keep_workdir: bool = False,
    python: str = sys.executable,
    host: str = "127.0.0.1",
    port: int | None = None,
    startup_timeout: float = 420.0,
) -> VllmServer:
    """Start `python -m vllm.entrypoints.openai.api_server` and wait until /health answers.

    `model_dir` defaults to a tiny Llama written into the private work directory. `env` is
    added to this process's environment. The log (API server and engine core) goes to
    `workdir/server.log`. Raises RuntimeError with the log's tail if the server exits or does
    not become healthy in time.
    """
    work = Path(tempfile.mkdtemp(prefix="vllm-", dir=workdir))
    if model_dir is None:
        model_dir = write_tiny_llama(work / "model")
    tmp = work / "tmp"
    tmp.mkdir()
    port = port or free_port(host)
    url = f"http://{host}:{port}"
    cmd = [
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--load-format",
        "dummy",
        "--skip-tokenizer-init",
        "--dtype",
        "float32",
        "--enforce-eager",
        "--kv-cache-memory-bytes",
        str(kv_cache_memory_bytes),
        "--host",
        host,
        "--port",
        str(port),
    ]
    if max_model_len is not None:
        cmd += ["--max-model-len", str(max_model_len)]
    cmd += list(extra_args)
    child_env = dict(os.environ)
    child_env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "VLLM_CACHE_ROOT": str(work / "vllm-cache"),
            "TORCHINDUCTOR_CACHE_DIR": str(work / "inductor-cache"),
            "HF_HOME": str(work / "hf"),
            "XDG_CACHE_HOME": str(work / "cache"),
            "TMPDIR": str(tmp),
            "PYTHONUNBUFFERED": "1",
            # One OpenMP thread: on small shared CPUs a second one spins at barriers and makes
            # steps several times slower and erratic. Pass env={"OMP_NUM_THREADS": ...} to change.
            "OMP_NUM_THREADS": "1",
        }
    )
    child_env.update(env or {})
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
    server = VllmServer(
        url=url,
        process=process,
        log_path=log_path,
        workdir=work,
        keep_workdir=keep_workdir,
        _log_file=log_file,
    )
    deadline = time.monotonic() + startup_timeout
    while not _healthy(url):
        if process.poll() is not None or time.monotonic() > deadline:
            tail = server.log_text()[-6000:]
            reason = (
                f"exited with {process.returncode}" if process.poll() is not None else "timed out"
            )
            server.keep_workdir = True
            server.stop()
            raise RuntimeError(f"vLLM server {reason}; log {log_path}:\n{tail}")
        time.sleep(0.5)
    return server


@contextlib.contextmanager
def running_vllm_server(
    model_dir: Path | None = None,
    *,
    kv_cache_memory_bytes: int = DEFAULT_KV_CACHE_BYTES,
    max_model_len: int | None = None,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    workdir: Path | None = None,
    startup_timeout: float = 420.0,
) -> Iterator[VllmServer]:
    """Run a real vLLM OpenAI server for the duration of the block; yields the server (its
    `url`, `log_text()`, `process`)."""
    server = start_vllm_server(
        model_dir,
        kv_cache_memory_bytes=kv_cache_memory_bytes,
        max_model_len=max_model_len,
        extra_args=extra_args,
        env=env,
        workdir=workdir,
        startup_timeout=startup_timeout,
    )
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def vllm_server(
    model_dir: Path | None = None,
    *,
    kv_cache_memory_bytes: int = DEFAULT_KV_CACHE_BYTES,
    max_model_len: int | None = None,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    workdir: Path | None = None,
    startup_timeout: float = 420.0,
) -> Iterator[str]:
    """Run a real vLLM OpenAI server for the duration of the block; yields its base URL,
    e.g. `http://127.0.0.1:40123` (the OpenAI API is under `/v1`)."""
    with running_vllm_server(
        model_dir,
        kv_cache_memory_bytes=kv_cache_memory_bytes,
        max_model_len=max_model_len,
        extra_args=extra_args,
        env=env,
        workdir=workdir,
        startup_timeout=startup_timeout,
    ) as server:
        yield server.url
