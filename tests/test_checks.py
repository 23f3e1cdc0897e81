"""Bad input gets a clear error naming the argument, the expectation and what was given."""

import numpy as np
import pytest
import tensorflow as tf

from tfvae import VAE


@pytest.fixture(scope="module")
def model():
    return VAE(input_shape=(64,), latent_dim=2)


@pytest.mark.parametrize("method", ["encode", "elbo", "log_prob", "reconstruct"])
def test_wrong_input_shape_names_the_expected_shape(model, method):
    with pytest.raises(ValueError, match=r"x: expected a batch of shape \(batch, 64\); got shape \(3, 63\)"):
        getattr(model, method)(np.zeros((3, 63), np.float32))


def test_a_single_example_without_batch_axis_is_refused(model):
    with pytest.raises(ValueError, match=r"got shape \(64,\)"):
        model.encode(np.zeros(64, np.float32))


def test_data_that_cannot_be_cast_to_float_is_a_type_error(model):
    with pytest.raises(TypeError, match="x: expected numeric data that can be cast to float32; got dtype <U1"):
        model.encode(np.full((2, 64), "a"))


def test_integer_and_boolean_data_are_cast(model):
    ones = np.ones((2, 64))
    expected = model.encode(ones.astype(np.float32)).mean().numpy()
    np.testing.assert_allclose(model.encode(ones.astype(np.int64)).mean().numpy(), expected)
    np.testing.assert_allclose(model.encode(ones.astype(bool)).mean().numpy(), expected)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused_with_their_position(model, bad):
    x = np.zeros((2, 64), np.float32)
    x[1, 5] = bad
    with pytest.raises(ValueError, match=r"x: expected finite values; got 1 NaN or inf entries \(first at index \[1, 5\]\)"):
        model.elbo(x)
    with pytest.raises(ValueError, match="x: expected finite values"):
        model.fit(x, verbose=0)


def test_bernoulli_data_outside_the_unit_interval_is_refused(model):
    x = np.full((2, 64), 255.0, np.float32)
    with pytest.raises(ValueError, match=r"x: the Bernoulli likelihood expects values in \[0, 1\].*; got 128 values outside it, in \[255, 255\]"):
        model.log_prob(x)
    with pytest.raises(ValueError, match="validation_data: the Bernoulli likelihood expects values in"):
        model.fit(np.zeros((4, 64), np.float32), validation_data=(x,), verbose=0)


def test_gaussian_likelihood_accepts_any_finite_values():
    model = VAE(input_shape=(4,), latent_dim=2, likelihood="gaussian")
    assert np.all(np.isfinite(model.elbo(np.full((2, 4), 255.0, np.float32)).numpy()))


@pytest.mark.parametrize("latent_dim", [0, -3, 2.5, "2", True])
def test_latent_dim_must_be_a_positive_integer(latent_dim):
    with pytest.raises(ValueError, match=f"latent_dim: expected an integer >= 1; got {latent_dim!r}"):
        VAE(input_shape=(4,), latent_dim=latent_dim)


@pytest.mark.parametrize("input_shape", [(), (0,), (28, -1), "784"])
def test_input_shape_must_be_positive_integers(input_shape):
    with pytest.raises(ValueError, match="input_shape: expected"):
        VAE(input_shape=input_shape, latent_dim=2)


def test_other_constructor_arguments_are_checked():
    with pytest.raises(ValueError, match=r"objective: expected one of \['elbo', 'iwae'\]; got 'vi'"):
        VAE(input_shape=(4,), objective="vi")
    with pytest.raises(ValueError, match="num_samples: expected an integer >= 1; got 0"):
        VAE(input_shape=(4,), num_samples=0)
    with pytest.raises(ValueError, match="encoder: expected None, 'mlp', 'gated_mlp', 'conv' or a keras.layers.Layer; got 'resnet'"):
        VAE(input_shape=(4,), encoder="resnet")
    with pytest.raises(ValueError, match=r"encoder: 'conv' expects images, input_shape \(height, width, channels\)"):
        VAE(input_shape=(784,), encoder="conv")


def test_bound_names_an_unknown_objective(model):
    with pytest.raises(ValueError, match=r"objective: expected one of \['elbo', 'iwae'\]; got 'iwa'"):
        model.bound(np.zeros((1, 64), np.float32), 2, objective="iwa")


@pytest.mark.parametrize("num_samples", [0, -1, 1.5])
def test_sample_counts_must_be_positive_integers(model, num_samples):
    x = np.zeros((1, 64), np.float32)
    for call in (lambda: model.log_prob(x, num_samples), lambda: model.elbo(x, num_samples), lambda: model.sample(num_samples)):
        with pytest.raises(ValueError, match="num_samples: expected an integer >= 1"):
            call()


def test_empty_data_is_refused(model):
    with pytest.raises(ValueError, match=r"x: expected at least one example; got an empty batch of shape \(0, 64\)"):
        model.fit(np.zeros((0, 64), np.float32), verbose=0)
    empty = tf.data.Dataset.from_tensor_slices(np.zeros((0, 64), np.float32)).batch(8)
    with pytest.raises(ValueError, match="x: expected a non-empty dataset; got a dataset with no batches"):
        model.fit(empty, verbose=0)
    with pytest.raises(ValueError, match="x: expected training data"):
        model.fit(None, verbose=0)


def test_dataset_of_the_wrong_shape_or_dtype_is_refused(model):
    wrong_shape = tf.data.Dataset.from_tensor_slices(np.zeros((4, 10), np.float32)).batch(2)
    with pytest.raises(ValueError, match=r"x: expected a batch of shape \(batch, 64\); got shape \(None, 10\)"):
        model.fit(wrong_shape, verbose=0)
    strings = tf.data.Dataset.from_tensor_slices(np.full((4, 64), "a")).batch(2)
    with pytest.raises(TypeError, match="x: expected numeric data; got a dataset of dtype string"):
        model.fit(strings, verbose=0)


def test_diverging_training_stops_with_a_clear_error_and_finite_weights():
    model = VAE(input_shape=(4,), latent_dim=2, likelihood="gaussian")
    # Finite data whose squared error overflows float32: the loss becomes inf.
    x = np.full((8, 4), 3e38, np.float32)
    before = model.get_weights()
    with pytest.raises(FloatingPointError, match=r"training diverged: the loss became (inf|nan) in epoch 1 \(batch 2\)"):
        model.fit(x, epochs=3, batch_size=4, verbose=0)
    for restored, original in zip(model.get_weights(), before):
        np.testing.assert_array_equal(restored, original)
    # Adam's moments were restored too: the model trains again on good data, without recompiling.
    assert all(np.all(np.isfinite(v.numpy())) for v in model.optimizer.variables)
    history = model.fit(np.ones((8, 4), np.float32), epochs=2, batch_size=4, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, r"batch_size: expected None or an integer in \[1, 2\*\*31\); got 0"),
        ({"batch_size": -5}, r"batch_size: expected None or an integer in \[1, 2\*\*31\); got -5"),
        ({"batch_size": 2.5}, r"batch_size: expected None or an integer in \[1, 2\*\*31\); got 2.5"),
        # Keras keeps the batch dimension in int32: a larger batch_size is refused, not wrapped.
        ({"batch_size": 2**31}, r"batch_size: expected None or an integer in \[1, 2\*\*31\); got 2147483648"),
        ({"epochs": 0}, "epochs: expected an integer >= 1; got 0"),
        # Keras reads 0 as "the whole epoch" and divides by validation_freq: each is refused, not trained on.
        ({"steps_per_epoch": 0}, r"steps_per_epoch: expected None or an integer in \[1, 2\*\*31\); got 0"),
        ({"validation_steps": -1}, r"validation_steps: expected None or an integer in \[1, 2\*\*31\); got -1"),
        ({"validation_batch_size": 0}, r"validation_batch_size: expected None or an integer in \[1, 2\*\*31\); got 0"),
        ({"validation_freq": 0}, "validation_freq: expected an integer >= 1; got 0"),
        ({"shuffle": "yes"}, "shuffle: expected True, False or 'batch'; got 'yes'"),
    ],
)
def test_fit_arguments_are_checked(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        model.fit(np.zeros((4, 64), np.float32), verbose=0, **kwargs)


def test_other_keras_counts_are_checked(model):
    x = np.zeros((4, 64), np.float32)
    with pytest.raises(ValueError, match=r"steps_per_execution: expected None or an integer in \[1, 2\*\*31\); got 0"):
        VAE(input_shape=(64,), latent_dim=2).compile(steps_per_execution=0)
    with pytest.raises(ValueError, match=r"steps: expected None or an integer in \[1, 2\*\*31\); got 0"):
        model.evaluate(x, steps=0, verbose=0)
    with pytest.raises(ValueError, match=r"steps: expected None or an integer in \[1, 2\*\*31\); got -2"):
        model.predict(x, steps=-2, verbose=0)


def test_a_training_step_beyond_the_step_limit_is_refused_before_it_runs_out_of_memory():
    # 10^7 samples of each of the 32 examples of Keras's default batch: 2e10 decoder outputs in one
    # step, which TensorFlow would attempt and fail with ResourceExhaustedError.
    model = VAE(input_shape=(64,), latent_dim=2, num_samples=10**7)
    with pytest.raises(ValueError, match=r"num_samples=10000000 with batch_size=32: one step without progress "
                                         r"would compute 2e\+10 decoder outputs; the limit is 2.1e\+09"):
        model.fit(np.zeros((4, 64), np.float32), verbose=0)
    # A dataset's batch is unknown before it runs: at least one example's K samples must fit.
    model = VAE(input_shape=(64,), latent_dim=2, num_samples=10**8)
    with pytest.raises(ValueError, match=r"num_samples=100000000 with batch_size=1: .* 6.4e\+09 decoder outputs"):
        model.fit(tf.data.Dataset.from_tensors(np.zeros((4, 64), np.float32)), verbose=0)
    assert not model.compiled  # refused before anything was built


@pytest.mark.parametrize("beta", [-1.0, float("inf"), float("nan"), True])
def test_beta_must_be_finite_and_non_negative(beta):
    with pytest.raises(ValueError, match="beta: expected a finite number >= 0"):
        VAE(input_shape=(4,), latent_dim=2, beta=beta)
    model = VAE(input_shape=(4,), latent_dim=2)
    with pytest.raises(ValueError, match="beta: expected a finite number >= 0"):
        model.beta = beta


@pytest.mark.parametrize("seed", [True, 2.0, "1", 2**64])
def test_seeds_must_be_integers_in_range(model, seed):
    with pytest.raises(ValueError, match=r"seed: expected None or an integer in \[-2\*\*63, 2\*\*63\)"):
        model.sample(2, seed=seed)
    with pytest.raises(ValueError, match="seed: expected None or an integer"):
        VAE(input_shape=(4,), latent_dim=2, seed=seed)


def test_complex_and_float32_overflowing_input_is_named(model):
    with pytest.raises(TypeError, match="x: expected real numbers; got dtype complex128"):
        model.elbo(np.zeros((2, 64)) + 1j)
    huge = np.zeros((2, 64))
    huge[1, 3] = 1e300
    with pytest.raises(ValueError, match=r"x: expected values that fit in float32 \(\|x\| <= 3.4e38\); got 1e\+300"):
        model.elbo(huge)


def test_a_dataset_outside_the_likelihoods_support_is_refused_in_fit(model):
    """A tf.data pipeline is only seen by the graph: the step checks it, and fit raises a ValueError."""
    grey = tf.data.Dataset.from_tensor_slices(np.full((8, 64), 255.0, np.float32)).batch(4)
    with pytest.raises(ValueError, match=r"x: expected finite values in the Bernoulli likelihood's support, values in \[0, 1\]"):
        model.fit(grey, verbose=0)
    nan = tf.data.Dataset.from_tensor_slices(np.full((8, 64), np.nan, np.float32)).batch(4)
    with pytest.raises(ValueError, match="x: expected finite values"):
        model.evaluate(nan, verbose=0)


def test_predict_checks_its_input_like_encode(model):
    x = np.zeros((3, 64), np.float32)
    assert model.predict(x, verbose=0).shape == (3, 64)
    x[1, 2] = np.nan
    with pytest.raises(ValueError, match="x: expected finite values"):
        model.predict(x, verbose=0)
    with pytest.raises(ValueError, match="x: expected at least one example"):
        model.predict(np.zeros((0, 64), np.float32), verbose=0)
    with pytest.raises(ValueError, match=r"x: expected a batch of shape \(batch, 64\)"):
        model.predict(np.zeros((3, 8)), verbose=0)


def test_nested_lists_of_numbers_are_a_batch_and_other_lists_keep_kerass_meaning():
    # Keras takes no lists of numbers; tfvae reads one as the batch it spells (x, and validation_data
    # of one example, which Keras would read as (x_val,) of the wrong shape). (x_val, labels) stays a pair.
    model = VAE(input_shape=(4,), latent_dim=2, seed=0)
    x = [[0.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 1.0]]
    history = model.fit(x, batch_size=2, epochs=1, validation_data=[x[0]], verbose=0)
    assert len(history.history["val_loss"]) == 1 and np.isfinite(history.history["val_loss"][0])
    model.fit(np.asarray(x), batch_size=2, epochs=1, validation_data=(np.asarray(x), np.zeros(2)), verbose=0)
    assert model.predict(x, verbose=0).shape == (2, 4)
    assert len(model.evaluate(x, verbose=0)) == 4
    with pytest.raises(ValueError, match=r"^x: expected an array, or nested lists of equal lengths; got a ragged"):
        model.fit([[0.0, 1.0, 1.0, 0.0], [1.0]], verbose=0)


def test_an_estimate_that_overflows_on_finite_inputs_is_refused_not_returned():
    # A condition scaled by 1e30 is finite, and the networks overflow on it: log_prob returned -inf silently.
    model = VAE(input_shape=(64,), latent_dim=2, condition_shape=(3,))
    x, c = np.zeros((4, 64), np.float32), np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
    assert np.all(np.isfinite(model.log_prob(x, 5, condition=c * 1e3)))
    for estimate in (lambda: model.log_prob(x, 5, condition=c * 1e30), lambda: model.elbo(x, condition=c * 1e30)):
        with pytest.raises(ValueError, match=r"the estimate overflowed float32 \(NaN or inf\) for 4 of 4 examples, the "
                                             r"first at row 0, from finite inputs \(largest \|x\| = 0, largest "
                                             r"\|condition\| = 1e\+30\)"):
            estimate()
