"""The benchmark's table.md counts the organs its foreground means average (issue 14 item 9)."""
from __future__ import annotations

import json
import math

import pytest

from nnunet_poolskip.benchmark.protocol import MODELS
from nnunet_poolskip.benchmark.report import foreground_sentence, table_rows
from nnunet_poolskip.evaluation.comparison_tables import compare_summaries
from nnunet_poolskip.evaluation.evaluate_predictions import summarize

LABELS = {1: "liver", 2: "spleen", 3: "pancreas"}


def write_summary(path, pancreas):
    per_case = [{"case": c, **{m: {1: 0.9 - i / 10, 2: 0.7, 3: pancreas} for m in ("dice", "nsd", "iou")}}
                for i, c in enumerate(("x", "y"))]
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(summarize(per_case, LABELS, {k: 1.0 for k in LABELS})))
    return path


@pytest.mark.parametrize("pancreas, expected", [
    (0.5, "Foreground means over all 3 organs"),
    # pancreas empty in reference and prediction of every case for Pool Skip: its mean averages 2 organs
    (math.nan, "Foreground means over the organs with a value in some test case, of 3: nnU-Net + Pool Skip 2, "
               "the others 3")])
def test_foreground_sentence_counts_the_averaged_organs(tmp_path, pancreas, expected):
    models = [MODELS["nnunet"], MODELS["nnunet_poolskip"]]
    paths = [write_summary(tmp_path / "a" / "summary.json", 0.5), write_summary(tmp_path / "b" / "summary.json",
                                                                                  pancreas)]
    compare_summaries(paths, [m.display for m in models], tmp_path / "all")
    rows = table_rows(models, {"all": (models, tmp_path / "all")})
    assert [r["foreground_labels"] for r in rows] == [3, 3 if pancreas == 0.5 else 2]
    assert foreground_sentence(rows) == expected
