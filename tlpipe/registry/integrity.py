"""Loading a registered model verifies what it loads against digests kept in the registry.

A registered tlpipe model is a folder in the artifact store: the MLmodel file, the entry
script MLflow runs on load, the tlpipe code it imports (``code/``), the safetensors weights.
Whoever can write the artifact store could change any of them, and loading would run the
changed code. So at registration tlpipe hashes every file of the version as stored and keeps
the digest of that list as a model version tag (``tags.ARTIFACTS_SHA256``): the registry is
the root of trust, the artifact store is not. Loading downloads the version, hashes it again
and refuses any difference before anything in it is imported. The per-file list is logged
beside the version's run (``model_digests/v<N>.json``) so a refusal can name the changed
files; it is in the artifact store too, so it is believed only when it hashes to the tag.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tlpipe import tags
from tlpipe.errors import TlpipeError
from tlpipe.fsio import file_sha256

# Written by MLflow on the downloading side (the version's name and number), not stored.
_LOCAL_ONLY = frozenset({"registered_model_meta"})
DIGESTS_DIR = "model_digests"


class ModelIntegrityError(TlpipeError):
    """A registered version whose stored files are not the ones registered: nothing loaded."""

    exit_code = 1


def artifact_digests(folder: Path) -> dict[str, str]:
    """Relative posix path -> sha256 of every file under ``folder``, sorted by path."""
    folder = Path(folder)
    relatives = (path.relative_to(folder).as_posix() for path in folder.rglob("*")
                 if path.is_file())
    return {relative: file_sha256(folder / relative)
            for relative in sorted(relatives) if relative not in _LOCAL_ONLY}


def digest_of(digests: dict[str, str]) -> str:
    """The sha256 of the per-file list as canonical JSON: one value for the whole version."""
    canonical = json.dumps(digests, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _download(name: str, version: str, dst: Path) -> Path:
    return Path(mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{name}/{version}", dst_path=str(dst)))


def _digest_list_path(version: str) -> str:
    return f"{DIGESTS_DIR}/v{version}.json"


def record_digests(client: MlflowClient, name: str, version: str, run_id: str) -> str:
    """Hash version ``version`` of ``name`` as stored now; tag the version with the digest and
    log the per-file list as ``model_digests/v<version>.json`` of run ``run_id``."""
    with tempfile.TemporaryDirectory() as folder:
        digests = artifact_digests(_download(name, version, Path(folder)))
    digest = digest_of(digests)
    client.log_dict(run_id, {"model": name, "version": str(version), "files": digests},
                    _digest_list_path(str(version)))
    client.set_model_version_tag(name, str(version), tags.ARTIFACTS_SHA256, digest)
    return digest


def download_verified(name: str, version: str, dst: Path) -> Path:
    """Download version ``version`` of ``name`` into ``dst`` and return the model folder, or
    raise :class:`ModelIntegrityError` if its files are not those registered."""
    client = MlflowClient()
    uri = f"models:/{name}/{version}"
    registered = client.get_model_version(name, str(version))
    expected = registered.tags.get(tags.ARTIFACTS_SHA256)
    if not expected:
        raise ModelIntegrityError(
            f"{uri} has no {tags.ARTIFACTS_SHA256} tag: it was registered before tlpipe "
            "recorded the digests of a model's files, so what the artifact store holds for it "
            "cannot be checked, and tlpipe does not load it (loading runs code from the store)."
            " Retrain (`tlpipe run`) to register a verifiable version.")
    local = _download(name, str(version), Path(dst))
    found = artifact_digests(local)
    if digest_of(found) != expected:
        store = client.get_model_version_download_uri(name, str(version))
        raise ModelIntegrityError(
            f"{uri}: the artifact store ({store}) does not hold the files registered for this "
            f"version ({_difference(client, registered.run_id, str(version), expected, found)})."
            " They were changed after registration, and loading runs code from the store, so "
            "nothing was loaded. Restore the artifact store from a backup, or retrain "
            "(`tlpipe run`) to register a new version; and find out who could write the store.")
    return local


def _difference(client: MlflowClient, run_id: str | None, version: str, expected: str,
                found: dict[str, str]) -> str:
    """The changed, added and missing files, if the recorded list is the registered one."""
    recorded = _recorded_list(client, run_id, version)
    if recorded is None or digest_of(recorded) != expected:
        return (f"their digest is not the registered {expected[:12]}...; the list of the "
                "registered files is missing or was changed too, so which files differ is "
                "unknown")
    changed = sorted(path for path in found.keys() & recorded.keys()
                     if found[path] != recorded[path])
    added = sorted(found.keys() - recorded.keys())
    missing = sorted(recorded.keys() - found.keys())
    parts = [f"{label}: {', '.join(paths)}" for label, paths in
             (("changed", changed), ("added", added), ("missing", missing)) if paths]
    return "; ".join(parts)


def _recorded_list(client: MlflowClient, run_id: str | None, version: str
                   ) -> dict[str, str] | None:
    if not run_id:
        return None
    try:
        with tempfile.TemporaryDirectory() as folder:
            path = client.download_artifacts(run_id, _digest_list_path(version), folder)
            files = json.loads(Path(path).read_text()).get("files")
    except (MlflowException, OSError, ValueError, AttributeError):
        return None
    if not isinstance(files, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        return None
    return files
