"""One worker of a MultiWorkerMirroredStrategy cluster for tests/test_distribute.py: reads its shard of a
streamed source one epoch as `tfvae train` shards it (`tfvae.cli.train._training_batches`), writes the
example indices it read, then trains on the same shards for an epoch.

    python sharded_worker.py OUT SOURCE   # with TF_CONFIG

Each example's first two pixels spell its index (tests/test_sources.py's fixtures).
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import distributed_worker  # noqa: E402
import tfvae  # noqa: E402
from tfvae import distribute, sources  # noqa: E402
from tfvae.cli import train  # noqa: E402

GLOBAL_BATCH = 32

if __name__ == "__main__":
    out, path = sys.argv[1], sys.argv[2]
    distributed_worker.patient_coordination(len(json.loads(os.environ["TF_CONFIG"])["cluster"]["worker"]))
    strategy = distribute.cluster_strategy()
    source = sources.open(path)
    with strategy.scope():
        model = tfvae.VAE(input_shape=source.event_shape, latent_dim=2)
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
    config = {"batch_size": GLOBAL_BATCH, "dataset": path}
    batches = train._training_batches(source, config, "dynamic", 4, None, strategy)
    grey = train._training_batches(source, config, None, 4, None, strategy)
    seen = []
    for batch in grey:  # one epoch: this worker's replica's batches
        for x in strategy.experimental_local_results(batch):
            flat = np.rint(x.numpy().reshape(len(x), -1) * 255).astype(int)
            seen += (flat[:, 0] * 256 + flat[:, 1]).tolist()
    history = model.fit(batches, epochs=1, verbose=0).history
    index = strategy.cluster_resolver.task_id
    with open(os.path.join(out, f"seen-{index}.json"), "w", encoding="utf-8") as f:
        json.dump({"seen": seen, "loss": history["loss"], "replicas": strategy.num_replicas_in_sync}, f)
