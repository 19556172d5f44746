"""The house rules: one module per stage, dvc.yaml deps that are true, no import circles, wings
of a walkable size, a feature-key digest that is exactly the vectors wing.

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

LIBRARY = REPO / "tlpipe"
MAX_MODULES_PER_FOLDER = 12
MAX_LINES_PER_MODULE = 400


@cache
def import_graph() -> grimp.ImportGraph:
    return grimp.build_graph("tlpipe", cache_dir=None)


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
        assert stage["cmd"] == f"python -m tlpipe.ops.dvc_stage {name}"


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


def packages() -> list[Path]:
    """Every package folder of the library (flows/ and tasks/ through their links)."""
    return sorted({init.parent for init in LIBRARY.rglob("__init__.py")}
                  | {LIBRARY / "flows", LIBRARY / "tasks"})


def test_flows_and_tasks_are_top_level_folders_linked_into_the_package():
    for name in ("flows", "tasks"):
        assert (REPO / name).is_dir() and not (REPO / name).is_symlink()
        assert (LIBRARY / name).is_symlink() and (LIBRARY / name).resolve() == REPO / name


def _lazy_export(node: ast.stmt) -> bool:
    """``def load(...)``: a docstring, one import inside it, and a return: nothing runs on
    import (the one-line Python API, ``tlpipe.load``)."""
    return (isinstance(node, ast.FunctionDef) and len(node.body) == 3
            and isinstance(node.body[1], ast.ImportFrom)
            and isinstance(node.body[2], ast.Return))


def test_package_initialisers_run_no_code():
    """Importing tlpipe.stages.X runs tlpipe/__init__.py and tlpipe/stages/__init__.py too;
    they hold only a docstring (each wing's says what it owns) and, at the top, lazy
    re-exports, so they need not be anyone's dependency."""
    for package in packages():
        body = ast.parse((package / "__init__.py").read_text()).body
        assert body and all(
            (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))
            or (package == LIBRARY and _lazy_export(node)) for node in body), package


def test_wings_stay_walkable():
    """No folder holds more than a dozen modules, no module more than 400 lines."""
    for package in packages():
        modules = [p for p in package.glob("*.py") if p.name != "__init__.py"]
        assert len(modules) <= MAX_MODULES_PER_FOLDER, (package, len(modules))
        for module in modules:
            lines = len(module.read_text().splitlines())
            assert lines <= MAX_LINES_PER_MODULE, f"{module}: {lines} lines"


def test_the_feature_key_digest_is_the_vectors_wing_and_nothing_else():
    """Every file of tlpipe/vectors is in the digest (editing any of them recomputes the
    vectors once), and the wing imports nothing outside itself but the shared leaves, so no
    code that decides a vector lives elsewhere (lint-imports holds the same rule)."""
    from tlpipe.vectors.code_digest import VECTOR_CODE

    assert VECTOR_CODE == LIBRARY / "vectors"
    shared = {"tlpipe.config", "tlpipe.errors", "tlpipe.fsio", "tlpipe.devices"}
    graph = import_graph()
    for module in graph.find_children("tlpipe.vectors"):
        for imported in graph.find_modules_directly_imported_by(module):
            if imported.startswith("tlpipe."):
                assert imported.startswith("tlpipe.vectors") or imported in shared, (
                    f"{module} imports {imported}: code that decides a vector belongs in "
                    "tlpipe/vectors")


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
    (12 imports from tlpipe.cli.main down to tlpipe.config); keep it below that. It is 11 now:
    10 down to tlpipe.config, which imports the leaf tlpipe.errors."""
    chain = longest_import_chain()
    assert len(chain) - 1 <= 11, " -> ".join(chain)


def test_the_checkout_is_the_demo_project_that_tlpipe_init_writes():
    """`tlpipe init` writes the files of this checkout from the package's templates: the same
    pipeline without the code deps (an installed tlpipe's code is not in the project), the
    same documented params.yaml with the demo's data, classes and model name."""
    from tlpipe.ops.project import render_params, template

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
