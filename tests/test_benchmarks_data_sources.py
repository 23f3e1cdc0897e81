"""benchmarks/data_sources.py: its speed figures on a small folder, its array file, and the committed result."""

import json
import os

import numpy as np

from benchmark_scripts import load

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_array_file_repeats_the_images_to_n_rows(tmp_path):
    images = np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28)
    path = load("data_sources.py")._array_file(str(tmp_path), images, 7)
    x = np.load(path, mmap_mode="r")
    assert x.shape == (7, 28, 28) and x.dtype == np.uint8
    np.testing.assert_array_equal(x, images[[0, 1, 2, 0, 1, 2, 0]])


def test_speed_compares_the_three_ways_in_over_the_same_images(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(120, 28, 28), dtype=np.uint8)
    speed = load("data_sources.py")._speed(str(tmp_path), images, 40, 1)
    assert set(speed["examples_per_second"]) == {"in_memory_arrays", "png_folder", "npz_mapped"}
    assert speed["speed_vs_in_memory"]["in_memory_arrays"] == 1.0
    assert len(os.listdir(tmp_path / "png-120")) == 120  # every image as a PNG


def test_the_committed_result_meets_the_issues_targets():
    with open(os.path.join(ROOT, "benchmarks", "results", "data-sources.json"), encoding="utf-8") as f:
        result = json.load(f)
    memory = result["memory"]
    assert memory["streamed/600000"]["peak_rss_anon_mb"] <= 1500 < memory["before/600000"]["peak_rss_anon_mb"]
    for figures in result["speed"].values():
        assert figures["images"] == 12000 and figures["speed_vs_in_memory"]["png_folder"] >= 0.5
