"""The registry of stages: the training pipeline's steps, in order, one name each.

A stage's name is its module under ``tlpipe/stages/``, its Prefect task, its MLflow child
run and its DVC stage. The Prefect tasks (``tasks/stages.py``) and the DVC entry point
(``python -m tlpipe.ops.dvc_stage NAME``) are made from this list; ``dvc.yaml`` is checked
against it (tests/test_layout.py). Stage modules are imported on first use, so a DVC stage
process loads only its own.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Stage:
    name: str
    # Safe to run again after an I/O or registry hiccup (Prefect retries it).
    retry_transient: bool = False
    # Declared in dvc.yaml; registration stays with the flow.
    in_dvc: bool = True

    @property
    def module(self) -> ModuleType:
        return importlib.import_module(f"tlpipe.stages.{self.name}")


STAGES = (
    Stage("manifest", retry_transient=True),
    Stage("validate"),
    Stage("augment"),
    Stage("features"),
    Stage("audit"),  # its verdicts decide which images the head and fine-tuning see
    Stage("head"),
    Stage("finetune"),  # resumes from its last epoch checkpoint after an interruption
    Stage("evaluate"),
    Stage("register", retry_transient=True, in_dvc=False),
)
DVC_STAGES = tuple(stage for stage in STAGES if stage.in_dvc)


def stage_named(name: str, stages: tuple[Stage, ...] = STAGES) -> Stage:
    for stage in stages:
        if stage.name == name:
            return stage
    raise KeyError(f"no stage {name!r}; the stages are {', '.join(s.name for s in stages)}")


def stages_through(name: str, stages: tuple[Stage, ...] = STAGES) -> tuple[Stage, ...]:
    """The stages in order up to and including ``name``: what running ``name`` needs first."""
    return stages[:stages.index(stage_named(name, stages)) + 1]
