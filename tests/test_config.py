from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from tlpipe.cli.main import app
from tlpipe.config import Params
from tlpipe.params_file import ConfigError, load_params, overrides_from

REPO_PARAMS = "params.yaml"


def _write(tmp_path, payload) -> str:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(payload))
    return str(path)


def test_the_committed_params_file_is_valid():
    params = load_params(REPO_PARAMS)
    assert params.backbone.name == "efficientnet_lite0"
    assert params.validation.quarantine == ["format", "near_duplicates"]


@pytest.mark.parametrize(("payload", "key"), [
    ({"head": {"lr": "fast"}}, "head.lr"),
    ({"head": {"learning_rate": 0.1}}, "head.learning_rate"),
    ({"finetune": {"epochs": -1}}, "finetune.epochs"),
    ({"split": {"test_fraction": 0.5, "val_fraction": 0.5}}, "split"),
    ({"features": {"precision": "fp8"}}, "features.precision"),
    ({"validation": {"quarantine": ["everything"]}}, "validation.quarantine.0"),
    ({"backbones": {}}, "backbones"),
    ({"registry": {"model_name": "cells.promotion-lock"}}, "registry.model_name"),
    ({"registry": {"model_name": "cells.retrain-lock"}}, "registry.model_name"),
    ({"finetune": {"batchnorm": ["train", "learn"]}}, "finetune.batchnorm.1"),
    ({"evaluation": {"tta": "rotate"}}, "evaluation.tta"),
])
def test_bad_settings_fail_with_the_key_named(tmp_path, payload, key):
    with pytest.raises(ConfigError) as error:
        load_params(_write(tmp_path, payload))
    assert key in str(error.value)


def test_missing_file_and_bad_yaml_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("head: [unclosed")
    with pytest.raises(ConfigError, match=r"broken\.yaml"):
        load_params(broken)


def test_digest_changes_with_any_setting():
    assert Params().digest() != Params.model_validate({"head": {"lr": 0.01}}).digest()
    assert Params().digest() == Params().digest()


def test_cli_rejects_a_bad_override_before_doing_anything(tmp_path):
    result = CliRunner().invoke(app, ["run", "--params", _write(tmp_path, {}), "--set",
                                      "head.lr=-1"])
    assert result.exit_code == 2
    assert "head.lr" in result.output


def test_every_command_explains_itself():
    runner = CliRunner()
    for command in ([], ["run"], ["validate"], ["demo-data"], ["predict"], ["lineage"],
                    ["reproduce"], ["promote"], ["rollback"], ["models"], ["export"],
                    ["retrain"], ["schedule"], ["stack"], ["stack", "up"], ["stack", "down"],
                    ["stack", "status"], ["ui"]):
        result = runner.invoke(app, [*command, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output, command
    assert "--set" in runner.invoke(app, ["run", "--help"]).output
    assert "--cron" in runner.invoke(app, ["schedule", "--help"]).output


def test_hostile_params_files_are_refused_quickly_with_a_short_message(tmp_path):
    laughs = ["a: &a [x, x, x, x, x, x, x, x, x, x]"] + [
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}]" for i in range(8)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join([*laughs, "head: {lr: *i}"]) + "\n")  # 10**9 values expanded
    with pytest.raises(ConfigError, match=r"bomb\.yaml: \d+ values once its YAML aliases"):
        load_params(bomb)

    huge = tmp_path / "huge.yaml"
    huge.write_text(yaml.safe_dump({"head": {"knn_k": list(range(300_000))}}))
    with pytest.raises(ConfigError, match=r"huge\.yaml: \d+ bytes; settings files hold at most"):
        load_params(huge)

    long_list = tmp_path / "long.yaml"  # small enough to read, wrong in its value
    long_list.write_text(yaml.safe_dump({"head": {"lr": list(range(20_000))}}))
    with pytest.raises(ConfigError) as error:
        load_params(long_list)
    assert "head.lr" in str(error.value) and len(str(error.value)) < 2000

    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing here yet\n")
    with pytest.raises(ConfigError, match=r"empty\.yaml: empty.*tlpipe init"):
        load_params(empty)


@pytest.mark.parametrize(("pairs", "message"), [
    (["head.lr=["], r"--set 'head.lr=\[': not valid YAML"),
    (["head=2", "head.lr=1"], r"--set 'head.lr=1': head is set to a value by another --set"),
])
def test_bad_overrides_are_named(pairs, message):
    with pytest.raises(ConfigError, match=message):
        overrides_from(pairs)
