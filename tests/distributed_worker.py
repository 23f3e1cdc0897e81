"""One process's training for tests/test_distribute.py: a worker of a MultiWorkerMirroredStrategy
cluster when run with TF_CONFIG (`python distributed_worker.py OUT`), or imported for the
single-process run it is compared with.

The run covers what can make distributed training drift from one device: 75 examples per global
batch (38 + 37 over two replicas), a partial last batch (400 = 5 * 75 + 25), `make_dataset`'s
per-epoch shuffles, and a KL warm-up callback that sets beta (a mirrored variable) every epoch.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfvae  # noqa: E402

BATCH_SIZE = 75
EPOCHS = 2


def digits():
    """The first 400 of the `digits` fixture's images (tests/conftest.py)."""
    from sklearn.datasets import load_digits

    return (load_digits().data[:400] / 16.0 > 0.5).astype(np.float32)


def train(strategy, backup_dir=None):
    """The model and its history after `EPOCHS` epochs under `strategy` (backed up in `backup_dir`)."""
    keras.utils.set_random_seed(7)
    with strategy.scope():
        model = tfvae.VAE(input_shape=(64,), latent_dim=3)
        model.compile(optimizer=keras.optimizers.Adam(1e-2))
    data = tfvae.data.make_dataset(digits(), BATCH_SIZE, seed=3)
    callbacks = [tfvae.callbacks.KLWarmup(epochs=2)]
    if backup_dir is not None:
        callbacks.append(tfvae.callbacks.BackupAndRestore(backup_dir, delete_on_end=False))
    history = model.fit(data, epochs=EPOCHS, verbose=0, callbacks=callbacks).history
    held_out = tfvae.data.make_dataset(digits()[:150], BATCH_SIZE, shuffle=False)  # 75 + 75: 38 + 37 per replica
    history.update({f"evaluate_{name}": value for name, value in model.evaluate(held_out, verbose=0, return_dict=True).items()})
    history["reconstruction_of_first"] = model.predict(held_out, verbose=0)[0].tolist()
    return model, history


def patient_coordination(workers):
    """The coordination service MultiWorkerMirroredStrategy would configure (TF 2.21), with a heartbeat
    timeout of 2 minutes instead of 10 s: on a test machine loaded by other jobs a worker can miss 10 s
    of heartbeats, and its peers then abort the run as if it had died."""
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.eager import context

    context.context().configure_coordination_service(
        service_type="standalone", service_leader="/job:worker/replica:0/task:0", heartbeat_timeout_in_ms=120_000,
        coordinated_jobs=[coordination_config_pb2.CoordinatedJob(name="worker", num_tasks=workers)])


if __name__ == "__main__":
    out = sys.argv[1]
    patient_coordination(len(json.loads(os.environ["TF_CONFIG"])["cluster"]["worker"]))
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    index = strategy.cluster_resolver.task_id
    model, history = train(strategy, os.path.join(out, "backup"))
    model.save(os.path.join(out, "model.keras"))  # the chief's alone
    np.savez(os.path.join(out, f"weights-{index}.npz"), *model.get_weights())
    with open(os.path.join(out, f"history-{index}.json"), "w", encoding="utf-8") as f:
        json.dump({"history": history, "replicas": strategy.num_replicas_in_sync}, f)
