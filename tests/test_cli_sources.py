"""`tfvae train`, `evaluate`, `score` and `encode` on streamed sources, in this process (one TensorFlow start-up)."""

import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import test_sources
from test_cli import in_process
from tfvae import sources

TRAIN = ("--latent-dim", 2, "--epochs", 1, "--batch-size", 50, "--diagnostics-every", 1, "--diagnostics-samples", 5)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-sources")
    x, y = test_sources._images(240), np.arange(240) % 4
    for i, (image, label) in enumerate(zip(x, y)):
        os.makedirs(root / "folder" / f"c{label}", exist_ok=True)
        Image.fromarray(image).save(root / "folder" / f"c{label}" / f"{i:03d}.png")
    with tf.io.TFRecordWriter(str(root / "images.tfrecord")) as writer:
        for image, label in zip(x, y):
            writer.write(test_sources._png_example(image, int(label)))
    with open(root / "counts.csv", "w") as f:
        f.write("a,b,c,label\n" + "".join(f"{i % 5},{i % 3},{(i * 7) % 11},{y[i]}\n" for i in range(240)))
    with open(root / "plain.csv", "w") as f:
        f.write("a,b\n" + "".join(f"{i % 5},{i % 3}\n" for i in range(60)))
    return root


def _train(data, *args):
    result = in_process(["train", *args, *TRAIN], data)
    assert result.returncode == 0, result.stderr
    return result


@pytest.mark.slow
def test_a_folder_trains_conditioned_on_its_subfolders_and_the_run_records_it(data):
    result = _train(data, "--dataset", "folder", "--condition", "labels", "--out", "runs/folder")
    source = sources.open(data / "folder")
    assert f"({source.size('train')} train, {source.size('test')} test, 8x8x1, images streamed)" in result.stdout
    config = json.loads((data / "runs/folder/config.json").read_text())
    assert config["dataset"] == str(data / "folder")  # absolute: found again from any directory
    assert config["data"] == {**source.describe(), "source": str(data / "folder")}
    assert config["data"]["classes"] == 4 and config["data"]["kind"] == "images"
    history = (data / "runs/folder/history.csv").read_text()
    assert "val_log_likelihood" in history
    # evaluate finds the data again, and scores the same fixed binary draw of the test split the validation did
    evaluated = in_process(["evaluate", "runs/folder", "--num-samples", 5, "--json"], data)
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert report["num_examples"] == source.size("test") and report["dataset"] == str(data / "folder")


@pytest.mark.slow
def test_tfrecord_files_train_evaluate_and_resume(data):
    _train(data, "--dataset", "images.tfrecord", "--out", "runs/records")
    evaluated = in_process(["evaluate", "runs/records", "--num-samples", 5, "--json"], data)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["num_examples"] == sources.open(data / "images.tfrecord").size("test")
    resumed = in_process(["train", "--resume", "--out", "runs/records", "--epochs", 2], data)
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming runs/records" in resumed.stdout
    rows = (data / "runs/records/history.csv").read_text().strip().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["0", "1"]


@pytest.mark.slow
def test_a_csv_of_counts_trains_with_a_poisson_likelihood(data):
    result = _train(data, "--dataset", "counts.csv", "--likelihood", "poisson", "--out", "runs/counts")
    assert "csv streamed" in result.stdout and "binarization" not in result.stderr
    config = json.loads((data / "runs/counts/config.json").read_text())
    assert config["input_shape"] == [3] and config["binarization"] == "none"
    # A count below zero is outside the Poisson's support: fit refuses the batch, naming the dataset.
    with open(data / "negative.csv", "w") as f:
        f.write("a,b,c\n" + "1,2,3\n" * 30 + "-1,0,0\n")
    refused = in_process(["train", "--dataset", "negative.csv", "--likelihood", "poisson", "--out", "runs/neg",
                          "--diagnostics-every", 0, "--epochs", 1], data)
    assert refused.returncode == 2 and "negative.csv" in refused.stderr


@pytest.mark.slow
def test_score_and_encode_read_a_folder_recursively_with_its_labels(data):
    _train(data, "--dataset", "folder", "--out", "runs/plain")
    scored = in_process(["score", "runs/plain", "--input", "folder", "-o", "scores.csv", "--num-samples", 5], data)
    assert scored.returncode == 0, scored.stderr
    rows = (data / "scores.csv").read_text().strip().splitlines()
    assert rows[0] == "index,score,p_value,flagged,file" and rows[1].endswith(",c0/000.png") and len(rows) == 241
    encoded = in_process(["encode", "runs/plain", "--input", "images.tfrecord", "-o", "z.npy"], data)
    assert encoded.returncode == 0, encoded.stderr
    assert np.load(data / "z.npy").shape == (240, 2)


@pytest.mark.parametrize("args, message", [
    (("--dataset", "nowhere/"), "--dataset: expected one of digits"),
    (("--dataset", "none-*.tfrecord"), r"none-\*.tfrecord: matches no TFRecord files"),
    (("--dataset", "counts.csv", "--image-size", "8"),
     r"--image-size: .*counts.csv is a csv source, not images; got image_size=\[8, 8\]"),
    (("--dataset", "folder", "--test-dataset", "counts.csv"),
     r"--test-dataset: expected examples of shape \(8, 8, 1\)"),
    (("--dataset", "plain.csv", "--likelihood", "poisson", "--condition", "labels"),
     "--condition labels: the dataset .*plain.csv has no labels"),
])
def test_bad_source_flags_are_one_line_naming_the_flag(data, args, message, capsys):
    result = in_process(["train", *args, "--out", "runs/refused", "--epochs", 1, "--diagnostics-every", 0], data)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("tfvae: error:")]
    assert len(lines) == 1 and re.search(message, lines[0]), result.stderr
    assert not (data / "runs/refused/config.json").exists()
