"""Checks on what users pass in and on what training produces.

Each failure is a ValueError or TypeError that names the argument, what was expected and what was
given, raised in Python before TensorFlow sees the data: a bad input never becomes a graph stack
trace or a silent NaN.
"""

import numbers

import numpy as np
import tensorflow as tf
from tensorflow_probability import distributions as tfd

from tfvae import heads


def keras_count(value, name="batch_size"):
    """A count Keras takes or defaults, e.g. fit's `batch_size` or `steps_per_epoch`: None (Keras's
    default) or an int in [1, 2**31), the range of the int32 Keras and TensorFlow keep it in. Keras
    itself reads 0 as its default and fails deep inside on others."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 1 <= value < 2**31:
        raise ValueError(f"{name}: expected None or an integer in [1, 2**31); got {value!r}.")
    return int(value)


def _shape_error(name, event_shape, shape):
    return ValueError(
        f"{name}: expected a batch of shape (batch, {', '.join(map(str, event_shape))}); got shape {tuple(shape)}."
    )


def check_shape(shape, event_shape, name):
    """Raises unless `shape` is (batch, *event_shape); unknown (None) dimensions pass."""
    shape = tuple(shape)
    if len(shape) != len(event_shape) + 1 or any(
        d is not None and d != e for d, e in zip(shape[1:], event_shape)
    ):
        raise _shape_error(name, event_shape, shape)


def seed(value, name="seed"):
    """Returns `value` (None or an int that fits in int64), or raises naming `name`."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not -(2**63) <= value < 2**63:
        raise ValueError(f"{name}: expected None or an integer in [-2**63, 2**63); got {value!r}.")
    return int(value)


def as_array(x, name):
    """Returns `np.asarray(x)`, or raises naming `name` when x is a ragged sequence (rows of unequal length)."""
    try:
        return np.asarray(x)
    except ValueError as error:  # numpy: "setting an array element with a sequence ... inhomogeneous shape"
        raise ValueError(f"{name}: expected an array, or nested lists of equal lengths; got a ragged sequence ({error})") from None


def as_batch(x, event_shape, name="x", likelihood=None):
    """Returns x as a float32 tensor of shape (batch, *event_shape), after checking it.

    Concrete data (numpy, lists, eager tensors) is checked for its dtype, shape, finiteness and,
    given a `likelihood` head, its support. Symbolic tensors, met while tracing a graph, can only
    be checked for their static shape here; `support_assertion` checks them in the graph.
    """
    if isinstance(x, tf.Tensor) and not tf.executing_eagerly():
        check_shape(x.shape, event_shape, name)
        return tf.cast(x, tf.float32)
    if isinstance(x, tf.Tensor):
        # numpy has no bfloat16 of its own: float tensors of any precision are cast here.
        x = tf.cast(x, tf.float32) if x.dtype.is_floating else x
        x = x.numpy()
    values = as_array(x, name)
    if np.iscomplexobj(values):
        raise TypeError(f"{name}: expected real numbers; got dtype {values.dtype} (cast would drop the imaginary part).")
    if not (np.issubdtype(values.dtype, np.number) or values.dtype == bool):
        raise TypeError(f"{name}: expected numeric data that can be cast to float32; got dtype {values.dtype}.")
    check_shape(values.shape, event_shape, name)
    _check_float32_range(values, name)
    values = values.astype(np.float32, copy=False)
    check_values(values, name, likelihood)
    return tf.convert_to_tensor(values)


def _check_float32_range(values, name):
    """Finite numbers too large for float32 would become inf when cast: say so, not "NaN or inf"."""
    if values.dtype.kind == "f" and values.dtype.itemsize > 4 and values.size:
        finite = values[np.isfinite(values)]
        if finite.size and np.max(np.abs(finite)) > np.finfo(np.float32).max:
            raise ValueError(
                f"{name}: expected values that fit in float32 (|x| <= 3.4e38); got {finite[np.argmax(np.abs(finite))]:g}."
            )


def check_values(values, name, likelihood=None):
    """Raises if numpy `values` is empty, holds NaN or inf, or leaves the likelihood head's support."""
    if values.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one example; got an empty batch of shape {values.shape}.")
    finite = np.isfinite(values)
    if not finite.all():
        raise ValueError(
            f"{name}: expected finite values; got {np.size(finite) - np.count_nonzero(finite)} NaN or inf "
            f"entries (first at index {np.argwhere(~finite)[0].tolist()})."
        )
    if likelihood is not None:
        inside = np.asarray(heads.in_support(likelihood, tf.constant(values)))
        if not inside.all():
            outside = values[~inside]
            raise ValueError(
                f"{name}: the {type(likelihood).__name__} likelihood expects {heads.support(likelihood)}; "
                f"got {outside.size} values outside it, in [{outside.min():g}, {outside.max():g}] "
                f"(first at index {np.argwhere(~inside)[0].tolist()})."
            )


def support_assertion(x, likelihood, name="x"):
    """An in-graph check that every x is finite and in the likelihood head's support.

    For data only a graph sees (a tf.data.Dataset in `fit`): it fails the step with a message
    naming `name` instead of training on values with zero density (a Bernoulli log-likelihood of
    x = 255 is a large positive number, not an error).
    """
    valid = tf.reduce_all(tf.math.is_finite(x) & heads.in_support(likelihood, x))
    return tf.debugging.Assert(valid, [INVALID_DATA_MARK, f"{name}: expected finite values in the "
                                       f"{type(likelihood).__name__} likelihood's support, "
                                       f"{heads.support(likelihood)}"], summarize=1)


def finite_assertion(values, name):
    """An in-graph check, like `support_assertion`, that every value is finite (a condition in a dataset)."""
    valid = tf.reduce_all(tf.math.is_finite(values))
    return tf.debugging.Assert(valid, [INVALID_DATA_MARK, f"{name}: expected finite values"], summarize=1)


# Marks the message of `support_assertion`, so the model can turn the graph's error into a ValueError.
INVALID_DATA_MARK = "tfvae-invalid-data:"


def check_training_data(data, event_shape, name, likelihood=None, labelled=False):
    """Checks what `fit`/`evaluate`/`predict` receive and returns it as Keras should get it: an array,
    nested lists of numbers, a tuple (x,) or (x, labels), or a tf.data.Dataset of x or (x, labels).

    Keras takes no lists of numbers, and reads a list as (x, labels): a list whose numbers form one
    batch of shape (batch, *event_shape) is that batch, as an array; given `labelled` (validation_data),
    any other list or tuple keeps Keras's meaning.
    """
    if data is None:
        raise ValueError(f"{name}: expected training data (an array or a tf.data.Dataset); got None.")
    if isinstance(data, tf.data.Dataset):
        _check_dataset(data, event_shape, name)
        return data
    if isinstance(data, tf.distribute.DistributedDataset):  # each worker's own (strategy.distribute_datasets_from_function)
        return data
    rank = len(event_shape) + 1
    data = _as_batch_of_numbers(data, rank)
    if labelled and isinstance(data, (tuple, list)) and len(data) in (1, 2) and np.ndim(data[0]) > 0:
        data = (_as_batch_of_numbers(data[0], rank), *data[1:])  # validation_data=(x,) or (x, labels)
        as_batch(data[0], event_shape, name, likelihood)
    else:
        as_batch(data, event_shape, name, likelihood)
    return data


def _as_batch_of_numbers(values, rank):
    """A list of nested numbers of rank `rank` as an array; anything else (ragged, a list of arrays
    and labels, not a list) as it is."""
    if not isinstance(values, list):
        return values
    try:
        array = np.asarray(values)
    except ValueError:  # ragged
        return values
    numeric = np.issubdtype(array.dtype, np.number) or array.dtype == bool
    return array if numeric and array.ndim == rank else values


def _check_dataset(data, event_shape, name):
    if data.cardinality() == 0:
        raise ValueError(f"{name}: expected a non-empty dataset; got a dataset with no batches.")
    spec = data.element_spec
    spec = spec[0] if isinstance(spec, (tuple, list)) else spec
    if not isinstance(spec, tf.TensorSpec):
        raise TypeError(f"{name}: expected a dataset of tensors x or (x, labels); got elements {spec}.")
    check_shape(spec.shape, event_shape, name)
    if not (spec.dtype.is_floating or spec.dtype.is_integer or spec.dtype == tf.bool):
        raise TypeError(f"{name}: expected numeric data; got a dataset of dtype {spec.dtype.name}.")


def check_dataset_conditions(data, condition_shape, name):
    """Raises unless the dataset's elements are (x, condition, ...) with conditions of shape
    (batch, *condition_shape) (or one condition per element, unbatched) and a numeric dtype."""
    spec = data.element_spec
    if not isinstance(spec, (tuple, list)) or len(spec) < 2:
        raise ValueError(
            f"condition: a conditional model needs a dataset of (x, condition) pairs as {name}; "
            f"got elements {spec}."
        )
    x_spec, c_spec = spec[0], spec[1]
    if not isinstance(c_spec, tf.TensorSpec):
        raise TypeError(f"condition: expected the conditions of {name} as tensors; got {c_spec}.")
    unbatched = isinstance(x_spec, tf.TensorSpec) and c_spec.shape.rank == len(condition_shape)
    shape = (None, *c_spec.shape) if unbatched else c_spec.shape
    check_shape(shape, condition_shape, f"condition ({name})")
    if not (c_spec.dtype.is_floating or c_spec.dtype.is_integer or c_spec.dtype == tf.bool):
        raise TypeError(f"condition ({name}): expected numeric conditions; got a dataset of dtype {c_spec.dtype.name}.")


# The errors a head's own code raises on a batch it cannot answer (a dtype or shape it does not expect).
_HEAD_ERRORS = (TypeError, ValueError, tf.errors.InvalidArgumentError)


def head_distribution(make, role, batch_shape, event_shape, what):
    """`make()`, the distribution a head gives, or an error naming the head's role unless it is a TFP
    distribution with `batch_shape` and `event_shape` (the head protocol, `tfvae.heads`).

    Args:
        make: () -> the head's distribution for a batch the model built.
        role: "posterior", "likelihood" or "prior", the model's argument that took the head.
        batch_shape: the batch shape the protocol asks for, e.g. (2,) for 2 examples, (2, 2) for K = 2
            samples of z for each, () for a prior.
        event_shape: the event shape the model's shapes ask for.
        what: the model's shape the event shape comes from, for the message, e.g. "latent_dim is 8".
    """
    asked = f"a batch of shape {batch_shape}" if batch_shape else "the prior"
    try:
        distribution = make()
    except _HEAD_ERRORS as error:
        raise type(error)(f"{role}: the head failed on {asked} ({_first_line(error)}). A head must take parameters "
                          f"with any leading (sample, batch) dimensions, in float32.") from None
    if not isinstance(distribution, tfd.Distribution):
        raise TypeError(f"{role}: the head's distribution(...) must return a tfp.distributions.Distribution; "
                        f"got {type(distribution).__name__}.")
    if tuple(distribution.event_shape) != tuple(event_shape):
        raise ValueError(f"{role}: the head gives distributions with event shape {tuple(distribution.event_shape)}, "
                         f"but the model's {what}.")
    if tuple(distribution.batch_shape) != tuple(batch_shape):
        raise ValueError(f"{role}: for {asked} the head gives a distribution of batch shape "
                         f"{tuple(distribution.batch_shape)}; expected {tuple(batch_shape)}, one distribution per "
                         f"{'example (and sample of z)' if batch_shape else 'model, with no batch dimensions'}. "
                         f"Wrap per-element distributions in tfd.Independent over the event.")
    return distribution


def head_log_density(compute, role, batch_shape):
    """`compute()`, a head's log-density of a batch, or an error naming the head's role unless it is a
    float32 tensor of `batch_shape` (one number per example and sample of z)."""
    try:
        log_density = tf.convert_to_tensor(compute())
    except _HEAD_ERRORS as error:
        raise type(error)(f"{role}: the head's log-density failed on float32 values of a batch of shape {batch_shape} "
                          f"({_first_line(error)}). tfvae computes densities in float32: give the distribution "
                          f"float32 parameters.") from None
    if log_density.dtype != tf.float32 or tuple(log_density.shape) != tuple(batch_shape):
        raise ValueError(f"{role}: the head's log-density of a batch of shape {batch_shape} has shape "
                         f"{tuple(log_density.shape)} and dtype {log_density.dtype.name}; expected {batch_shape} float32.")
    return log_density


def _first_line(error):
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"


def finite_estimate(estimate, name, **inputs):
    """`estimate` [B], or a ValueError where it is NaN or infinite: the inputs were checked finite and in
    the support, so such a value is float32 overflowing in the networks on inputs far from any data
    (a condition scaled by 1e30), not a density, and is not returned as one.

    Args:
        estimate: the per-example estimate, a tensor or an array.
        name: the method that made it, for the message.
        **inputs: the checked inputs by name (None for absent ones), whose largest magnitude the message gives.
    """
    finite = np.isfinite(np.asarray(estimate))
    if finite.all():
        return estimate
    sizes = ", ".join(f"largest |{key}| = {float(np.max(np.abs(value))):.3g}"
                      for key, value in inputs.items() if value is not None and np.size(value))
    raise ValueError(f"{name}: the estimate overflowed float32 (NaN or inf) for {int((~finite).sum())} of "
                     f"{finite.size} examples, the first at row {int(np.argmin(finite))}, from finite inputs"
                     f"{f' ({sizes})' if sizes else ''}: values this far from the data the model knows overflow "
                     f"in its networks.")


def heads_follow_protocol(model):
    """Runs a batch of zeros through every part of `model` (a `tfvae.VAE`), so its weights exist, and raises
    naming the head unless each gives what the protocol asks (`head_distribution`, `head_log_density`).
    A conditional model's prior that takes no condition raises `tfvae.conditions.MissingCondition`."""
    rows = 2  # a batch of 2 tells a head's [B] from [B, 1] or a fixed size
    c = None if model.condition_shape is None else tf.zeros((rows, *model.condition_shape))
    x = tf.zeros((rows, *model.event_shape))
    latent = (model.latent_dim,), f"latent_dim is {model.latent_dim}"
    q = head_distribution(lambda: model.posterior(x, c), "posterior", (rows,), *latent)
    eps = z = tf.zeros((rows, rows, model.latent_dim))  # K = 2 samples of z for each example
    head = model.posterior_head
    head_log_density(lambda: heads.posterior_log_prob(head, q, heads.reparameterize(head, q, eps), eps),
                     "posterior", (rows, rows))
    p = head_distribution(lambda: model.likelihood(z, c), "likelihood", (rows, rows), model.event_shape,
                          f"input_shape is {model.event_shape}")
    head_log_density(lambda: heads.log_likelihood(model.likelihood_head, p, x), "likelihood", (rows, rows))
    prior = model.prior  # outside the checks: a MissingCondition is the caller's to name
    prior = head_distribution(lambda: prior, "prior", (), *latent)
    head_log_density(lambda: prior.log_prob(z), "prior", (rows, rows))
