from __future__ import annotations

import dataclasses

import pytest

from tlpipe.config import FeaturesConfig
from tlpipe.devices import CPU
from tlpipe.fsio import atomic_path
from tlpipe.vectors.engines import engine_identity
from tlpipe.vectors.features import FeatureSpec
from tlpipe.vectors.store import PLAIN_VIEW

SPEC = FeatureSpec("weights", {"input_size": 224}, {"crop_scale": [0.3, 1]}, "onnxruntime-fp32", 1)


def test_keys_follow_content_weights_preprocessing_and_view():
    key = SPEC.key("a" * 64, 1)
    assert key == SPEC.key("a" * 64, 1)
    assert key != SPEC.key("b" * 64, 1)
    assert key != SPEC.key("a" * 64, 2)
    assert key != FeatureSpec("other", *list(SPEC.__dict__.values())[1:]).key("a" * 64, 1)
    # The plain view does not depend on the augmentation policy.
    other_policy = FeatureSpec("weights", {"input_size": 224}, {}, "onnxruntime-fp32", 1)
    assert SPEC.key("a" * 64, PLAIN_VIEW) == other_policy.key("a" * 64, PLAIN_VIEW)
    assert SPEC.key("a" * 64, 1) != other_policy.key("a" * 64, 1)


@pytest.mark.parametrize("settings", [{"engine": "torch"}, {"engine": "torch", "precision": "fp32"},
                                      {"engine": "torch", "channels_last": False}])
def test_features_of_different_engines_or_precisions_never_share_a_key(settings):
    default = FeaturesConfig()
    other = default.model_copy(update=settings)
    assert engine_identity(other, CPU) != engine_identity(default, CPU)
    spec = dataclasses.replace(SPEC, engine=engine_identity(other, CPU))
    for view in (PLAIN_VIEW, 1):
        assert spec.key("a" * 64, view) != SPEC.key("a" * 64, view)


def test_an_interrupted_write_leaves_no_entry(tmp_path):
    target = tmp_path / "cd" / "entry.npy"
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as temporary:
        temporary.write_bytes(b"half a vec")
        raise KeyboardInterrupt
    assert not target.exists()
    assert list(target.parent.iterdir()) == []
