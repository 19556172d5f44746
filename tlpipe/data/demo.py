"""The demo dataset (ants vs bees, from the PyTorch transfer-learning tutorial).

It is pinned by a digest of its extracted content (every relative path and file hash), which
holds for the public zip and for any local copy of it alike.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from tlpipe.commands import python_tool, run_command
from tlpipe.errors import TlpipeError
from tlpipe.fsio import file_sha256

DEMO_URL = "https://download.pytorch.org/tutorial/hymenoptera_data.zip"
DEMO_TREE_SHA256 = "4ec16fbdea39bd9098ca879402ab57d181d329876a7aea71b553e2669357102c"
DEMO_FILES = 398


class DemoDataError(TlpipeError):
    pass


def tree_digest(root: Path) -> tuple[str, int]:
    digest, count = hashlib.sha256(), 0
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(root).as_posix()}\x1f{file_sha256(path)}\n".encode())
        count += 1
    return digest.hexdigest(), count


def _check(root: Path, origin: str) -> None:
    digest, count = tree_digest(root)
    if digest != DEMO_TREE_SHA256:
        raise DemoDataError(f"{origin}: content digest {digest[:16]} ({count} files) does not "
                            f"match the pinned demo data {DEMO_TREE_SHA256[:16]} "
                            f"({DEMO_FILES} files); the copy is incomplete or altered")


def track_with_dvc(path: Path) -> Path | None:
    """``dvc add`` the folder when it lies in a DVC project; return the .dvc pointer file.

    The pointer pins the data's content; committing it lets ``dvc repro`` and ``dvc pull``
    find exactly this version again.
    """
    path = Path(path).resolve()
    root = next((p for p in path.parents if (p / ".dvc").is_dir()), None)
    if root is None:
        return None
    run_command([*python_tool("dvc"), "add", "-q", str(path.relative_to(root))], "dvc add",
                DemoDataError, root)
    return Path(f"{path}.dvc")


def fetch_demo_data(destination: Path, source: Path | None = None) -> Path:
    """Put the verified demo data at ``destination``, copying ``source`` or downloading it."""
    destination = Path(destination)
    if destination.is_dir():
        _check(destination, str(destination))
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=destination.parent) as scratch:
        staged = Path(scratch) / "hymenoptera_data"
        if source is not None:
            if not Path(source).is_dir():
                raise DemoDataError(f"--from: {source} is not a folder")
            shutil.copytree(source, staged)
            origin = str(source)
        else:
            archive = Path(scratch) / "data.zip"
            try:
                urllib.request.urlretrieve(DEMO_URL, archive)
            except OSError as error:
                raise DemoDataError(
                    f"cannot download {DEMO_URL} ({error}); without network access pass "
                    "--from PATH to a local copy of hymenoptera_data") from None
            with zipfile.ZipFile(archive) as bundle:
                bundle.extractall(scratch)
            origin = DEMO_URL
        _check(staged, origin)
        staged.rename(destination)  # same filesystem: the folder appears whole or not at all
    return destination
