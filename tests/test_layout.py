"""The house rules: one module per stage, dvc.yaml deps that are true, no import circles.

``dvc.yaml`` lists each stage's own module and every project module it imports, directly or
not (found by grimp, which reads the import statements, those inside functions included), so
``dvc repro`` reruns a stage when any code it runs changes, and only then.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import grimp
import pytest
import yaml

from tests.conftest import REPO
from tlpipe.pipeline import DVC_STAGES, STAGES

PACKAGES = ("tlpipe", "tasks", "flows")


@cache
def import_graph() -> grimp.ImportGraph:
    return grimp.build_graph(*PACKAGES, cache_dir=None)


def module_file(module: str) -> str:
    path = Path(*module.split("."))
    return str(path / "__init__.py" if (REPO / path).is_dir() else path.with_suffix(".py"))


def code_deps(stage: str) -> set[str]:
    """The stage's module and every project module it imports, as paths from the repo root."""
    module = f"tlpipe.stages.{stage}"
    return {module_file(m) for m in {module, *import_graph().find_upstream_modules(module)}}


def declared_code_deps(stage: dict) -> set[str]:
    return {dep for dep in stage["deps"] if dep.endswith(".py")}


def dvc_stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def test_dvc_yaml_declares_the_registered_stages_in_order_with_one_entry_point():
    stages = dvc_stages()
    assert list(stages) == [stage.name for stage in DVC_STAGES]
    for name, stage in stages.items():
        assert stage["cmd"] == f"python -m tlpipe.dvc_stage {name}"


@pytest.mark.parametrize("stage", [stage.name for stage in DVC_STAGES])
def test_each_stage_depends_on_exactly_the_code_it_runs(stage):
    declared, actual = declared_code_deps(dvc_stages()[stage]), code_deps(stage)
    assert declared == actual, (
        f"dvc.yaml stage {stage!r}: add {sorted(actual - declared)}, "
        f"remove {sorted(declared - actual)}")


def test_every_registered_stage_has_its_module():
    for stage in STAGES:
        assert stage.module.__name__ == f"tlpipe.stages.{stage.name}"
        assert callable(stage.module.run)


def test_package_initialisers_run_no_code():
    """Importing tlpipe.stages.X runs tlpipe/__init__.py and tlpipe/stages/__init__.py too;
    they hold only a docstring, so they need not be anyone's dependency."""
    for package in ("tlpipe", "tlpipe/stages", "tasks", "flows"):
        body = ast.parse((REPO / package / "__init__.py").read_text()).body
        assert all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
                   for node in body), package


def test_the_import_graph_has_no_circle():
    graph = import_graph()
    circles = [(a, b) for a in graph.modules for b in graph.find_modules_directly_imported_by(a)
               if graph.chain_exists(importer=b, imported=a)]
    assert circles == []


def longest_import_chain() -> list[str]:
    graph = import_graph()

    @cache
    def chain_from(module: str) -> tuple[str, ...]:
        below = [chain_from(imported) for imported in
                 graph.find_modules_directly_imported_by(module)]
        return (module, *max(below, key=len, default=()))

    return list(max((chain_from(module) for module in graph.modules), key=len))


def test_the_import_graph_is_shallow():
    """Before the stages had one module each, the longest chain of imports was 12 deep
    (12 imports from tlpipe.cli down to tlpipe.config); keep it below that. It is 11 now:
    10 down to tlpipe.config, which imports the leaf tlpipe.errors."""
    chain = longest_import_chain()
    assert len(chain) - 1 <= 11, " -> ".join(chain)


def test_the_checkout_is_the_demo_project_that_tlpipe_init_writes():
    """`tlpipe init` writes the files of this checkout from the package's templates: the same
    pipeline without the code deps (an installed tlpipe's code is not in the project), the
    same documented params.yaml with the demo's data, classes and model name."""
    from tlpipe.project import render_params, template

    def without_code(pipeline: dict) -> dict:
        for stage in pipeline["stages"].values():
            stage["deps"] = [dep for dep in stage["deps"] if not dep.endswith(".py")]
        return pipeline

    assert without_code(yaml.safe_load((REPO / "dvc.yaml").read_text())) == yaml.safe_load(
        template("dvc.yaml"))
    assert (REPO / "params.yaml").read_text() == render_params(
        "data/raw/hymenoptera_data", ["ants", "bees"], "ants-bees")
    for shared in ("prefect.yaml", "plots/epochs.json", "plots/confusion_counts.json"):
        assert (REPO / shared).read_text() == template(shared), shared
