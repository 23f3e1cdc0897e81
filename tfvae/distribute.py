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
    """Whether the model trains under a strategy with more than one replica (in all workers)."""
    return model.distribute_strategy.num_replicas_in_sync > 1


def step_function(model, step):
    """The function Keras's `fit`/`evaluate` call with each epoch's distributed iterator: one `step`
    on each replica's share of the next global batch; returns the logs.

    The logs are the model's metrics read across replicas (a Keras metric's variables are summed on
    read, so a `Mean` is the mean over every replica's examples) and the step's other outputs (what a
    KL schedule applied, the same on every replica) as replica 0 gives them. Nothing is reduced along
    an axis, as Keras's `reduce_per_replica` does for MultiWorkerMirroredStrategy.

    Keras calls it once per `model.steps_per_execution` batches; it runs that many steps, one host
    call each (Keras's compiled multi-step loop fails under several replicas), and stops early at the
    end of the data. The batches are taken here, not inside the compiled step: a step whose `get_next`
    meets the end of the data may already have run on some devices (the optimizer's step count moved
    on one replica) when it fails.
    """
    strategy = model.distribute_strategy

    @tf.function(reduce_retracing=True)
    def one_step(batch):
        outputs = strategy.run(step, args=(batch,))
        logs = {name: strategy.experimental_local_results(value)[0] for name, value in outputs.items()}
        logs.update({metric.name: metric.result() for metric in model.metrics})
        return logs

    def function(iterator):
        logs = one_step(next(iterator))  # StopIteration at the end of the data ends Keras's epoch
        for _ in range(model.steps_per_execution - 1):
            try:
                batch = next(iterator)
            except StopIteration:
                break
            logs = one_step(batch)
        return logs

    return function


def cluster_strategy():
    """A MultiWorkerMirroredStrategy when TF_CONFIG names several tasks, else None.

    Made before anything else of TensorFlow runs, as the strategy requires.
    """
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver) if cluster_size(resolver) > 1 else None


def cluster_size(resolver):
    """The number of tasks, of every type, in the cluster a resolver describes."""
    return sum(len(addresses) for addresses in resolver.cluster_spec().as_dict().values())
