"""tf.distribute: MirroredStrategy and MultiWorkerMirroredStrategy train as one device does, draw for draw.

Multi-worker runs are real processes on localhost (`tfvae.launch`): a MultiWorkerMirroredStrategy
needs its own process. The Keras internals tfvae relies on (see `tfvae.distribute`) are tested last.
"""

import csv
import inspect
import json
import os
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import distributed_worker
import tfvae
from tfvae import launch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _tails(logs):
    """The end of each worker's log, for a failure's message."""
    return "\n".join(f"--- {p.name}\n{p.read_text()[-2500:]}" for p in sorted(logs.glob("worker-*.log")))


def _env():
    """This environment, with this tfvae first on the workers' path."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])}


@pytest.fixture(scope="module")
def one_device():
    model, history = distributed_worker.train(tf.distribute.get_strategy())
    return model.get_weights(), history


@pytest.mark.slow
def test_two_workers_train_as_one_process_with_the_same_global_batch(tmp_path, one_device):
    logs, out = tmp_path / "logs", tmp_path / "out"
    logs.mkdir()
    out.mkdir()
    workers = launch.start([sys.executable, os.path.join(HERE, "distributed_worker.py"), str(out)], 2, logs=logs,
                           env=_env())
    codes = [worker.wait(timeout=240) for worker in workers]
    assert codes == [0, 0], _tails(logs)
    tmp_path = out

    weights = [np.load(tmp_path / f"weights-{i}.npz") for i in range(2)]
    for a, b in zip(*(w.values() for w in weights)):
        np.testing.assert_array_equal(a, b)  # the workers hold one model
    single_weights, single_history = one_device
    for a, b in zip(weights[0].values(), single_weights):
        np.testing.assert_allclose(a, b, atol=1e-5)

    logs = [json.loads((tmp_path / f"history-{i}.json").read_text()) for i in range(2)]
    assert logs[0]["replicas"] == 2
    assert logs[0]["history"] == logs[1]["history"]
    assert logs[0]["history"].keys() == single_history.keys()
    for name, values in single_history.items():
        np.testing.assert_allclose(logs[0]["history"][name], values, rtol=1e-5, err_msg=name)

    # The chief alone wrote the model and the backup of the last epoch, which hold the trained weights.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "backup", "history-0.json", "history-1.json", "model.keras", "weights-0.npz", "weights-1.npz"]
    assert [p.name for p in (tmp_path / "backup").iterdir()] == ["epoch-0002.weights.h5"]
    loaded = keras.models.load_model(tmp_path / "model.keras")
    for a, b in zip(loaded.get_weights(), weights[0].values()):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def trained_mirrored(mirrored):
    return distributed_worker.train(mirrored)


@pytest.mark.slow
def test_mirrored_strategy_trains_as_one_device(trained_mirrored, one_device):
    """make_dataset's shuffles (no batch drawn before the first epoch), 38 + 37 examples per replica,
    a last batch of 25 (13 + 12) and a KL warm-up: the same numbers as one device."""
    model, history = trained_mirrored
    single_weights, single_history = one_device
    assert model.distribute_strategy.num_replicas_in_sync == 2
    assert history.keys() == single_history.keys() and history["beta"] == [0.0, 0.5]
    for name, values in single_history.items():
        np.testing.assert_allclose(history[name], values, rtol=1e-5, err_msg=name)
    for a, b in zip(model.get_weights(), single_weights):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.slow
def test_an_empty_replica_share_and_free_bits_train_as_one_device(mirrored, digits):
    """401 examples in batches of 100: the last batch, of 1, leaves the second replica nothing; the free
    bits floor the KL's mean over the global batch, whatever the shares."""
    def fit(strategy):
        keras.utils.set_random_seed(7)
        with strategy.scope():
            model = tfvae.VAE(input_shape=(64,), latent_dim=3, kl_schedule="free_bits:nats=0.5")
            model.compile(optimizer=keras.optimizers.Adam(1e-2))
        history = model.fit(tfvae.data.make_dataset(digits[0][:401], 100, seed=1), epochs=2, verbose=0).history
        return history, model.get_weights()

    (single_history, single_weights), (history, weights) = fit(tf.distribute.get_strategy()), fit(mirrored)
    assert history.keys() == single_history.keys()
    for name, values in single_history.items():
        np.testing.assert_allclose(history[name], values, rtol=1e-5, err_msg=name)
    for a, b in zip(weights, single_weights):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_a_model_trained_under_mirrored_saves_loads_and_exports(trained_mirrored, tmp_path):
    model, _ = trained_mirrored
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert loaded.optimizer.iterations.numpy() == model.optimizer.iterations.numpy() == 2 * 6
    assert float(loaded.beta) == float(model.beta) == 0.5
    x = distributed_worker.digits()[:8]
    np.testing.assert_array_equal(loaded.encode(x).mean(), model.encode(x).mean())

    manifest = tfvae.export.save(model, tmp_path / "export", tflite=False, sample_inputs=x)
    served = tf.saved_model.load(str(tmp_path / "export" / "saved_model"))
    assert manifest["parity"]["inputs"] and served.signatures


# The Keras (3.15) internals that tfvae.distribute relies on.


def test_keras_fit_builds_a_model_made_under_a_strategy_by_maybe_symbolic_build(mirrored, digits):
    """tfvae.VAE._maybe_symbolic_build replaces Keras's: fit calls it once, with the epoch iterator, under
    that name and signature; tfvae's draws no batch and builds the optimizer."""
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    assert list(inspect.signature(TensorFlowTrainer._maybe_symbolic_build).parameters) == [
        "self", "iterator", "data_batch"]
    with mirrored.scope():
        model = tfvae.VAE(input_shape=(64,), latent_dim=2)
        model.compile()
    calls = []
    original = model._maybe_symbolic_build
    model._maybe_symbolic_build = lambda **kwargs: (calls.append(kwargs), original(**kwargs))[1]
    model.fit(digits[0][:100], batch_size=50, verbose=0)
    assert len(calls) == 1 and calls[0]["iterator"] is not None
    assert model.optimizer.built


@pytest.mark.slow
def test_keras_fit_and_evaluate_call_their_step_functions_with_a_distributed_iterator(mirrored, digits):
    """Keras calls `make_train_function`/`make_test_function`, then the function they set with each
    epoch's iterator: tfvae.VAE's versions return tfvae.distribute.step_function there."""
    with mirrored.scope():
        model = tfvae.VAE(input_shape=(64,), latent_dim=2)
        model.compile()
    seen = {"train": [], "test": []}
    model.make_train_function()
    model.make_test_function()
    train_step, test_step = model.train_function, model.test_function
    model.train_function = lambda iterator: (seen["train"].append(iterator), train_step(iterator))[1]
    model.test_function = lambda iterator: (seen["test"].append(iterator), test_step(iterator))[1]
    model.fit(digits[0][:100], batch_size=50, verbose=0, validation_data=digits[1][:50])
    model.evaluate(digits[1][:100], batch_size=50, verbose=0)
    assert [len(seen["train"]), len(seen["test"])] == [2, 1 + 2]
    assert all(isinstance(i, tf.distribute.DistributedIterator) for i in seen["train"] + seen["test"])


def test_keras_metric_variables_are_summed_across_replicas_on_read(mirrored):
    """A Mean's total and count made under a strategy are per-replica and summed when read outside a
    replica: the global mean of every replica's examples, which tfvae.distribute.step_function logs."""
    with mirrored.scope():
        mean = keras.metrics.Mean()
    for variable in mean.variables:
        assert variable.value.synchronization == tf.VariableSynchronization.ON_READ
        assert variable.value.aggregation == tf.VariableAggregation.SUM

    def update(values):
        mean.update_state(values)

    data = mirrored.experimental_distribute_values_from_function(
        lambda context: tf.constant([1.0, 2.0, 3.0][: 2 if context.replica_id_in_sync_group == 0 else 1]))
    mirrored.run(update, args=(data,))
    assert float(mean.result()) == pytest.approx((1 + 2 + 1) / 3)


@pytest.mark.slow
def test_a_users_steps_per_execution_runs_every_batch_under_several_replicas(mirrored, digits):
    with mirrored.scope():
        model = tfvae.VAE(input_shape=(64,), latent_dim=2)
        model.compile(steps_per_execution=4)
    model.fit(digits[0][:500], batch_size=50, epochs=1, verbose=0)
    assert model.optimizer.iterations.numpy() == 10  # int() of a MirroredVariable fails in Keras 3.15


@pytest.mark.slow  # ~45 s; by default the chief-only writes and `--resume` are tested apart (above, test_cli.py)
def test_a_killed_worker_and_resume_finish_the_run_with_one_history_row_per_epoch(tmp_path):
    """`tfvae train` as the two workers of a cluster; worker 1 is killed after the first epoch's checkpoint
    (mid-epoch), the chief, then left waiting for it, too; both restarted with --resume finish the run."""
    run, logs = tmp_path / "run", tmp_path / "logs"
    logs.mkdir()
    train = [sys.executable, "-m", "tfvae", "train", "--dataset", "digits", "--out", str(run), "--batch-size", "100",
             "--latent-dim", "2", "--diagnostics-every", "0"]
    workers = launch.start([*train, "--epochs", "4"], 2, logs=logs, env=_env())
    first = run / "checkpoints" / "epoch-0001.keras"
    for _ in range(600):
        if first.exists() or any(worker.poll() is not None for worker in workers):
            break
        time.sleep(0.1)
    workers[1].kill()
    assert first.exists(), (logs / "worker-0.log").read_text()[-3000:]
    time.sleep(1)
    workers[0].kill()
    for worker in workers:
        worker.wait()
    assert not (run / "model.keras").exists()
    done = [int(p.name[6:10]) for p in (run / "checkpoints").glob("epoch-*.keras")]
    assert len(done) == 1 and done[0] < 4

    workers = launch.start([*train, "--resume"], 2, logs=logs, env=_env())
    assert [worker.wait(timeout=240) for worker in workers] == [0, 0], _tails(logs)
    with open(run / "history.csv", encoding="utf-8") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0", "1", "2", "3"]
    model = keras.models.load_model(run / "model.keras")
    assert int(model.optimizer.iterations) == 4 * 15  # 1,500 training digits in global batches of 100
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch-0004.keras"]


class _Killed(Exception):
    pass


class _KillAt(keras.callbacks.Callback):
    def __init__(self, epoch, batch):
        super().__init__()
        self.epoch, self.batch = epoch, batch

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self._epoch, batch) == (self.epoch, self.batch):
            raise _Killed


def test_backup_and_restore_goes_on_from_the_last_epoch_with_its_state(digits, tmp_path):
    """Also the Keras internal it relies on: `fit` starts from `model._initial_epoch` when a callback's
    `on_train_begin` sets it, as Keras's own BackupAndRestore does."""
    backup = tmp_path / "backup"
    x = digits[0][:400]

    def vae():
        model = tfvae.VAE(input_shape=(64,), latent_dim=2)
        model.compile(steps_per_execution=1)
        return model

    model, saved = vae(), {}
    record = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: saved.update(
        {epoch: (model.get_weights(), [v.numpy() for v in model.optimizer.variables])}))
    with pytest.raises(_Killed):
        model.fit(x, epochs=4, batch_size=100, verbose=0,
                  callbacks=[tfvae.callbacks.BackupAndRestore(backup), record, _KillAt(epoch=2, batch=1)])
    assert [p.name for p in backup.iterdir()] == ["epoch-0002.weights.h5"]

    model, restored = vae(), []
    check = keras.callbacks.LambdaCallback(on_train_begin=lambda logs: restored.append(
        (model.get_weights(), [v.numpy() for v in model.optimizer.variables])))
    history = model.fit(x, epochs=4, batch_size=100, verbose=0,
                        callbacks=[tfvae.callbacks.BackupAndRestore(backup), check])
    weights, slots = restored[0]
    for a, b in zip([*weights, *slots], [*saved[1][0], *saved[1][1]]):
        np.testing.assert_array_equal(a, b)
    assert slots[0] == 2 * 4  # the optimizer's step count: two epochs of 4 batches
    assert history.epoch == [2, 3] and model.optimizer.iterations.numpy() == 4 * 4
    assert not backup.exists()
    assert model.fit(x, epochs=1, batch_size=100, verbose=0).epoch == [0]  # the next fit starts afresh


def test_a_worker_other_than_the_chief_writes_nothing(digits, tmp_path, monkeypatch):
    model = tfvae.VAE(input_shape=(64,), latent_dim=2)
    monkeypatch.setattr(type(model.distribute_strategy.extended), "should_checkpoint", property(lambda self: False))
    model.fit(digits[0][:200], epochs=1, batch_size=100, verbose=0,
              callbacks=[tfvae.callbacks.BackupAndRestore(tmp_path / "backup", delete_on_end=False)])
    model.save(tmp_path / "m.keras")
    assert tfvae.export.save(model, tmp_path / "export", tflite=False) is None
    assert list(tmp_path.iterdir()) == []
    # ... but checks its arguments as the chief does, so a bad one stops every worker.
    with pytest.raises(ValueError, match=r"quantize: expected None or one of"):
        tfvae.export.save(model, tmp_path / "export", quantize="int4")
    with pytest.raises(ValueError, match=r"log_prob_samples"):
        tfvae.export.save(model, tmp_path / "export", log_prob_samples=0)


@pytest.mark.slow
def test_two_workers_read_disjoint_shards_of_a_streamed_source_that_together_are_the_epoch(tmp_path):
    """As `tfvae train` shards a streamed dataset: each worker reads its own images of the folder, every
    training image is read once an epoch by one of them, and the two train one model on their shards."""
    import test_sources

    folder = tmp_path / "images"
    for i, image in enumerate(test_sources._images(150)):
        os.makedirs(folder / f"{i % 4}", exist_ok=True)
        test_sources.Image.fromarray(image).save(folder / f"{i % 4}" / f"{i:03d}.png")
    logs, out = tmp_path / "logs", tmp_path / "out"
    logs.mkdir()
    out.mkdir()
    workers = launch.start([sys.executable, os.path.join(HERE, "sharded_worker.py"), str(out), str(folder)], 2,
                           logs=logs, env=_env())
    assert [worker.wait(timeout=240) for worker in workers] == [0, 0], _tails(logs)
    results = [json.loads((out / f"seen-{i}.json").read_text()) for i in range(2)]
    assert results[0]["replicas"] == 2
    expected = sorted(test_sources._index(tfvae.sources.open(folder).read("train")[0]))
    assert not set(results[0]["seen"]) & set(results[1]["seen"])
    assert sorted(results[0]["seen"] + results[1]["seen"]) == expected
    assert abs(len(results[0]["seen"]) - len(results[1]["seen"])) <= 1  # every other image of the epoch's order
    assert results[0]["loss"] == results[1]["loss"] and np.isfinite(results[0]["loss"]).all()
