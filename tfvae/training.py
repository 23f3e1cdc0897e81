"""How `fit` is run fast: Adam with TensorFlow's fused kernel, and host round trips fitted to the data.

The model's `train_step` says what is optimized (the bound); this module says how the optimizer and
Keras's loop run it. Each default is measured by `python benchmarks/throughput.py --levers`.
"""

import math
import re

import keras
import numpy as np
import tensorflow as tf

from tfvae import data

# Batches per host round trip in `fit`/`evaluate` (see `steps_per_execution`); lever
# "steps_per_execution=1". 100 rather than 32: +3-4% in interleaved fits of the benchmark's MLP VAE
# (200 batches an epoch), 200 no better.
STEPS_PER_EXECUTION = 100

KERAS_BATCH_SIZE = 32  # the batch_size Keras gives arrays when fit/evaluate/predict is given none
# Iterators Keras (3.15) makes of a dataset of known length each epoch of `fit`: the one the epoch reads, and
# one at its end that the next epoch replaces with its own (keras/src/trainers/epoch_iterator.py).
# tests/test_cli.py holds a resumed run to an uninterrupted one, draw for draw, by it.
KERAS_ITERATORS_PER_EPOCH = 2


@keras.saving.register_keras_serializable(package="tfvae")
class Adam(keras.optimizers.Adam):
    """`keras.optimizers.Adam` whose update of each float32 variable is TensorFlow's fused kernel.

    The same update on the same slots and step counter: m += (g - m)(1 - b1), v += (g^2 - v)(1 - b2),
    w -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps). Keras's own `update_step` is about 12
    small ops and as many passes over memory per variable, the kernel one of each (~20% less CPU per
    step of a small VAE; lever "keras_adam"). Everything around the update stays Keras's: gradient
    clipping, weight decay, EMA, loss scaling, variable constraints (applied after the update) and
    the step count. AMSGrad, sparse gradients, other dtypes and several replicas take Keras's path.
    `tfvae.VAE.compile("adam")` uses this class.

    Example:
        >>> model.compile(optimizer=tfvae.training.Adam(learning_rate=5e-4))
    """

    def apply(self, grads, trainable_variables=None):
        """Keras's `apply`, or for a plain Adam step the same update without its per-variable
        distribution machinery: `update_step` on each variable, the variables' constraints after it
        (as Keras applies them), then the step count. That machinery cost ~15-20% of `fit`'s
        throughput on the benchmark's MLP VAE with the update already fused."""
        grads = list(grads)
        variables = list(trainable_variables) if trainable_variables is not None else None
        if variables is None or not self._plain(grads, variables):
            return super().apply(grads, trainable_variables)
        if not self.built:
            self.build(variables)
        learning_rate = self.learning_rate
        for gradient, variable in zip(grads, variables):
            self.update_step(gradient, variable.value, learning_rate)
        for variable in variables:
            if variable.constraint is not None:
                variable.assign(variable.constraint(variable))
        self.iterations.assign_add(1)

    def _plain(self, grads, variables):
        """Whether the step is Adam's update alone: nothing Keras's `apply` does around it is asked for."""
        return (
            not self.amsgrad
            and not self.use_ema
            and self.weight_decay is None
            and self.clipnorm is None
            and self.clipvalue is None
            and self.global_clipnorm is None
            and self.gradient_accumulation_steps is None
            and self.loss_scale_factor is None
            and tf.distribute.get_strategy().num_replicas_in_sync == 1
            and all(g is not None and not isinstance(g, tf.IndexedSlices) for g in grads)
            and all(v.dtype == "float32" and not v.overwrite_with_gradient for v in variables)
        )

    def update_step(self, gradient, variable, learning_rate):
        if (
            self.amsgrad
            or isinstance(gradient, tf.IndexedSlices)
            or variable.dtype != tf.float32
            or tf.distribute.get_strategy().num_replicas_in_sync > 1
        ):
            return super().update_step(gradient, variable, learning_rate)
        index = self._get_variable_index(variable)
        step = tf.cast(self.iterations + 1, tf.float32)
        beta_1, beta_2 = tf.constant(self.beta_1, tf.float32), tf.constant(self.beta_2, tf.float32)
        return tf.raw_ops.ResourceApplyAdam(
            var=_handle(variable),
            m=_handle(self._momentums[index]),
            v=_handle(self._velocities[index]),
            beta1_power=tf.pow(beta_1, step),
            beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(learning_rate, tf.float32),
            beta1=beta_1,
            beta2=beta_2,
            epsilon=tf.constant(self.epsilon, tf.float32),
            grad=tf.cast(gradient, tf.float32),
        )


def _handle(variable):
    """The resource handle of a Keras variable or of the tf.Variable Keras passes to `update_step`."""
    return (variable.value if isinstance(variable, keras.Variable) else variable).handle


def default_steps_per_execution(model):
    """`STEPS_PER_EXECUTION`, or 1 under a strategy with several replicas: Keras 3.15's multi-step
    loop fails there ("You must feed a value for placeholder tensor")."""
    return STEPS_PER_EXECUTION if model.distribute_strategy.num_replicas_in_sync == 1 else 1


def fitted_steps_per_execution(largest, steps=(), data=None, batch_size=None):
    """The steps per execution to use for the step counts a call asks for or implies.

    Keras runs whole executions, so `steps_per_epoch=7` with 100 steps per execution would run
    more batches an epoch: explicit counts get a divisor of theirs. Finite data just stops early;
    its batch count gets a divisor between half of `largest` and `largest` if it has one, else
    `largest` capped at that count (the progress bar is then kept within the epoch by `Progbar`).
    """
    steps = [s for s in steps if s]
    if steps:
        return next(d for d in range(largest, 0, -1) if all(s % d == 0 for s in steps))
    batches = batches_per_epoch(data, batch_size)
    divisors = [d for d in range(largest, (largest - 1) // 2, -1) if batches and batches % d == 0]
    return divisors[0] if divisors else min(largest, batches or largest)


def is_dataset(data):
    """Whether `data` is a tf.data.Dataset, or a distributed one (each worker's, from
    `strategy.distribute_datasets_from_function`), which `fit` takes as it is."""
    return isinstance(data, (tf.data.Dataset, tf.distribute.DistributedDataset))


def batches_per_epoch(data, batch_size):
    """Batches in one pass over an array (Keras's default batch size is 32), an (x, y) pair of arrays or a
    finite dataset; else None."""
    if isinstance(data, (tuple, list)) and data:
        data = data[0]
    if is_dataset(data):
        cardinality = int(data.cardinality() if callable(data.cardinality) else data.cardinality)
        return cardinality if cardinality > 0 else None
    return math.ceil(len(data) / (batch_size or KERAS_BATCH_SIZE)) if hasattr(data, "__len__") else None


# `tfvae.callbacks.Diagnostics`'s per-dimension KLs: one key per latent dimension.
_PER_DIMENSION_KEY = re.compile(r"val_kl_\d+")


class Progbar(keras.callbacks.ProgbarLogger):
    """Keras's progress bar without the per-dimension KLs.

    `Diagnostics` logs `val_kl_0` ... `val_kl_{latent_dim-1}`; Keras prints every key of the logs, and
    50 of them would bury the epoch's losses. They stay in the logs: `History`, `CSVLogger` and
    `TensorBoard` have them.
    """

    def on_epoch_end(self, epoch, logs=None):
        shown = {key: value for key, value in (logs or {}).items() if not _PER_DIMENSION_KEY.fullmatch(key)}
        super().on_epoch_end(epoch, shown)


class StepCallbacks(keras.callbacks.CallbackList):
    """Keras's CallbackList, telling batch callbacks (the progress bar among them) the epoch's own step numbers.

    With several steps per execution Keras reports the last step of each execution, also of the
    last one that the data cut short: 100 steps per execution over 125 batches told every batch
    callback of step 199 of 125 (and the progress bar showed "200/125"). Here a step is capped at the
    epoch's last, where the number of steps is known.

    Args:
        callbacks: the callbacks, as `keras.callbacks.CallbackList` takes them.
        model: the model they watch.
        verbose: the `verbose` of the call; a progress bar is added unless it is 0.
        steps: batches per epoch of the call's data (train, evaluate or predict), or None if unknown.
        test_steps: batches of a test pass (`fit`'s validation data, or `evaluate`'s data), or None.
        epochs: the call's epochs.
        add_history: add a `keras.callbacks.History` (as `fit` does).
    """

    def __init__(self, callbacks, model, verbose, steps, test_steps=None, epochs=1, add_history=False):
        super().__init__(callbacks, add_history=add_history, add_progbar=verbose != 0, model=model, verbose=verbose,
                         epochs=epochs, steps=steps)
        self._steps = {"train": steps, "test": test_steps, "predict": steps}

    def _capped(self, mode, batch):
        steps = self._steps[mode]
        return batch if not steps else min(batch, steps - 1)

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(self._capped("train", batch), logs)

    def on_test_batch_end(self, batch, logs=None):
        super().on_test_batch_end(self._capped("test", batch), logs)

    def on_predict_batch_end(self, batch, logs=None):
        super().on_predict_batch_end(self._capped("predict", batch), logs)


def arrays_as_datasets(x, batch_size, kwargs, conditions=None):
    """`fit`'s in-memory arrays as `tfvae.data.make_dataset` pipelines, with Keras's meaning kept.

    Keras's array adapter slices and shuffles in Python-driven steps: it trained at 65-90% of the
    speed of `make_dataset`, which takes each batch as one gather along a per-epoch permutation
    (`python benchmarks/throughput.py`, "tfvae_arrays" against "tfvae"). Kept from Keras:
    `batch_size` (default 32), `shuffle` (True reshuffles every epoch; False keeps the order),
    `validation_split` (the last fraction of x, before any shuffling) and array `validation_data`,
    batched by `validation_batch_size` or `batch_size`. Labels are ignored, as by the model.

    Args:
        conditions: a conditional model's checked conditions of x, one row per example (numpy), or
            None; with them the datasets yield (x, condition) pairs, and array `validation_data` is
            (x, conditions).

    Returns:
        (x as a dataset, kwargs without what the datasets now carry); or (x, kwargs) unchanged where
        Keras's path is needed: sample weights, `steps_per_epoch`, `shuffle="batch"`, non-arrays.
    """
    if not _is_array(x) or any(kwargs.get(k) is not None for k in ("sample_weight", "steps_per_epoch")):
        return x, kwargs
    if kwargs.get("shuffle", True) not in (True, False):
        return x, kwargs
    kwargs = dict(kwargs)
    batch_size = batch_size or KERAS_BATCH_SIZE
    split = kwargs.pop("validation_split", 0.0) or 0.0
    x = np.asarray(x)
    if split and kwargs.get("validation_data") is None:
        cut = int(math.floor(len(x) * (1.0 - split)))
        if cut in (0, len(x)):
            raise ValueError(f"validation_split: {split} of {len(x)} examples leaves one of the two splits empty.")
        x, kwargs["validation_data"] = x[:cut], (x[cut:], None if conditions is None else conditions[cut:])
        conditions = None if conditions is None else conditions[:cut]
    validation, validation_conditions = kwargs.get("validation_data"), None
    if isinstance(validation, (tuple, list)) and validation and _is_array(validation[0]):
        if conditions is not None:  # (x, conditions), checked by the model
            validation_conditions = validation[1]
        validation = validation[0]
    if _is_array(validation):
        kwargs["validation_data"] = data.mark_checked(data.make_dataset(
            np.asarray(validation), kwargs.pop("validation_batch_size", None) or batch_size, shuffle=False,
            labels=validation_conditions))
    dataset = data.make_dataset(x, batch_size, shuffle=bool(kwargs.pop("shuffle", True)), labels=conditions)
    return data.mark_checked(dataset), kwargs  # fit checked the array before


def _is_array(value):
    return isinstance(value, np.ndarray) or (isinstance(value, tf.Tensor) and tf.executing_eagerly())
