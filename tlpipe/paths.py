"""Where the pipeline reads and writes: the project's data folder and every stage's outputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tlpipe.config import Params
from tlpipe.errors import SettingsError
from tlpipe.vectors.store import FeatureStore


@dataclass(frozen=True)
class Outputs:
    """Where every stage writes; the same paths are the DVC stages' outs."""

    root: Path

    manifest = property(lambda self: self.root / "manifest.parquet")
    validated = property(lambda self: self.root / "validation" / "validated.parquet")
    report_md = property(lambda self: self.root / "validation" / "report.md")
    report_json = property(lambda self: self.root / "validation" / "report.json")
    report_html = property(lambda self: self.root / "validation" / "report.html")
    preview = property(lambda self: self.root / "augment" / "preview.png")
    plan = property(lambda self: self.root / "features" / "plan.parquet")
    audit_summary = property(lambda self: self.root / "audit" / "summary.json")
    audit_findings = property(lambda self: self.root / "audit" / "findings.json")
    audit_report = property(lambda self: self.root / "audit" / "report.html")
    audit_map = property(lambda self: self.root / "audit" / "map.png")
    quarantine = property(lambda self: self.root / "audit" / "quarantine.json")
    # Every audited image (plain-view key), and whether training uses it: drift's reference.
    audited_images = property(lambda self: self.root / "audit" / "images.parquet")
    head_weights = property(lambda self: self.root / "head" / "head.safetensors")
    head_history = property(lambda self: self.root / "head" / "history.json")
    head_spec = property(lambda self: self.root / "head" / "head.json")
    leaderboard = property(lambda self: self.root / "head" / "leaderboard.json")
    preprocessing = property(lambda self: self.root / "features" / "preprocessing.json")
    model_dir = property(lambda self: self.root / "model")
    finetune_history = property(lambda self: self.root / "finetune" / "history.json")
    metrics = property(lambda self: self.root / "evaluate" / "metrics.json")
    confusion_png = property(lambda self: self.root / "evaluate" / "confusion_matrix.png")
    curves_png = property(lambda self: self.root / "evaluate" / "learning_curves.png")
    model_card = property(lambda self: self.root / "evaluate" / "model_card.md")
    predictions_json = property(lambda self: self.root / "evaluate" / "predictions.json")
    mistakes_html = property(lambda self: self.root / "evaluate" / "mistakes.html")

    def curves_json(self, stage: str) -> Path:
        """Plot data for `dvc plots`: one record per epoch of ``stage``."""
        return self.root / "evaluate" / f"curves_{stage}.json"


def resolve(project_dir: Path, path: Path) -> Path:
    """Settings name paths relative to the project folder."""
    return path if path.is_absolute() else project_dir / path


def outputs_for(params: Params, project_dir: Path) -> Outputs:
    return Outputs(resolve(project_dir, params.outputs_dir))


def data_root(params: Params, project_dir: Path) -> Path:
    return resolve(project_dir, params.data.root)


def feature_store(params: Params, project_dir: Path) -> FeatureStore:
    """The project's feature store: ``features.store`` is a URL, or a folder in the project."""
    location = params.features.store
    if "://" not in location:
        location = str(resolve(project_dir, Path(location).expanduser()))
    try:
        return FeatureStore(location, params.features.chunk_vectors)
    except (ValueError, ImportError) as error:  # fsspec: unknown protocol, or not installed
        raise SettingsError(
            f"features.store: {location!r}: {error}. Use a folder, or a URL whose fsspec file "
            "system is installed here and on every worker (s3fs for s3://, gcsfs for gs://)"
        ) from None
