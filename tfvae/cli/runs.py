"""Run directories, input files and atomic writes for the `tfvae` command.

A run directory (`tfvae train --out RUN`) holds:

    config.json        how it was trained: dataset, model, optimization (read back by --resume)
    model.keras        the trained model (with its optimizer state), written when training ends
    history.csv        one row per epoch (0-based `epoch`) of loss, elbo, reconstruction, kl, val_*
    samples.png        64 samples, redrawn after every epoch from the same z
    reconstructions.png  rows of test images alternating with rows of their reconstructions
    logs/              TensorBoard: scalars per epoch (train/, validation/) and the two grids (images/)
    checkpoints/       epoch-NNNN.keras, the whole training state after the last completed epoch
    .lock              held (flock) by the `tfvae train` writing the run, so a second one is refused

Every file is written to a temporary file in its directory and renamed into place, so a process
killed at any moment leaves each file either complete or as it was. The temporary file's name holds
its writer's process id: once that process is gone, the next `tfvae train` of the run removes it.
"""

import contextlib
import fcntl
import json
import math
import os
import re

import numpy as np

from tfvae.atomic import atomic_path, process_alive
from tfvae.cli import flags

CONFIG = "config.json"
MODEL = "model.keras"
HISTORY = "history.csv"
CHECKPOINTS = "checkpoints"
LOCK = ".lock"
# Binarized test sets are one fixed draw, so every evaluation of a run scores the same binary images.
TEST_BINARIZATION_SEED = 1234
_CHECKPOINT = re.compile(r"epoch-(\d+)\.keras")
_TEMPORARY = re.compile(r"\.tmp-(\d+)-.*")


def remove_stale_temporaries(directory):
    """Removes the temporary files of `atomic_path` in `directory` whose writing process is gone."""
    for name in _stale_temporaries(directory):
        with contextlib.suppress(FileNotFoundError):  # another process's cleaning got there first
            os.remove(os.path.join(directory, name))


def _stale_temporaries(directory):
    for name in os.listdir(directory):
        match = _TEMPORARY.fullmatch(name)
        if match and not process_alive(int(match.group(1))) and os.path.isfile(os.path.join(directory, name)):
            yield name


def write_text(path, text):
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def write_json(path, value):
    write_text(path, json.dumps(value, indent=2) + "\n")


def save_model(model, path):
    model.save(path)  # tfvae.VAE.save writes atomically


def read_config(run):
    """The run's config.json as a dict; a clear error if the run or its config is missing or broken."""
    check_run_directory(run)
    path = os.path.join(run, CONFIG)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{run}: not a run directory of tfvae train (no {CONFIG}).")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read the run's configuration ({e}).") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object; got {type(config).__name__}.")
    return config


def check_out(out):
    """Refuses an empty --out, which would make the current folder the run."""
    if out is not None and not out.strip():
        raise ValueError(f"--out: expected a run directory; got {out!r}.")


@contextlib.contextmanager
def locked(run):
    """Holds the run's lock while the block runs; refuses a run that another process holds.

    The lock is flock's, on RUN/.lock: the kernel releases it when its process ends, also on SIGKILL,
    so a killed training never leaves a run locked. The file stays (removing it would race with a
    process about to lock it) and says which process held the lock last.
    """
    with open(os.path.join(run, LOCK), "a+", encoding="utf-8") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip()
            by = f" (process {holder})" if holder.isdigit() else ""
            raise BlockingIOError(
                f"--out: {run} is in use by another tfvae train{by}; wait for it to end, or choose another --out."
            ) from None
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield


def is_unused(run):
    """Whether `run` may become a new run: it does not exist, or holds nothing of a run's.

    A lock file, stale temporary files and an empty checkpoints/ are what a training killed before it
    wrote config.json leaves.
    """
    if not os.path.exists(run):
        return True
    if not os.path.isdir(run):
        return False
    names = set(os.listdir(run)) - {LOCK} - set(_stale_temporaries(run))
    if os.path.isdir(os.path.join(run, CHECKPOINTS)) and not os.listdir(os.path.join(run, CHECKPOINTS)):
        names.discard(CHECKPOINTS)
    return not names


def check_run_directory(run):
    if not os.path.exists(run):
        raise FileNotFoundError(f"{run}: no such run directory.")
    if not os.path.isdir(run):
        raise NotADirectoryError(f"{run}: expected a run directory written by tfvae train; got a file.")


def check_trained(run):
    """Refuses a run directory that holds no trained model, saying how to get one."""
    check_run_directory(run)
    if not os.path.isfile(os.path.join(run, MODEL)):
        hint = f"train one with tfvae train --out {run}"
        if latest_checkpoint(run)[0]:
            hint = f"its training did not finish; finish it with tfvae train --resume --out {run}"
        raise FileNotFoundError(f"{run}: no {MODEL} in this run directory; {hint}.")


def load_model(run):
    """The run's trained model (without its optimizer), after checking the run holds one."""
    import keras

    import tfvae.model  # noqa: F401  (registers the model's classes for deserialization)

    check_trained(run)
    path = os.path.join(run, MODEL)
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as e:  # a damaged zip, a foreign .keras file, ...: the user's file, not our bug
        raise ValueError(f"{path}: cannot load the model ({brief(e)}).") from None


def brief(error, limit=300):
    """An exception as "Type: message", cut short: Keras's messages can quote whole model configs."""
    text = f"{type(error).__name__}: {' '.join(str(error).split())}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def checkpoints(run):
    """[(epochs completed, path)] of the run's checkpoints, oldest first."""
    directory = os.path.join(run, CHECKPOINTS)
    if not os.path.isdir(directory):
        return []
    matches = (_CHECKPOINT.fullmatch(name) for name in os.listdir(directory))
    return sorted((int(m.group(1)), os.path.join(directory, m.group(0))) for m in matches if m)


def latest_checkpoint(run):
    """(epochs completed, path) of the run's newest checkpoint, or (0, None) if it has none."""
    return max(checkpoints(run), default=(0, None))


def checkpoint_path(run, epochs_done):
    return os.path.join(run, CHECKPOINTS, f"epoch-{epochs_done:04d}.keras")


def evaluation_data(config, source, split="test", limit=None):
    """(x, labels or None) of the source's split as the run's model is scored on them: one fixed binary
    draw if it was trained binarized (each example's own, for a streamed source; see tfvae.sources)."""
    binarized = config.get("binarization") in ("dynamic", "static")
    return source.read(split, limit, "static" if binarized else None, TEST_BINARIZATION_SEED)


def as_evaluated(config, x):
    """Images x as the run's model is scored on them: one fixed binary draw if it was trained binarized."""
    from tfvae import data

    if config.get("binarization") in ("dynamic", "static"):
        x = data.binarize_static(x, seed=TEST_BINARIZATION_SEED)
    return x


def check_dataset(name, flag="--dataset"):
    """Refuses a --dataset that names no source (tfvae.sources.kind_of); returns its kind."""
    from tfvae import sources

    try:
        return sources.kind_of(name)
    except (ValueError, FileNotFoundError) as e:
        raise type(e)(f"{flag}: {e}") from None


# The source options of `tfvae train`, as the library names them -> the flags.
SOURCE_FLAGS = {"image_size": "--image-size", "test": "--test-dataset", "skip_bad_files": "--skip-bad-files",
                "name_or_path": "--dataset"}


def open_source(config, name=None):
    """The run's data as a `tfvae.sources` source, opened as its config.json says (image size, test
    split, bad files); or the source `name` (evaluate --dataset), opened with the run's image size."""
    from tfvae import sources

    own = name is None or name == config.get("dataset")
    name = config["dataset"] if name is None else name
    images = check_dataset(name) in ("images", "tfrecord")
    if config.get("test_dataset") is not None:
        check_dataset(config["test_dataset"], "--test-dataset")
    with flags.named(SOURCE_FLAGS):
        return sources.open(name, image_size=config.get("image_size") if own or images else None,
                            test=config.get("test_dataset") if own else None,
                            skip_bad_files=bool(config.get("skip_bad_files")), data_dir=config.get("data_dir"))


def read_input(path, event_shape):
    """Reads DATA for a model whose x has shape `event_shape`.

    Args:
        path: a .npy file, an .npz file (its only array, or x / x_test / images / arr_0, with labels
            from y / y_test / labels), a .csv table, TFRecord files or a folder of images (with labels from
            its subfolders), whose images are converted to the model's channels (grey or RGB), resized to
            its height and width and scaled to [0, 1] (see tfvae.sources).
        event_shape: the model's input shape, e.g. (28, 28, 1).

    Returns:
        (x float32 of shape (N, *event_shape), labels or None, the examples' names or None).
    """
    from tfvae import sources

    path = os.fspath(path)
    kind = check_input(path)
    if kind in ("images", "tfrecord"):
        height, width, channels = _image_shape(event_shape, path)
        with flags.named(SOURCE_FLAGS):
            source = sources.open(path, image_size=(height, width), channels=channels)
        x, labels = source.read("all")
        return x.reshape(len(x), *event_shape), labels, source.names("all")
    if kind == "csv":
        x, labels = sources.open(path).read("all")
        return as_model_input(x, event_shape, path), labels, None
    labels = None
    try:
        if path.endswith(".npy"):
            x = np.load(path, allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
            x, labels = _pick_arrays(arrays)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read it as a numpy file ({e}).") from None
    return as_model_input(x, event_shape, path), labels, None


def check_input(path, flag="--input"):
    """Refuses an --input that names no file or folder of data; returns its kind (tfvae.sources.KINDS)."""
    kind = check_dataset(path, flag)
    if kind == "bundled":
        raise ValueError(f"{flag}: expected a file or folder of data; got the dataset name {path!r} (a folder of "
                         f"that name would need ./{path}).")
    return kind


def _image_shape(event_shape, path):
    """(height, width, channels) of the images a model of this event shape takes."""
    side = math.isqrt(event_shape[0])
    if len(event_shape) == 3 and event_shape[-1] in (1, 3):
        return tuple(event_shape)
    if len(event_shape) == 2:
        return (*event_shape, 1)
    if len(event_shape) == 1 and side * side == event_shape[0]:  # flattened square grey images, e.g. (784,)
        return side, side, 1
    raise ValueError(f"--input: this model takes x of shape {tuple(event_shape)}, not images; give a .npy, .npz "
                     f"or .csv file, not {path}.")


def _pick_arrays(arrays):
    if len(arrays) == 1:
        return next(iter(arrays.values())), None
    for x_key, y_keys in (("x", ("y", "labels")), ("x_test", ("y_test",)), ("images", ("labels",)), ("arr_0", ())):
        if x_key in arrays:
            labels = next((arrays[k] for k in y_keys if k in arrays), None)
            if labels is not None:
                labels = np.asarray(labels).reshape(-1)
                if len(labels) != len(arrays[x_key]):
                    raise ValueError(f"expected one label per image of {x_key}; got {len(labels)} labels")
            return arrays[x_key], labels
    raise ValueError(f"expected a single array, or one named x, x_test, images or arr_0; got {sorted(arrays)}")


def as_model_input(x, event_shape, source):
    """x as float32 (N, *event_shape): 8-bit pixels are divided by 255, (N, H, W) gets its channel,
    and flat rows (N, D) are reshaped when D matches. Complex numbers, NaN, inf and values beyond
    float32's range are refused, naming `source`."""
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool) or np.issubdtype(x.dtype, np.complexfloating):
        raise TypeError(f"{source}: expected numeric images; got dtype {x.dtype}.")
    if np.issubdtype(x.dtype, np.integer):
        if x.size and (x.min() < 0 or x.max() > 255):
            raise ValueError(f"{source}: expected integer pixels in 0..255; got {x.min()}..{x.max()}.")
        x = x / 255.0
    event_shape = tuple(event_shape)
    size = int(np.prod(event_shape))
    if x.ndim >= 2 and x.shape[1:] != event_shape and int(np.prod(x.shape[1:])) == size:
        if x.ndim == 2 or len(event_shape) == 1 or x.shape[1:] == event_shape[:-1]:
            x = x.reshape(len(x), *event_shape)
    if x.ndim < 2 or x.shape[1:] != event_shape:
        raise ValueError(
            f"{source}: expected images of shape (N, {', '.join(map(str, event_shape))}) for this model; "
            f"got shape {x.shape}."
        )
    if len(x) == 0:
        raise ValueError(f"{source}: expected at least one image; got none.")
    if not np.isfinite(x).all():
        raise ValueError(f"{source}: expected finite values; got {int((~np.isfinite(x)).sum())} NaN or inf.")
    # Checked before the cast, which would turn them into inf.
    too_large = np.abs(x) > np.finfo(np.float32).max
    if too_large.any():
        raise ValueError(f"{source}: expected values within float32's range of ±{np.finfo(np.float32).max:.3g}; "
                         f"got {int(too_large.sum())} too large, e.g. {x[too_large].flat[0]:g}.")
    return x.astype(np.float32)


def output_path(path, suffixes, flag="-o"):
    """Checks an output's suffix and creates its folder; returns the path.

    A run's own records (config.json, model.keras, history.csv) are never an output.
    """
    path = os.fspath(path)
    if not path.lower().endswith(suffixes):
        raise ValueError(f"{flag}: expected a file ending in {' or '.join(suffixes)}; got {path!r}.")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{flag}: {path!r} is a folder; give a file name.")
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.basename(path) in (CONFIG, MODEL, HISTORY) and os.path.isfile(os.path.join(directory, CONFIG)):
        raise FileExistsError(f"{flag}: {path} is a file of the run in {directory}; choose another name.")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return path
