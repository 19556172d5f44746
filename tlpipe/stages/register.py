"""register: the trained model as a new MLflow model version with the alias ``registry.alias``.

The version carries the pipeline run's lineage (git commit, data version, params hash,
backbone) and headline test metrics, read from the parent run that the earlier stages tagged.
Registration stays with the flow: a DVC stage would register a version on every repro.
"""

from __future__ import annotations

import json
from pathlib import Path

from mlflow.tracking import MlflowClient

from tlpipe import tags
from tlpipe.config import Params
from tlpipe.data.layout import modality
from tlpipe.data.manifest import load_manifest
from tlpipe.fsio import write_text
from tlpipe.ops.tracking import RunContext, log_to_run_and_parent, stage_run
from tlpipe.paths import data_root, outputs_for
from tlpipe.registry.register import log_and_register
from tlpipe.registry.versions import record_classes

STAGE = __name__.rpartition(".")[2]
HEADLINE = ("test_accuracy", "test_macro_f1", "test_ece")


def pipeline_facts(context: RunContext) -> dict[str, str | float]:
    """What the pipeline run learned about itself: its lineage tags and headline metrics."""
    parent = MlflowClient().get_run(context.parent_run_id).data
    return {**{key: parent.tags[key] for key in tags.LINEAGE if key in parent.tags},
            **{key: round(parent.metrics[key], 6) for key in HEADLINE if key in parent.metrics}}


def write_model_card(params: Params, project: Path, facts: dict) -> Path:
    out = outputs_for(params, project)
    metrics = json.loads(out.metrics.read_text())
    per_class = "\n".join(
        f"| {name} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |"
        for name, v in metrics["per_class"].items())
    # What made the features: the configured backbone, or the images' own pixels.
    choice = json.loads(out.preprocessing.read_text())
    backbone = choice.get("backbone", params.backbone.name)
    inputs = "texts" if choice.get("modality") == "text" else "photos"
    card = f"""# Model card: {params.registry.model_name}

- Features: {backbone} (weights digest {facts.get(tags.WEIGHTS_DIGEST, '?')[:16]})
- Classes: {', '.join(metrics['classes'])}
- Data version (manifest fingerprint): {facts.get(tags.DATA_FINGERPRINT, '?')}
- Params hash: {params.digest()[:16]}; git commit: {facts.get(tags.GIT_COMMIT, '?')}
- Head: {facts.get(tags.HEAD, '?')}, chosen on validation data from the ladder
  {', '.join(params.head.candidates)} on cached features.
- Fine-tuning (searched over unfreeze_blocks {params.finetune.unfreeze_blocks}, up to
  {params.finetune.epochs} epochs): {facts.get(tags.FINETUNE, '?')}

## Test split ({metrics['n_test']} images, never used to choose anything)
accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f},
expected calibration error {metrics['ece']:.4f}

| class | precision | recall | F1 | support |
|---|---|---|---|---|
{per_class}

## Intended use and limits
Classifies {inputs} into the classes above. Inputs outside those classes still get one of
them; check `probability` before acting on a prediction.
"""
    return write_text(out.model_card, card)


def model_summary(classes: list[str], texts: bool = False) -> str:
    """The registered model's description: what every version of it is for."""
    kind, source = ("texts", "text encoder") if texts else ("photos", "image backbone")
    return (f"Classifies {kind} into one of {len(classes)} classes: {', '.join(classes)}.\n\n"
            f"Trained by tlpipe (transfer learning from a pretrained {source}), one "
            "version per pipeline run. Each version's description is its model card; its tags "
            "record its git commit, data version, params hash and test metrics.\n")


def run(context: RunContext, params: Params, project: Path) -> dict:
    out = outputs_for(params, project)
    with stage_run(context, STAGE):
        facts = pipeline_facts(context)
        card = write_model_card(params, project, facts)
        log_to_run_and_parent(context, card)
        validated = load_manifest(out.validated)
        test = validated.query("split == 'test'")
        classes = json.loads(out.metrics.read_text())["classes"]
        # The version belongs to the pipeline run, whose page then lists it, and carries its
        # card, so the registry tells what a version is without opening any run.
        version = log_and_register(
            out.model_dir, params.registry.model_name, params.registry.alias,
            (test["text"].iloc[0] if modality(validated) == "text"
             else data_root(params, project) / test["path"].iloc[0]),
            {**facts, tags.PIPELINE_RUN_ID: context.parent_run_id},
            run_id=context.parent_run_id, description=card.read_text(),
            model_description=model_summary(classes, modality(validated) == "text"),
        )
        client = MlflowClient()
        record_classes(client, params.registry.model_name, classes)
        client.set_tag(context.parent_run_id, tags.MODEL_VERSION, version.version)
        print(f"registered {params.registry.model_name} version {version.version} "
              f"as @{params.registry.alias}")
        return {"name": params.registry.model_name, "version": version.version,
                "alias": params.registry.alias, "source": version.source}
