"""Training under tf.distribute strategies (MirroredStrategy, MultiWorkerMirroredStrategy) as on one device.

A replica's step sees its share of the global batch. For distributed training to be single-device
training draw for draw, a replica must know where its share lies in the global batch (for the noise)
and how large the global batch is (for the loss), also when the shares are uneven (75 examples over 2
replicas are 38 + 37) or a replica's share is empty (a last batch of 1). `batch_share` says both.

Keras 3.15's own distributed loop does not run a VAE under MultiWorkerMirroredStrategy: it reduces
the step's scalar metrics with `strategy.reduce("MEAN", value, axis=0)` ("Invalid reduction dimension
0"), and before the first epoch it draws a batch from the data and reduces it across replicas to
build the model symbolically, which fails for uneven shares and tuples, and which moves a pipeline
that draws anew for every iterator (`tfvae.data.make_dataset`) on by one epoch. `step_function` and
`tfvae.VAE._maybe_symbolic_build` replace those two pieces; tests/test_distribute.py tests each Keras
internal they rely on.
"""

import json
import os

import tensorflow as tf


def batch_share(size):
    """(offset, total): where this replica's `size` examples begin in the global batch, and its size.

    Outside a strategy with several replicas, (0, size). Replica i's share follows those of replicas
    0..i-1, the order in which tf.distribute splits a global batch.

    Args:
        size: this replica's batch size, a scalar int32 tensor.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return tf.constant(0, size.dtype), size
    replicas, replica = context.num_replicas_in_sync, context.replica_id_in_sync_group
    # Every replica's size at its own index, summed: one all-reduce that every strategy has (float32
    # counts are exact far beyond any batch).
    sizes = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.one_hot(replica, replicas) * tf.cast(size, tf.float32))
    sizes = tf.cast(sizes, size.dtype)
    return tf.reduce_sum(sizes[:replica]), tf.reduce_sum(sizes)


def global_mean(values):
    """The mean of `values` over the batch (axis 0); under a strategy over the global batch, from the
    sums and counts of every replica's share (so uneven and empty shares count as their examples)."""
    count = tf.cast(tf.shape(values)[0], values.dtype)
    total = tf.reduce_sum(values, axis=0)
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        total, count = context.all_reduce(tf.distribute.ReduceOp.SUM, [total, count])
    return tf.math.divide_no_nan(total, count)


def several_replicas(model):
    return model.distribute_strategy.num_replicas_in_sync > 1


def step_function(model, step):
    """The function Keras's `fit`/`evaluate` call with each epoch's distributed iterator: one `step`
    on each replica's share of the next global batch; returns the logs.

    The logs are the model's metrics read across replicas (a Keras metric's variables are summed on
    read, so a `Mean` is the mean over every replica's examples) and the step's other outputs (what a
    KL schedule applied, the same on every replica) as replica 0 gives them. Nothing is reduced along
    an axis, as Keras's `reduce_per_replica` does for MultiWorkerMirroredStrategy.
    """
    strategy = model.distribute_strategy

    @tf.function(reduce_retracing=True)
    def one_step(iterator):
        outputs = strategy.run(step, args=(iterator.get_next(),))
        logs = {name: strategy.experimental_local_results(value)[0] for name, value in outputs.items()}
        logs.update({metric.name: metric.result() for metric in model.metrics})
        return logs

    return one_step


def cluster():
    """(workers, index) of this process in the cluster that TF_CONFIG describes; (1, 0) without one."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        return 1, 0
    try:
        config = json.loads(text)
        workers = len(config["cluster"].get("worker", [])) + len(config["cluster"].get("chief", []))
        task = config["task"]
        index = int(task["index"]) + (len(config["cluster"].get("chief", [])) if task["type"] == "worker" else 0)
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(
            "TF_CONFIG: expected JSON such as {\"cluster\": {\"worker\": [\"host1:port\", \"host2:port\"]}, "
            f"\"task\": {{\"type\": \"worker\", \"index\": 0}}}}; got {text!r} ({error})."
        ) from None
    return max(workers, 1), index


def is_chief():
    """Whether this process writes the files of a run: the only process, or the cluster's chief (the
    task of type "chief", or worker 0 when there is none), as TensorFlow's own saving conventions say."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        return True
    config = json.loads(text)
    task = config.get("task", {})
    if "chief" in config.get("cluster", {}):
        return task.get("type") == "chief"
    return task.get("type", "worker") == "worker" and int(task.get("index", 0)) == 0
