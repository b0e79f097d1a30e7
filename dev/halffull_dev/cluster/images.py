"""The locally built images (hack/build-images.sh) and their import into the node's containerd.

The build script leaves, for each image NAME, `NAME.ref` (the reference, tagged with the hash
of the build's inputs) and the OCI archive `NAME-TAG.tar` in the image cache. The node imports
each archive whose reference its containerd does not hold yet, so unchanged images are neither
rebuilt nor imported again.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

IMAGE_CACHE = Path(os.environ.get("HALFFULL_CACHE", Path.home() / ".cache" / "halffull")) / "images"
ALL_IMAGES = ("pause", "operator", "router", "fake-engine", "vllm-cpu")
BUILD_SCRIPT = Path(__file__).resolve().parents[3] / "hack" / "build-images.sh"

Ctr = Callable[..., subprocess.CompletedProcess[str]]


class ImageError(RuntimeError):
    pass


@dataclass
class ImageCache:
    directory: Path = field(default_factory=lambda: IMAGE_CACHE)

    def ref(self, name: str) -> str | None:
        """The reference of the last build of `name`, or None if it was never built."""
        path = self.directory / f"{name}.ref"
        return path.read_text().strip() if path.exists() else None

    def require(self, name: str) -> str:
        ref = self.ref(name)
        if ref is None:
            raise ImageError(f"image {name} is not built: run hack/build-images.sh {name}")
        return ref

    def archive(self, name: str) -> Path:
        ref = self.require(name)
        return self.directory / f"{name}-{ref.rsplit(':', 1)[1]}.tar"

    def built(self) -> list[str]:
        return [name for name in ALL_IMAGES if self.ref(name) is not None]

    def import_all(self, ctr: Ctr) -> None:
        """Import every built image that the node's containerd lacks."""
        present = set(ctr("images", "list", "-q").stdout.split())
        for name in self.built():
            ref = self.require(name)
            if ref in present:
                continue
            archive = self.archive(name)
            if not archive.exists():
                raise ImageError(f"{archive} is missing: run hack/build-images.sh {name}")
            log.info("node: importing %s (%d MB)", ref, archive.stat().st_size >> 20)
            proc = ctr("images", "import", str(archive), check=False)
            if proc.returncode != 0 or ref not in ctr("images", "list", "-q").stdout.split():
                raise ImageError(f"importing {archive} into containerd failed: {proc.stderr}")


def build(names: list[str], root: Path | None = None) -> None:
    """Run the build script for `names` (cached by content: unchanged images are skipped)."""
    script = (root / "hack" / "build-images.sh") if root else BUILD_SCRIPT
    proc = subprocess.run(["bash", str(script), *names], text=True)
    if proc.returncode != 0:
        raise ImageError(f"hack/build-images.sh {' '.join(names)} failed (its output says where)")
