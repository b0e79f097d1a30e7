"""`REGISTRY=... make images` against a real registry (Debian's docker-registry on loopback) with
real buildah: an image is built, pushed under the name the chart derives from image.registry,
and can be read back from the registry. A small FROM-scratch Dockerfile stands in for the three
images, whose bases cannot be pulled on machines without a public registry."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, wait_for

SCRIPT = ROOT / "hack" / "push-images.sh"


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.fail(
            "docker-registry not found: run hack/setup.sh (apt-get install docker-registry)"
        )
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        f"storage: {{filesystem: {{rootdirectory: {tmp_path / 'registry'}}}}}\n"
        f"http: {{addr: 127.0.0.1:{port}}}\n"
    )
    log = (tmp_path / "registry.log").open("wb")
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/").status == 200,
                 what="registry")  # fmt: skip
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    storage = tmp_path / "storage.conf"  # buildah's storage of its own, not the machine's
    storage.write_text(f'[storage]\ndriver = "vfs"\ngraphroot = "{tmp_path / "graph"}"\n'
                       f'runroot = "{tmp_path / "run"}"\n')  # fmt: skip
    full = {**os.environ, "CONTAINERS_STORAGE_CONF": str(storage), **env}
    return subprocess.run(["bash", str(SCRIPT)], env=full, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def test_make_images_pushes_where_the_chart_looks(registry: str, tmp_path: Path) -> None:
    images = tmp_path / "images"
    (images / "hello").mkdir(parents=True)
    (images / "hello" / "Dockerfile").write_text("FROM scratch\nCOPY pyproject.toml /x\n")
    proc = run(tmp_path, REGISTRY=f"{registry}/halffull", IMAGES="hello again=hello",
               IMAGES_DIR=str(images), TLS_VERIFY="false", TOOL="buildah")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"--set image.registry={registry}/halffull" in proc.stdout
    for name in ("hello", "again"):  # "again=hello": the same Dockerfile under a second name
        with urllib.request.urlopen(f"http://{registry}/v2/halffull/{name}/tags/list") as resp:
            assert json.load(resp)["tags"] == ["0.1.0"]  # the chart's appVersion, its default


def test_bad_input_names_what_is_wrong(tmp_path: Path) -> None:
    assert "REGISTRY is not set" in run(tmp_path, REGISTRY="").stderr
    assert "without a tag" in run(tmp_path, REGISTRY="r.example/h:1").stderr
    missing = run(tmp_path, REGISTRY="r.example/h", IMAGES="nope", TOOL="buildah")
    assert missing.returncode != 0 and "no Dockerfile for image 'nope'" in missing.stderr
    broken = tmp_path / "images" / "broken"
    broken.mkdir(parents=True)
    (broken / "Dockerfile").write_text("FROM scratch\nCOPY does-not-exist /x\n")
    proc = run(tmp_path, REGISTRY="r.example/h", IMAGES="broken",
               IMAGES_DIR=str(tmp_path / "images"), TOOL="buildah")  # fmt: skip
    assert proc.returncode != 0 and "building broken failed" in proc.stderr
    assert "COPY does-not-exist" in proc.stdout + proc.stderr  # the step that failed
