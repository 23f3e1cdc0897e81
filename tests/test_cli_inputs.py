"""What the `tfvae` command reads and is asked for (issue 17): 16-bit and oversized images, one-image
and RGBA folders, data outside the likelihood's support, sizes that would not fit (the resource rule of
tfvae.resources), numeric flags out of range, and library parameter names in the command's messages.

The commands that must not leave a traceback run in real subprocesses; the other refusals run
in-process through `main`, where each takes a fraction of a second."""

import os
import re
import shutil
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from test_cli import check_error, command, error_lines, run, run_together, workdir  # noqa: F401 (fixtures)

from tfvae import resources
from tfvae.cli import main, runs

# The row of 16-bit grey levels, which an 8-bit reading clipped to [0, 1, 1, 1, ...].
ROW = np.array([0.0, 0.18, 0.94, 0.12, 1.0, 0.5, 0.25, 0.75])


def png_header_only(path, width, height):
    """A PNG that declares width x height 8-bit grey pixels: Pillow judges its size from the header."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)


@pytest.fixture(scope="module")
def folders(workdir):  # noqa: F811
    """Image folders: 16-bit grey PNGs (and the same values as .npy), one oversized PNG, one image, RGBA."""
    sixteen = workdir / "png16"
    sixteen.mkdir()
    levels = np.round(np.stack([np.roll(np.tile(ROW, (8, 1)), i, axis=1) for i in range(3)]) * 65535)
    for i, image in enumerate(levels.astype(np.uint16)):
        Image.fromarray(image).save(sixteen / f"{i}.png")
    np.save(workdir / "png16.npy", (levels / 65535).astype(np.float32)[..., np.newaxis])
    (workdir / "bomb").mkdir()
    png_header_only(workdir / "bomb" / "big.png", 20000, 20000)
    (workdir / "one").mkdir()
    Image.fromarray((np.tile(ROW, (8, 1)) * 255).astype(np.uint8)).save(workdir / "one" / "0.png")
    (workdir / "rgba").mkdir()
    rgba = np.random.default_rng(0).integers(0, 256, size=(2, 8, 8, 4), dtype=np.uint8)
    for i, image in enumerate(rgba):
        Image.fromarray(image).save(workdir / "rgba" / f"{i}.png")  # (8, 8, 4) uint8: RGBA
        Image.fromarray(image[..., :3]).save(workdir / "rgba" / f"rgb-{i}.png")
    return workdir


@pytest.fixture(scope="module")
def results(run, folders):  # noqa: F811
    """The two commands that ended in tracebacks, in their own processes; TensorFlow's import makes each
    take seconds, so the other cases run in-process."""
    return run_together(
        {
            "encode bomb": command("encode", run, "--input", "bomb", "-o", "zbomb.npy"),
            "train huge latent": command("train", "--dataset", "digits", "--latent-dim", 10**9, "--out", "huge"),
        },
        cwd=folders,
    )


def test_16_bit_pngs_are_read_at_full_scale(folders, run, capsys):  # noqa: F811
    x, _, names = runs.read_input(folders / "png16", (8, 8, 1))

    assert names == ["0.png", "1.png", "2.png"]
    np.testing.assert_array_equal(x[0, 0, :, 0], (np.round(ROW * 65535) / 65535).astype(np.float32))
    np.testing.assert_array_equal(x, np.load(folders / "png16.npy"))
    # The command encodes the PNGs as it encodes the same values from a .npy file.
    for source, output in (("png16", "z16.npy"), ("png16.npy", "z16ref.npy")):
        assert main(["encode", str(run), "--input", str(folders / source), "-o", str(folders / output)]) == 0
    np.testing.assert_array_equal(np.load(folders / "z16.npy"), np.load(folders / "z16ref.npy"))


@pytest.mark.slow
def test_an_image_too_large_to_decode_is_one_line_naming_it(folders, results, run, capsys):  # noqa: F811
    result = results["encode bomb"]

    assert result.returncode == 2
    assert error_lines(result.stderr) == [
        f"tfvae: error: {os.path.join('bomb', 'big.png')}: cannot read the image (it is too large: its header claims "
        "400000000 pixels, more than the 178956970 an image may have); 1 of the 1 images in bomb do not decode. "
        "tfvae train --skip-bad-files skips them."
    ]
    for argv in (["reconstruct", "-o", "r.png"], ["score", "-o", "s.csv"], ["plot-latent", "-o", "p.png"]):
        check_error(capsys, [argv[0], run, "--input", folders / "bomb", *argv[1:]], "big.png: cannot read the image")


@pytest.mark.slow
def test_plot_latent_draws_a_single_image_and_rgba_images(folders, run, capsys):  # noqa: F811
    for name in ("one", "rgba"):
        assert main(["plot-latent", str(run), "--input", str(folders / name), "-o", str(folders / f"{name}.png")]) == 0
        with Image.open(folders / f"{name}.png") as image:
            assert image.size == (600, 600)
    assert "Wrote a scatter plot of 1 posterior means" in capsys.readouterr().out
    # The alpha channel is dropped: each RGBA image reads as its RGB colours.
    x, _, names = runs.read_input(folders / "rgba", (8, 8, 3))
    assert names == ["0.png", "1.png", "rgb-0.png", "rgb-1.png"]
    np.testing.assert_array_equal(x[:2], x[2:])


def test_training_that_would_not_fit_is_refused_with_the_estimate(folders, results, capsys, tmp_path):
    train = results["train huge latent"]
    assert train.returncode == 2
    [line] = error_lines(train.stderr)
    assert re.fullmatch(r"tfvae: error: --latent-dim 1000000000: would need ~9,632 GB of memory; this machine "
                        r"has ~[0-9.,]+ GB available \(see Limits in docs/cli.md\)\.", line), line
    assert not (folders / "huge").exists()

    check_error(capsys, ["train", "--dataset", "digits", "--num-samples", 10**7, "--out", tmp_path / "r"],
                "--num-samples 10000000 with --batch-size 32: would need ~3,502 GB of memory")
    assert not (tmp_path / "r").exists()


def test_sampling_scoring_and_export_beyond_the_rule_are_refused_with_the_estimate(run, capsys, tmp_path):  # noqa: F811
    check_error(capsys, ["sample", run, "-n", 10**9, "-o", tmp_path / "s.npy"],
                "-n 1000000000: would need ~3,980 GB of memory")
    check_error(capsys, ["sample", run, "-n", 10**7, "-o", tmp_path / "s.png"],  # a grid of 57x57 pixels each
                "-n 10000000: would need ~592 GB of memory")
    check_error(capsys, ["evaluate", run, "--num-samples", 10**8],
                "--num-samples 100000000 (per example): one step without progress would compute 6.4e+09 decoder "
                "outputs; the limit is 2.1e+09")
    np.save(tmp_path / "x.npy", np.zeros((2, 8, 8)))
    check_error(capsys, ["score", run, "--input", tmp_path / "x.npy", "--num-samples", 10**8, "-o", tmp_path / "s.csv"],
                "--num-samples: one step without progress would compute 6.4e+09")
    check_error(capsys, ["export", run, "--log-prob-samples", 10**9, "--out", tmp_path / "e"],
                "--log-prob-samples 1000000000 (checked in 3 runtimes on 64 examples): one step without progress "
                "would compute 1.2e+13 decoder outputs")
    assert sorted(os.listdir(tmp_path)) == ["x.npy"]


def test_the_resource_rule():
    assert resources.parameter_count((784,), 16) == 404816  # tfvae.VAE(input_shape=(784,), latent_dim=16)
    assert resources.model_bytes((784,), 16) == 16 * 404816  # weights, gradients, Adam's two moments
    # The gated bodies: two products per hidden layer (tfvae.VAE(..., encoder="gated_mlp", decoder="gated_mlp")).
    assert resources.parameter_count((784,), 40, "gated_mlp") == 1_116_864  # model.count_params() - 1 (beta)
    assert resources.examples_per_step(5000, 784, 100) == 100  # evaluate's defaults on MNIST: unchanged
    assert resources.examples_per_step(10**6, 784, 100) == 2  # K = 10^6: two examples a step
    resources.check_memory(10**9, "request", available=10**9)
    expected = r"^x: would need ~2,000,000,000 GB of memory; this machine has ~1 GB available"
    with pytest.raises(resources.ResourceError, match=expected):
        resources.check_memory(2 * 10**18, "x", available=10**9)
    resources.check_step(resources.STEP_ELEMENTS, "request")
    with pytest.raises(resources.ResourceError, match="the limit is 2.1e"):
        resources.check_step(resources.STEP_ELEMENTS + 1, "request")


def test_bernoulli_training_data_outside_0_1_is_refused(capsys, tmp_path):
    x = np.zeros((20, 8, 8), np.float32)
    x[:, 0, 0] = 2.0  # in the train and the test split alike
    np.save(tmp_path / "grey.npy", x)

    argv = ["train", "--dataset", tmp_path / "grey.npy", "--binarization", "none", "--out", tmp_path / "r"]
    check_error(capsys, argv,
                f"--dataset {tmp_path / 'grey.npy'} (train split): the Bernoulli likelihood expects values in [0, 1] "
                "(scale 8-bit images by 1/255, or train with --likelihood gaussian); got 17 values outside it, in [2, 2]")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--learning-rate", "1e9"], "--learning-rate: expected a number in (0, 1], e.g. 1e-3; got '1e9'"),
        (["train", "--learning-rate", "1.5"], "--learning-rate: expected a number in (0, 1]"),
        (["train", "--seed", "-1"], "--seed: expected an integer from 0 to 2**31-1 = 2147483647; got '-1'"),
        (["train", "--seed", str(2**31)], "--seed: expected an integer from 0 to 2**31-1"),
        (["sample", "run", "--seed", "1e300"], "--seed: expected an integer from 0 to 2**31-1"),
    ],
)
def test_numeric_flags_out_of_range_say_the_range(capsys, monkeypatch, tmp_path, argv, message):
    monkeypatch.chdir(tmp_path)  # where a wrongly accepted `train` would write runs/

    check_error(capsys, argv, message)
    assert not os.listdir(tmp_path)


def test_values_beyond_float32_are_called_too_large(run, capsys, tmp_path):  # noqa: F811
    x = np.full((2, 8, 8), 0.5)
    x[1, 2, 3] = 1e300
    np.save(tmp_path / "big.npy", x)
    np.save(tmp_path / "complex.npy", np.full((2, 8, 8), 0.5 + 1j))

    check_error(capsys, ["encode", run, "--input", tmp_path / "big.npy", "-o", tmp_path / "z.npy"],
                "big.npy: expected values within float32's range of ±3.4e+38; got 1 too large, e.g. 1e+300.")
    check_error(capsys, ["encode", run, "--input", tmp_path / "complex.npy", "-o", tmp_path / "z.npy"],
                "complex.npy: expected numeric images; got dtype complex128.")
    assert main(["sample", str(run), "-n", "2", "--seed", str(2**31 - 1), "-o", str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (2, 8, 8, 1)


def test_library_errors_name_the_flags(run, capsys, tmp_path):  # noqa: F811
    (tmp_path / "taken").mkdir()
    np.save(tmp_path / "grey.npy", np.full((2, 8, 8), 2.0))

    check_error(capsys, ["export", run, "--out", tmp_path / "taken"],
                f"--out: '{tmp_path / 'taken'}' already exists; pass --overwrite to replace it")
    check_error(capsys, ["export", run, "--out", tmp_path / "e", "--no-tflite", "--quantize", "dynamic"],
                "--quantize: 'dynamic' needs the TFLite model (drop --no-tflite).")
    check_error(capsys, ["evaluate", run, "--dataset", tmp_path / "missing.npy"],
                f"--dataset: no such file or folder '{tmp_path / 'missing.npy'}'.")
    (tmp_path / "bad.csv").write_text("a,b\n1,NA\n")  # a table's bad cell, named with the flag
    check_error(capsys, ["evaluate", run, "--dataset", tmp_path / "bad.csv"],
                f"--dataset {tmp_path / 'bad.csv'}: {tmp_path / 'bad.csv'}, line 2, column 'b': expected a number")
    check_error(capsys, ["score", run, "--input", tmp_path / "grey.npy", "-o", tmp_path / "s.csv"],
                f"--input {tmp_path / 'grey.npy'}: the Bernoulli likelihood expects values in [0, 1]")
    check_error(capsys, ["reconstruct", run, "--input", tmp_path / "grey.npy", "-o", tmp_path / "r.npy"],
                f"--input {tmp_path / 'grey.npy'}: the Bernoulli likelihood expects values in [0, 1]")
    check_error(capsys, ["plot-latent", run, "--input", tmp_path / "grey.npy", "-o", tmp_path / "p.png"],
                f"--input {tmp_path / 'grey.npy'}: the Bernoulli likelihood expects values in [0, 1]")


def test_resuming_a_run_killed_after_its_last_epoch_says_so(run, capsys, tmp_path):  # noqa: F811
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    os.remove(copy / "model.keras")  # killed between the last checkpoint and the model

    assert main(["train", "--resume", "--out", str(copy)]) == 0

    out = capsys.readouterr().out
    assert "all 2 epochs trained, writing model.keras" in out
    assert "epoch 3 of 2" not in out
    assert (copy / "model.keras").is_file()
