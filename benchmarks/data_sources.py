"""Streamed data sources: the memory of one epoch on 600,000 images, and a folder of PNGs against arrays in memory.

    python benchmarks/data_sources.py --work-dir /tmp/sources --before /tmp/tfvae-before \
        --output benchmarks/results/data-sources.json

Memory: `tfvae train --dataset X.npy --epochs 1` (every other flag the default) in a subprocess, its
RssAnon sampled every 20 ms: what the process holds, not the kernel's cached pages of the mapped file.
X is uint8, (N, 28, 28): Fashion-MNIST's training images repeated to N = 600,000 (470 MB), and
N = 5,000 for scale. With --before (a checkout of tfvae from before streaming, e.g. `git worktree add
/tmp/tfvae-before ecf83a0`), the same command run by that code, which loads and converts the array whole.

Speed: the command line's default model (MLP, latent_dim 16) fits epochs of the first 12,000 of those
images given three ways: a folder of 12,000 PNGs (`tfvae.sources`), the same as an `.npz`
(memory-mapped, `tfvae.sources`) and as arrays in memory (`tfvae.data.make_dataset`, how `.npz` files
were read before), dynamically binarized. The three alternate epoch by epoch, --repeats times after
one warm-up epoch each; the medians and their ratios to the in-memory arrays are reported, at each
--batch-sizes. Resumable: each figure goes to --work-dir/entries.json as it is measured.
"""

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import common  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", required=True, help="where the data and runs are written (not the repository)")
    parser.add_argument("--output", required=True)
    parser.add_argument("--before", help="a checkout of tfvae before streaming, to run the memory command with")
    parser.add_argument("--images", type=int, nargs="+", default=[600_000, 5_000])
    parser.add_argument("--folder-images", type=int, default=12_000)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)
    entries = common.load_entries(args.work_dir)
    source = _fashion_train()
    for n in args.images:
        for code, label in ((ROOT, "streamed"), (args.before, "before")):
            key = f"memory/{label}/{n}"
            if code is None or key in entries:
                continue
            entries[key] = _memory(_array_file(args.work_dir, source, n), code, os.path.join(args.work_dir, key))
            common.save_entries(args.work_dir, entries)
            print(key, entries[key], flush=True)
    for batch_size in args.batch_sizes:
        key = f"speed/{batch_size}"
        if key not in entries:
            entries[key] = _speed(args.work_dir, source[: args.folder_images], batch_size, args.repeats)
            common.save_entries(args.work_dir, entries)
            print(key, entries[key], flush=True)
    result = {
        "benchmark": "data_sources",
        "command": " ".join(shlex.quote(a) for a in ["python", *sys.argv]),
        "machine": common.machine_info(),
        "memory": {k.split("/", 1)[1]: v for k, v in entries.items() if k.startswith("memory/")},
        "speed": {k.split("/", 1)[1]: v for k, v in entries.items() if k.startswith("speed/")},
    }
    common.write_atomically(args.output, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _fashion_train():
    from tfvae import data

    return data.read_idx(os.path.join(data.FASHION_MNIST_SYSTEM_DIR, data.IDX_FILES[0]))


def _array_file(work_dir, images, n):
    path = os.path.join(work_dir, f"fashion-{n}.npy")
    if not os.path.exists(path):
        out = np.lib.format.open_memmap(path + ".tmp.npy", mode="w+", dtype=np.uint8, shape=(n, 28, 28))
        for start in range(0, n, len(images)):
            out[start:start + len(images)] = images[: n - start]
        out.flush()
        del out
        os.replace(path + ".tmp.npy", path)
    return path


def _memory(path, code, run):
    """Peak RssAnon and VmHWM (MB) and seconds of `tfvae train --dataset path --epochs 1` run by the tfvae in `code`."""
    env = {**os.environ, "PYTHONPATH": code}
    command = [sys.executable, "-m", "tfvae", "train", "--dataset", path, "--epochs", "1", "--out", run]
    start = time.perf_counter()
    # Not run from a checkout: `python -m` would import the tfvae of the working directory, not of `code`.
    process = subprocess.Popen(command, env=env, cwd=os.path.dirname(path), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    peak = {"RssAnon": 0, "VmHWM": 0}
    done = threading.Event()

    def sample():
        while not done.is_set():
            try:
                with open(f"/proc/{process.pid}/status", encoding="ascii") as f:
                    for line in f:
                        name, _, value = line.partition(":")
                        if name in peak:
                            peak[name] = max(peak[name], int(value.split()[0]))
            except (FileNotFoundError, ProcessLookupError):
                return
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    _, stderr = process.communicate()
    done.set()
    sampler.join()
    if process.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{stderr[-2000:]}")
    return {"examples": int(np.load(path, mmap_mode="r").shape[0]), "peak_rss_anon_mb": peak["RssAnon"] / 1024,
            "peak_rss_mb": peak["VmHWM"] / 1024, "seconds": time.perf_counter() - start}


def _speed(work_dir, images, batch_size, repeats):
    import keras
    from PIL import Image

    import tfvae
    from tfvae import data, sources

    folder = os.path.join(work_dir, f"png-{len(images)}")
    if not os.path.isdir(folder):
        os.makedirs(folder + ".tmp", exist_ok=True)
        for i, image in enumerate(images):
            Image.fromarray(image).save(os.path.join(folder + ".tmp", f"{i:05d}.png"))
        os.replace(folder + ".tmp", folder)
    npz = os.path.join(work_dir, f"images-{len(images)}.npz")
    if not os.path.exists(npz):
        np.savez(npz + ".tmp.npz", x=images)
        os.replace(npz + ".tmp.npz", npz)
    # Every image trains: the .npz's and folder's test splits differ, so all of each source is read.
    pipelines = {
        "in_memory_arrays": data.make_dataset(images[..., None] / np.float32(255), batch_size, "dynamic", seed=0),
        "png_folder": sources.open(folder).dataset("all", batch_size, "dynamic", seed=0),
        "npz_mapped": sources.open(npz).dataset("all", batch_size, "dynamic", seed=0),
    }
    keras.utils.set_random_seed(0)
    model = tfvae.VAE(input_shape=(28, 28, 1), latent_dim=16)
    model.compile(optimizer=tfvae.training.Adam(1e-3))
    seconds = {name: [] for name in pipelines}
    for name, pipeline in pipelines.items():  # warm-up: tracing, the file cache
        model.fit(pipeline, epochs=1, verbose=0, shuffle=False)
    for _ in range(repeats):
        for name, pipeline in pipelines.items():
            start = time.perf_counter()
            model.fit(pipeline, epochs=1, verbose=0, shuffle=False)
            seconds[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(s) for name, s in seconds.items()}
    return {
        "images": len(images),
        "batch_size": batch_size,
        "examples_per_second": {name: len(images) / m for name, m in medians.items()},
        "speed_vs_in_memory": {name: medians["in_memory_arrays"] / m for name, m in medians.items()},
        "epoch_seconds": seconds,
    }


if __name__ == "__main__":
    main()
