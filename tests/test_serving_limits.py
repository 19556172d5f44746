"""The served model refuses a decompression bomb before decoding it: `tlpipe predict` and
`mlflow models serve` both score through the pyfunc, so its guard covers both."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from tests.images import decompression_bomb, photo
from tlpipe.training.heads import HeadSpec, build_head
from tlpipe.training.model import Classifier, ModelSpec, load_classifier, save_classifier
from tlpipe.vectors.backbones import load_backbone


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("guarded") / "model"
    backbone = load_backbone()
    torch.manual_seed(0)
    spec = HeadSpec("linear", backbone.num_features, 2)
    save_classifier(Classifier(backbone.model, build_head(spec)),
                    ModelSpec(backbone.name, backbone.num_features, ["a", "b"], spec.to_dict(),
                              backbone.preprocessing.to_dict(), max_pixels=2_000_000),
                    directory)
    return directory


def test_a_model_keeps_the_pixel_limit_it_was_trained_with(model_dir, tmp_path):
    assert load_classifier(model_dir)[1].max_pixels == 2_000_000
    legacy = json.loads((model_dir / "model.json").read_text())
    del legacy["max_pixels"]  # a model saved before the limit was kept with it
    assert ModelSpec(**legacy).max_pixels == 40_000_000  # validation.max_pixels's default


def test_a_bomb_is_refused_before_it_is_decoded(model_dir, tmp_path):
    bomb = decompression_bomb(tmp_path / "bomb.png", side=30_000)  # 900 megapixels
    assert bomb.stat().st_size < 1_000_000
    photo(1, (120, 90)).save(tmp_path / "fine.png")
    script = textwrap.dedent(f"""
        import json
        import pandas as pd
        from mlflow.pyfunc import PythonModelContext
        from tlpipe.serving.pyfunc import IMAGE_COLUMN, ImageClassifierModel

        served = ImageClassifierModel()
        served.load_context(PythonModelContext(artifacts={{"model_dir": {str(model_dir)!r}}},
                                               model_config={{"device": "cpu"}}))
        fine = served.predict(None, pd.DataFrame({{IMAGE_COLUMN: [
            open({str(tmp_path / "fine.png")!r}, "rb").read()]}}))
        try:
            served.predict(None, pd.DataFrame({{IMAGE_COLUMN: [
                open({str(bomb)!r}, "rb").read()]}}))
            refused = None
        except ValueError as error:
            refused = str(error)
        # VmHWM: this process's peak since exec (ru_maxrss would count the forking parent).
        peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
        print(json.dumps({{"fine": fine["label"].tolist(), "refused": refused,
                           "peak_mb": int(peak.split()[1]) / 1024}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["fine"][0] in ("a", "b")
    assert outcome["refused"] is not None
    assert "row 0: 30000x30000 = 900000000 pixels" in outcome["refused"]
    assert "limit of 2000000" in outcome["refused"] and "downscale" in outcome["refused"]
    # Decoded, the bomb alone would take 0.9 GB in mode "1" and 2.7 GB as RGB.
    assert outcome["peak_mb"] < 1500, outcome["peak_mb"]


@pytest.mark.parametrize("kind", ["array", "nested lists"])
def test_an_oversized_pixel_array_is_refused_before_it_is_converted(kind):
    from tlpipe.serving.pyfunc import as_image

    rows = np.zeros((2000, 1001, 3), np.uint8)
    value = rows if kind == "array" else [[[0, 0, 0]] * 1001] * 2000
    with pytest.raises(ValueError, match=r"row 4: 2000x1001 = 2002000 pixels, more than the "
                                         r"limit of 2000000.*downscale"):
        as_image(value, row=4, max_pixels=2_000_000)
    assert as_image(rows[:1000], max_pixels=2_000_000).size == (1001, 1000)
