"""The trainer: how a `tfvae.VAE` takes Keras's `compile`, `fit`, `evaluate`, `predict` and `save`.

A mixin of the model, as Keras keeps its trainer (keras/src/trainers/) apart from its models. The
model says what is optimized (`train_step`: the bound); the trainer takes the user's arguments: each
call checks them once, here, builds its input once (`tfvae.training.arrays_as_datasets`), and hands
both to Keras's loop, with tfvae's defaults (`tfvae.training`) and, under several replicas, the loop
pieces of `tfvae.distribute` where Keras's fail.
"""

import contextlib
import math
import numbers
import os

import keras
import numpy as np
import tensorflow as tf

from tfvae import arguments, atomic, checks, distribute, resources, training
from tfvae import data as tfvae_data
from tfvae.callbacks import RestoreOnNaN


class Trainer:
    """Keras's trainer methods of `tfvae.VAE` (the model's class comes after this one in its bases)."""

    # Under several replicas Keras's distributed loop is replaced where it fails (see tfvae.distribute).

    def make_train_function(self, force=False):
        if not distribute.several_replicas(self):
            return super().make_train_function(force)
        if self.train_function is None or force:
            self.train_function = distribute.step_function(self, self.train_step)
        return self.train_function

    def make_test_function(self, force=False):
        if not distribute.several_replicas(self):
            return super().make_test_function(force)
        if self.test_function is None or force:
            self.test_function = distribute.step_function(self, self.test_step)
        return self.test_function

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras (3.15) builds a model made under a strategy from a batch it draws from the data and
        # reduces across replicas. This model is built when made: only the optimizer may need building,
        # which takes no data, and drawing none keeps the data's epochs where a single device has them.
        built = all(layer.built for layer in self._flatten_layers())
        compiled_built = all(part is None or part.built for part in (self._compile_metrics, self._compile_loss))
        if not (built and compiled_built):
            return super()._maybe_symbolic_build(iterator, data_batch)
        if self.optimizer is not None and not self.optimizer.built:
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)
        return None

    def compile(self, optimizer="adam", steps_per_execution=None, **kwargs):
        """Like `keras.Model.compile`; the loss is the model's own (the negative bound).

        `optimizer="adam"` is `tfvae.training.Adam` (Keras's Adam with TF's fused update).
        `steps_per_execution=None` means `tfvae.training.STEPS_PER_EXECUTION` batches per host round
        trip, not Keras's 1: the host launches one compiled loop per that many batches instead of one
        call per batch, which is much of the time of a small model's step. Batch-level callbacks then
        see every `steps_per_execution`-th batch; epoch-level ones are unaffected.
        """
        if optimizer == "adam":
            optimizer = training.Adam()
        steps_per_execution = checks.keras_count(steps_per_execution, "steps_per_execution")
        self._default_steps_per_execution = steps_per_execution is None
        if steps_per_execution is None:
            steps_per_execution = training.default_steps_per_execution(self)
        super().compile(optimizer=optimizer, steps_per_execution=steps_per_execution, **kwargs)

    def compile_from_config(self, config):
        # Keras skips compile() when loading a model that overrides it; this restores the optimizer
        # (and its state, which is loaded right after) so a loaded model can go on training.
        self.compile(**keras.saving.deserialize_keras_object(config))
        self.optimizer.build(self.trainable_variables)

    def _fit_steps_per_execution(self, steps=(), data=None, batch_size=None):
        """Fits the default steps_per_execution to the step counts a call asks for or implies;
        a `steps_per_execution` the user chose is left as it is."""
        if not getattr(self, "_default_steps_per_execution", False):
            return
        best = training.fitted_steps_per_execution(training.default_steps_per_execution(self), steps, data, batch_size)
        if best != self.steps_per_execution:
            self.steps_per_execution = best
            self.train_function = self.test_function = self.predict_function = None

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None, **kwargs):
        """Like `keras.Model.fit`; labels `y`, if any, are ignored, except by a conditional model,
        which takes them as the conditions (a dataset then yields (x, condition) pairs). Compiles with
        Adam if needed.

        In-memory arrays take `tfvae.data.make_dataset`'s pipeline (see
        `tfvae.training.arrays_as_datasets`), with Keras's `batch_size`, `shuffle` and
        `validation_split` kept (a conditional model's conditions travel with their x). A distributed
        dataset (`strategy.distribute_datasets_from_function`, each worker reading its own shard, as
        `tfvae.sources` datasets can) is taken as it is: its values are not checked batch by batch.
        """
        batch_size = checks.keras_count(batch_size)
        epochs = arguments.positive_int(epochs, "epochs")
        _check_fit_options(kwargs)
        x = self._check_data(x, "x")
        # A step decodes K samples of each example of the batch at once (a dataset's batch is not known here).
        rows = 1 if training.is_dataset(x) else batch_size or training.KERAS_BATCH_SIZE
        resources.check_step(rows * self.num_samples * math.prod(self.event_shape),
                             f"num_samples={self.num_samples} with batch_size={rows}")
        y = self._check_conditions(x, y, "condition (y)")
        if kwargs.get("validation_data") is not None:
            kwargs["validation_data"] = self._check_data(kwargs["validation_data"], "validation_data", labelled=True)
            kwargs["validation_data"] = self._check_labelled_conditions(kwargs["validation_data"], "validation_data")
        if not self.compiled:
            self.compile()
        if not training.is_dataset(x):
            conditions = None if self.condition_shape is None else y
            x, kwargs = training.arrays_as_datasets(x, batch_size, kwargs, conditions)
            if isinstance(x, tf.data.Dataset):  # the labels (ignored, or the conditions) and the batch size are in it
                y = batch_size = None
        self._fit_steps_per_execution((kwargs.get("steps_per_epoch"), kwargs.get("validation_steps")), x, batch_size)
        validation = kwargs.get("validation_data")
        callbacks = training.StepCallbacks(
            _with_defaults(callbacks, verbose), self, verbose, epochs=epochs, add_history=True,
            steps=kwargs.get("steps_per_epoch") or training.batches_per_epoch(x, batch_size),
            test_steps=kwargs.get("validation_steps") or training.batches_per_epoch(
                validation, kwargs.get("validation_batch_size") or batch_size))
        if training.is_dataset(x):
            # A dataset shuffles itself (tfvae.data.make_dataset does): Keras's default shuffle=True
            # would only warn that it is ignored.
            kwargs.setdefault("shuffle", False)
        x = self._checked_in_pipeline(x, "x")
        if isinstance(kwargs.get("validation_data"), tf.data.Dataset):
            kwargs["validation_data"] = self._checked_in_pipeline(kwargs["validation_data"], "validation_data")
        self._fitting = True  # `evaluate` is then Keras's validation pass, on data checked above
        try:
            with _data_errors():
                return super().fit(x, y, batch_size, epochs, verbose, callbacks, **kwargs)
        finally:
            self._fitting = False

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", *args, callbacks=None, **kwargs):
        """Like `keras.Model.evaluate`: the mean loss, ELBO, reconstruction and KL."""
        if getattr(self, "_fitting", False):
            return super().evaluate(x, y, batch_size, verbose, *args, callbacks=callbacks, **kwargs)
        batch_size = checks.keras_count(batch_size)
        _check_keras_counts(kwargs, ("steps",))
        x = self._check_data(x, "x")
        y = self._check_conditions(x, y, "condition (y)")
        if not self.compiled:
            self.compile()
        self._fit_steps_per_execution((kwargs.get("steps"),), x, batch_size)
        x = self._checked_in_pipeline(x, "x")
        with _data_errors():
            steps = kwargs.get("steps") or training.batches_per_epoch(x, batch_size)
            callbacks = training.StepCallbacks(_with_defaults(callbacks, verbose), self, verbose, steps, test_steps=steps)
            return super().evaluate(x, y, batch_size, verbose, *args, callbacks=callbacks, **kwargs)

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None, condition=None):
        """Like `keras.Model.predict`: the reconstruction of each x, after the same checks as `encode`.

        A conditional model takes the conditions of an array x as `condition=`, of a dataset as its
        (x, condition) pairs.
        """
        batch_size = checks.keras_count(batch_size)
        steps = checks.keras_count(steps, "steps")
        x = self._check_data(x, "x")
        if isinstance(x, tf.data.Dataset):
            if condition is not None:
                raise ValueError("condition: a dataset carries its own conditions, as (x, condition) pairs; "
                                 "got condition= as well.")
            self._check_conditions(x, None, "condition")
        else:
            condition = self.as_condition(condition, len(x))
            if condition is not None:  # Keras reads a tuple as x alone: the pairs go as a dataset, checked above
                x = tfvae_data.mark_checked(
                    tfvae_data.make_dataset(np.asarray(x), batch_size or training.KERAS_BATCH_SIZE, shuffle=False,
                                            labels=condition.numpy())
                )
                batch_size = None
        x = self._checked_in_pipeline(x, "x")
        with _data_errors():
            callbacks = training.StepCallbacks(_with_defaults(callbacks, verbose, nan_guard=False), self, verbose,
                                               steps or training.batches_per_epoch(x, batch_size))
            return super().predict(x, batch_size, verbose, steps, callbacks)

    def save(self, filepath, overwrite=True, **kwargs):
        """Like `keras.Model.save`, atomically: a save that fails part-way leaves the previous file as
        it was (or none), never a truncated one. The temporary file sits beside `filepath`.

        Under a multi-worker strategy only the chief writes (`strategy.extended.should_checkpoint`):
        the workers hold the same weights, and their writes to one path would race."""
        if not self.distribute_strategy.extended.should_checkpoint:
            return None
        if not isinstance(filepath, (str, os.PathLike)):
            return super().save(filepath, overwrite=overwrite, **kwargs)
        filepath = os.fspath(filepath)
        if os.path.exists(filepath) and not overwrite:
            if not keras.utils.io_utils.ask_to_proceed_with_overwrite(filepath):
                return None
        with atomic.atomic_path(filepath) as tmp:
            super().save(tmp, overwrite=True, **kwargs)
        return None

    def save_own_variables(self, store):
        super().save_own_variables(store)
        # Where the noise stream is: Keras saves layers' weights, not their seed generators, so a loaded
        # model (`tfvae train --resume`) would draw its first batch's noise again.
        store[_SEED_STATE] = self.seed_generator.state

    def load_own_variables(self, store):
        keys = list(store.keys())
        if _SEED_STATE in keys:  # absent from files saved before it was kept
            self.seed_generator.state.assign(store[_SEED_STATE])
        super().load_own_variables({key: store[key] for key in keys if key != _SEED_STATE})

    def _checked_in_pipeline(self, data, name):
        """A tf.data dataset whose every x is checked (finite, in the likelihood's support) as it is read,
        unless tfvae made or checked its values; anything else as it is."""
        if not isinstance(data, tf.data.Dataset) or tfvae_data.is_checked(data):
            return data

        def check(*element):  # x, or (x, labels, ...)
            valid = [checks.support_assertion(tf.cast(element[0], tf.float32), self.likelihood_head, name)]
            if self.condition_shape is not None:
                valid.append(checks.finite_assertion(tf.cast(element[1], tf.float32), f"{name}'s conditions"))
            with tf.control_dependencies(valid):
                checked = tuple(tf.identity(e) for e in element)
            return checked if len(checked) > 1 else checked[0]

        return data.map(check)

    def _check_data(self, data, name, labelled=False):
        return checks.check_training_data(data, self.event_shape, name, self.likelihood_head, labelled)

    def _check_conditions(self, x, y, name):
        """`fit`'s or `evaluate`'s y, checked as conditions for a conditional model (a dataset x must
        then yield (x, condition) pairs); for an unconditional model y as it was given, labels ignored."""
        if self.condition_shape is None:
            return y
        if training.is_dataset(x):
            checks.check_dataset_conditions(x, self.condition_shape, "x")
            return y
        if y is None:
            raise ValueError(
                f"condition: this conditional model (condition_shape={self.condition_shape}) trains on x "
                f"with its conditions: pass them as y, shape (batch, {', '.join(map(str, self.condition_shape))})."
            )
        return self.as_condition(y, len(x), name).numpy()

    def _check_labelled_conditions(self, data, name):
        """validation_data of a conditional model: (x, conditions) arrays or a dataset of such pairs, checked."""
        if self.condition_shape is None:
            return data
        if isinstance(data, tf.data.Dataset):
            checks.check_dataset_conditions(data, self.condition_shape, name)
            return data
        if not isinstance(data, (tuple, list)) or len(data) != 2:
            raise ValueError(
                f"condition: a conditional model's {name} is a pair (x, conditions) or a dataset of such pairs; "
                f"got {type(data).__name__}{'' if not isinstance(data, (tuple, list)) else f' of {len(data)}'}."
            )
        return data[0], self.as_condition(data[1], len(data[0]), f"condition ({name}[1])").numpy()


_SEED_STATE = "seed_generator_state"  # the noise stream's state, in the model's own variables of a .keras file


def _with_defaults(callbacks, verbose, nan_guard=True):
    """The user's callbacks, with tfvae's progress bar when one is shown and the NaN guard in training."""
    callbacks = list(callbacks or [])
    if verbose != 0 and not any(isinstance(c, keras.callbacks.ProgbarLogger) for c in callbacks):
        callbacks.append(training.Progbar())
    if nan_guard:
        callbacks.append(RestoreOnNaN())
    return callbacks


@contextlib.contextmanager
def _data_errors():
    """Turns the graph's invalid-data assertion (see `checks.support_assertion`) into a ValueError."""
    try:
        yield
    except tf.errors.InvalidArgumentError as error:
        if checks.INVALID_DATA_MARK not in str(error):
            raise
        # TF prints the assertion's data as "[mark] [message]" with quotes escaped.
        message = str(error).split(checks.INVALID_DATA_MARK, 1)[1].split("\n")[0]
        message = message.strip(" []").replace("\\'", "'")
        raise ValueError(message + ".") from None


def _check_fit_options(kwargs):
    """Checks the options of `fit` that Keras takes on trust: it reads a 0 count as its default,
    divides by `validation_freq`, and holds out x[floor(N (1 - validation_split)):], so a split outside
    (0, 1) would silently be another split."""
    _check_keras_counts(kwargs, ("steps_per_epoch", "validation_steps", "validation_batch_size"))
    if "validation_freq" in kwargs:
        kwargs["validation_freq"] = arguments.positive_int(kwargs["validation_freq"], "validation_freq")
    if kwargs.get("shuffle", True) not in (True, False, "batch"):
        raise ValueError(f"shuffle: expected True, False or 'batch'; got {kwargs['shuffle']!r}.")
    split = kwargs.get("validation_split")
    if split and (isinstance(split, bool) or not isinstance(split, numbers.Real) or not 0 < split < 1):
        raise ValueError(f"validation_split: expected the fraction of x to hold out, in [0, 1); got {split!r}.")


def _check_keras_counts(kwargs, names):
    """Checks (and makes ints of) the counts among `names` that the user passed to Keras in `kwargs`."""
    for name in names:
        if name in kwargs:
            kwargs[name] = checks.keras_count(kwargs[name], name)
