"""benchmarks/ood.py: its figures on scores whose ranking is known, and the committed result (the full run takes minutes)."""

import json
import os

import numpy as np
import pytest

from benchmark_scripts import load

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_figures_are_auroc_aupr_and_fpr_at_95_tpr():
    ood = load("ood.py")
    inside = np.arange(100.0)  # scores 0..99
    scores = {"in_distribution": inside, "above": inside + 1000.0, "interleaved": inside + 0.5}
    p_values = {"in_distribution": np.full(100, 0.5), "above": np.full(100, 0.01)}
    figures = ood.figures(scores, p_values)
    assert figures["above"] == {"auroc": 1.0, "aupr": 1.0, "fpr_at_95_tpr": 0.0}
    # s + 0.5 beats s itself and everything below: 100 * 101 / 2 pairs of 10,000.
    assert figures["interleaved"]["auroc"] == pytest.approx(0.505)
    # 95% of positives are those >= 5.5, above 94 of the 100 negatives (6..99).
    assert figures["interleaved"]["fpr_at_95_tpr"] == pytest.approx(0.94)
    assert figures["flagged_at_5_percent"] == {"in_distribution": 0.0, "above": 1.0}


def result(name):
    with open(os.path.join(ROOT, "benchmarks", "results", name), encoding="utf-8") as f:
        return json.load(f)


def test_the_committed_binary_result_has_every_method_and_the_default_exported_whole():
    binary = result("ood-fashion.json")
    assert binary["default_method"] == "complexity" and binary["images"] == "binary"
    methods = binary["methods"]
    assert set(methods) == {*load("ood.py").METHODS, "export"}
    assert methods["export"]["manifest"]["method"] == "complexity"
    for runtime in ("saved_model", "tflite"):
        for name in ("mnist", "vflip", "noise"):
            assert abs(methods["export"][runtime][name]["auroc"] - methods["complexity"][name]["auroc"]) <= 0.02


def test_the_committed_grey_result_exports_the_fallback_of_the_png_coder():
    grey = result("ood-fashion-grey.json")
    assert grey["images"] == "8-bit grey" and set(grey["methods"]) == {*load("ood.py").GREY_METHODS, "export"}
    export = grey["methods"]["export"]
    assert export["manifest"]["method"] == "inference_gap" and export["manifest"]["detector_method"] == "complexity"
    for runtime in ("saved_model", "tflite"):
        assert abs(export[runtime]["mnist"]["auroc"] - grey["methods"]["inference_gap"]["mnist"]["auroc"]) <= 0.02


def test_the_committed_default_meets_the_issues_targets():
    """Issue 33's targets for the default on the binary setup, as the committed run measured them."""
    default = result("ood-fashion.json")["methods"]["complexity"]
    assert default["mnist"]["auroc"] >= 0.97 and default["vflip"]["auroc"] >= 0.90 and default["noise"]["auroc"] >= 0.99
    flagged = default["flagged_at_5_percent"]
    assert flagged["mnist"] >= 0.80 and 0.03 <= flagged["in_distribution"] <= 0.07
    assert default["examples_per_second"] >= 300
