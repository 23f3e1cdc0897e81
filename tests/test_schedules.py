"""KL schedules: the value each applies at every training step is its formula's, inside multi-step executions,
across save and load, and bad arguments are refused naming them."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfvae
from tfvae import schedule_specs, schedules
from tfvae.cli import main
from test_cli import check_error

STEPS_PER_EPOCH = 100  # = tfvae.training.STEPS_PER_EXECUTION: one compiled execution per epoch
BATCH = 4
LATENT_DIM = 3


def closed_form_kl(loc, scale):
    """KL(N(loc, scale^2) || N(0, 1)) per example and dimension."""
    return 0.5 * (loc**2 + scale**2 - 1.0) - np.log(scale)


# Each schedule's formula, written here in numpy from the papers, apart from the code under test.
def linear(t, steps, max_beta=1.0):
    return max_beta * np.minimum(1.0, t / steps)


def cyclical(t, period, ratio=0.5, max_beta=1.0):
    return max_beta * np.minimum(1.0, (t % period) / period / ratio)


def capacity(t, max_capacity, steps):
    return max_capacity * np.minimum(1.0, t / steps)


@pytest.fixture
def x(digits):
    return digits[0][: STEPS_PER_EPOCH * BATCH]


def recorded_fit(model, x, epochs):
    """Fits with tfvae's default steps per execution and records, inside the graph at every step t,
    what the schedule applied and the closed-form per-dimension KL of that step's q (batch mean).

    Returns:
        (applied: {name: [steps]}, kl: [steps, latent_dim], [(batch index, logs)] as batch callbacks saw them).
    """
    steps = epochs * STEPS_PER_EPOCH
    names = {"beta", "kl_term", "capacity"}
    applied = {name: tf.Variable(tf.fill([steps], np.nan)) for name in names}
    kl = tf.Variable(tf.fill([steps, model.latent_dim], np.nan))
    bound = model.kl_schedule.bound

    def recording(sample, objective, beta, step):
        value, values = bound(sample, objective, beta, step)
        row = tf.reshape(tf.cast(step, tf.int32), [1, 1])
        normal = sample.q.distribution
        per_dimension = 0.5 * (normal.loc**2 + normal.scale**2 - 1.0) - tf.math.log(normal.scale)
        kl.scatter_nd_update(row, tf.reduce_mean(per_dimension, axis=0)[None])
        for name, tensor in values.items():
            applied[name].scatter_nd_update(row, tf.reshape(tensor, [1]))
        return value, values

    model.kl_schedule.bound = recording
    seen_logs = []
    seen = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs=None: seen_logs.append((batch, dict(logs))))
    model.fit(x, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0, callbacks=[seen])
    assert model.steps_per_execution == STEPS_PER_EPOCH
    assert int(model.optimizer.iterations) == steps
    return {name: v.numpy() for name, v in applied.items()}, kl.numpy(), seen_logs


def test_cyclical_beta_is_the_formula_at_every_step_and_moves_within_one_execution(x):
    model = tfvae.VAE(input_shape=(64,), latent_dim=LATENT_DIM, kl_schedule=schedules.Cyclical(period=40, ratio=0.5))
    applied, _, logs = recorded_fit(model, x, epochs=2)

    t = np.arange(2 * STEPS_PER_EPOCH)
    np.testing.assert_allclose(applied["beta"], cyclical(t, 40, 0.5), rtol=1e-6, atol=1e-7)
    # Batch callbacks ran once per 100-step execution, yet beta took 21 values within each one.
    assert [batch for batch, _ in logs] == [99, 99]
    assert len(np.unique(applied["beta"][:STEPS_PER_EPOCH])) == 21
    # The logs show what the last step of each execution applied: 0.95 at t = 99, 1 at t = 199.
    assert [log["beta"] for _, log in logs] == pytest.approx([0.95, 1.0])


def test_linear_beta_multiplies_the_models_beta_at_every_step(x):
    model = tfvae.VAE(input_shape=(64,), latent_dim=LATENT_DIM, beta=2.0, kl_schedule="linear:steps=150,max_beta=0.5")
    applied, _, logs = recorded_fit(model, x, epochs=2)

    t = np.arange(2 * STEPS_PER_EPOCH)
    np.testing.assert_allclose(applied["beta"], 2.0 * linear(t, 150, 0.5), rtol=1e-6)
    assert logs[-1][1]["beta"] == pytest.approx(1.0)


def test_free_bits_term_is_the_sum_of_floored_batch_mean_kls_at_every_step(x):
    model = tfvae.VAE(input_shape=(64,), latent_dim=LATENT_DIM, kl_schedule=schedules.FreeBits(nats=0.5))
    applied, kl, _ = recorded_fit(model, x, epochs=1)

    np.testing.assert_allclose(applied["kl_term"], np.maximum(0.5, kl).sum(axis=1), rtol=1e-5)
    # The floor was binding on some dimensions at some steps and not on others: both branches were exercised.
    assert (kl < 0.5).any() and (kl > 0.5).any()


def test_capacity_term_follows_c_of_t_at_every_step(x):
    model = tfvae.VAE(input_shape=(64,), latent_dim=LATENT_DIM,
                      kl_schedule=schedules.Capacity(max_capacity=4.0, steps=120, gamma=10.0))
    applied, kl, logs = recorded_fit(model, x, epochs=2)

    t = np.arange(2 * STEPS_PER_EPOCH)
    np.testing.assert_allclose(applied["capacity"], capacity(t, 4.0, 120), rtol=1e-6)
    np.testing.assert_allclose(applied["kl_term"], 10.0 * np.abs(kl.sum(axis=1) - capacity(t, 4.0, 120)),
                               rtol=1e-4, atol=1e-4)
    assert [log["capacity"] for _, log in logs] == pytest.approx([4.0 * 99 / 120, 4.0])


def fixed_batch_terms(model, x, step):
    terms = model.bound(tf.constant(x), 1, model.objective, model.beta, step=tf.constant(step, tf.int64))
    q = model.encode(x)
    return {name: np.asarray(value) for name, value in terms.items()}, np.asarray(q.mean()), np.asarray(q.stddev())


def test_free_bits_and_capacity_terms_at_fixed_weights_are_the_closed_form(digits):
    x = digits[1][:50]
    model = tfvae.VAE(input_shape=(64,), latent_dim=LATENT_DIM, kl_schedule=schedules.FreeBits(nats=0.1))
    model.beta = 3.0
    terms, loc, scale = fixed_batch_terms(model, x, step=7)
    kl = closed_form_kl(loc, scale).mean(axis=0)
    assert terms["kl_term"] == pytest.approx(3.0 * np.maximum(0.1, kl).sum(), rel=1e-5)
    # The bound keeps the reconstruction and replaces beta * KL by the term; the logged ELBO stays the true one.
    np.testing.assert_allclose(terms["bound"], terms["reconstruction"] - terms["kl_term"], rtol=1e-6)
    np.testing.assert_allclose(terms["elbo"], terms["reconstruction"] - closed_form_kl(loc, scale).sum(axis=1),
                               rtol=1e-5)

    model = tfvae.VAE(input_shape=(64,), latent_dim=LATENT_DIM, kl_schedule="capacity:max_capacity=2,steps=100")
    for step in (0, 30, 100, 10**12):
        terms, loc, scale = fixed_batch_terms(model, x, step)
        kl = closed_form_kl(loc, scale).sum(axis=1).mean()
        assert terms["kl_term"] == pytest.approx(1000.0 * abs(kl - capacity(step, 2.0, 100)), rel=1e-4)


def test_cyclical_with_iwae_weights_the_log_weights(digits):
    x = digits[1][:20]
    model = tfvae.VAE(input_shape=(64,), latent_dim=LATENT_DIM, objective="iwae", num_samples=4,
                      kl_schedule=schedules.Cyclical(period=10), seed=1)
    terms = model.bound(tf.constant(x), 4, "iwae", 1.0, step=tf.constant(13, tf.int64))
    assert float(terms["beta"]) == pytest.approx(0.6)
    # No schedule without a step: the same noise gives the bound of beta = 0.6 directly.
    twin = tfvae.VAE(input_shape=(64,), latent_dim=LATENT_DIM, objective="iwae", num_samples=4, seed=1)
    twin.set_weights(model.get_weights())
    np.testing.assert_allclose(terms["bound"], twin.bound(tf.constant(x), 4, "iwae", 0.6)["bound"], rtol=1e-5)


@pytest.mark.parametrize("schedule", [
    schedules.Linear(steps=10, max_beta=0.5),
    schedules.Cyclical(period=7, ratio=1.0, max_beta=2.0),
    schedules.FreeBits(nats=0.25),
    schedules.Capacity(max_capacity=5, steps=9, gamma=3.0),
])
def test_a_keras_file_keeps_the_schedule(schedule, tmp_path):
    tfvae.VAE(input_shape=(8,), latent_dim=2, kl_schedule=schedule).save(tmp_path / "m.keras")

    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert type(loaded.kl_schedule) is type(schedule)
    assert loaded.kl_schedule.get_config() == schedule.get_config()


@pytest.mark.parametrize("schedule, name, last", [
    (schedules.Cyclical(period=150, ratio=1.0), "beta", 49 / 150),  # t = 199
    (schedules.Capacity(max_capacity=5, steps=400, gamma=3.0), "capacity", 5 * 199 / 400),
])
def test_a_resumed_fit_continues_the_schedule_from_the_saved_step(schedule, name, last, x, tmp_path):
    model = tfvae.VAE(input_shape=(64,), latent_dim=LATENT_DIM, kl_schedule=schedule)
    model.fit(x, batch_size=BATCH, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")

    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert int(loaded.optimizer.iterations) == STEPS_PER_EPOCH
    history = loaded.fit(x, batch_size=BATCH, epochs=1, verbose=0).history
    assert history[name] == pytest.approx([last])


def test_a_schedule_as_a_spec_string_is_the_schedule():
    assert schedules.get("cyclical:period=1000").get_config() == {"period": 1000, "ratio": 0.5, "max_beta": 1.0}
    assert schedules.get(" capacity: max_capacity=25, steps=100000 ").steps == 100000
    spec = schedules.to_spec(schedules.Capacity(max_capacity=2.5, steps=10, gamma=100.0))
    assert spec == "capacity:max_capacity=2.5,steps=10,gamma=100.0"
    assert schedules.get(spec).get_config() == {"max_capacity": 2.5, "steps": 10, "gamma": 100.0}
    assert schedules.get(None) is None
    assert tfvae.VAE(input_shape=(4,), latent_dim=2).get_config()["kl_schedule"] is None


def test_each_named_schedule_takes_its_arguments_from_the_spec_class_the_command_line_checks():
    # tfvae train refuses a malformed --kl-schedule with schedule_specs before importing TensorFlow:
    # it must accept and refuse what the schedules do.
    assert list(schedules.SCHEDULES) == list(schedule_specs.ARGUMENTS)
    for name, schedule in schedules.SCHEDULES.items():
        assert issubclass(schedule, schedule_specs.ARGUMENTS[name])
        assert "__init__" not in vars(schedule) and "get_config" not in vars(schedule)
    assert type(schedule_specs.parse("cyclical:period=10")) is schedule_specs.Cyclical


@pytest.mark.parametrize("make, message", [
    (lambda: schedules.Cyclical(period=0), "period: expected an integer >= 1; got 0"),
    (lambda: schedules.Cyclical(period=2.5), "period: expected an integer >= 1; got 2.5"),
    (lambda: schedules.Cyclical(10, ratio=0), "ratio: expected a finite number > 0; got 0"),
    (lambda: schedules.Cyclical(10, ratio=1.5), "ratio: expected a number in (0, 1]; got 1.5"),
    (lambda: schedules.Cyclical(10, max_beta=float("nan")), "max_beta: expected a finite number > 0; got nan"),
    (lambda: schedules.Linear(steps=True), "steps: expected an integer >= 1; got True"),
    (lambda: schedules.FreeBits(nats=-1), "nats: expected a finite number > 0; got -1"),
    (lambda: schedules.FreeBits(nats=float("inf")), "nats: expected a finite number > 0; got inf"),
    (lambda: schedules.Capacity(max_capacity=-1, steps=5), "max_capacity: expected a finite number >= 0; got -1"),
    (lambda: schedules.Capacity(max_capacity=1, steps=0), "steps: expected an integer >= 1; got 0"),
    (lambda: schedules.Capacity(max_capacity=1, steps=5, gamma=0), "gamma: expected a finite number > 0; got 0"),
    (lambda: schedules.get("warmup"), "kl_schedule: expected NAME or NAME:ARG=VALUE,... with NAME one of linear, "),
    (lambda: schedules.get("cyclical"), "kl_schedule: cyclical needs period (cyclical:period=...)"),
    (lambda: schedules.get("cyclical:perod=3"), "kl_schedule: cyclical takes period, ratio, max_beta as ARG=VALUE; "
                                                 "got 'perod=3'"),
    (lambda: schedules.get("cyclical:period=ten"), "kl_schedule: period: expected a number; got 'ten'"),
    (lambda: schedules.get("cyclical:period=0"), "kl_schedule: cyclical:period=0: period: expected an integer >= 1"),
    # Past int64 the optimizer's step cannot reach them, and the cast of the count wrapped to beta = -1.
    (lambda: schedules.get("linear:steps=9223372036854775808"),
     "steps: expected an integer from 1 to 9223372036854775807; got 9223372036854775808"),
    (lambda: schedules.get("cyclical:period=9223372036854775808"),
     "period: expected an integer from 1 to 9223372036854775807; got 9223372036854775808"),
    (lambda: schedules.Linear(steps=10**22), "steps: expected an integer from 1 to 9223372036854775807; got 10000"),
    (lambda: schedules.Capacity(1, steps=2**63), "steps: expected an integer from 1 to 9223372036854775807"),
    (lambda: schedules.get("linear:steps=5,steps=9"), "kl_schedule: steps is given twice in 'linear:steps=5,steps=9'"),
    (lambda: schedules.get("linear:steps=5,max_beta=1e308"),
     "max_beta: expected a number float32 can hold (at most 3.403e+38); got 1e+308"),
])
def test_bad_arguments_are_refused_naming_them(make, message):
    with pytest.raises(ValueError) as error:
        make()
    assert message in str(error.value)


def test_the_largest_step_count_trains_with_beta_rising_from_zero():
    # steps = 2**63 - 1 is accepted: beta(t) = t / steps stays in [0, 1), never the -1 of a wrapped cast.
    schedule = schedules.Linear(steps=2**63 - 1)
    np.testing.assert_allclose([schedule(0), schedule(10**6), schedule(2**62)], [0.0, 1e6 / (2**63 - 1), 0.5], rtol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    ({"objective": "iwae", "kl_schedule": "free_bits:nats=1"},
     "kl_schedule: FreeBits replaces the ELBO's KL term and needs objective='elbo'; got objective='iwae'"),
    ({"objective": "iwae", "kl_schedule": schedules.Capacity(1, 10)}, "kl_schedule: Capacity replaces"),
    ({"prior": "mixture", "kl_schedule": "free_bits:nats=1"},
     "kl_schedule: FreeBits needs a posterior and a prior that factorize over the latent dimensions"),
    ({"posterior": "full", "kl_schedule": "free_bits:nats=1"}, "got q(z|x) = MultivariateNormalTriL"),
])
def test_a_schedule_the_model_cannot_use_is_refused_when_the_model_is_built(kwargs, message):
    with pytest.raises(ValueError) as error:
        tfvae.VAE(input_shape=(8,), latent_dim=2, **kwargs)
    assert message in str(error.value)


def test_a_schedule_of_another_type_is_a_type_error():
    with pytest.raises(TypeError, match="kl_schedule: expected None, a tfvae.schedules schedule or a string"):
        tfvae.VAE(input_shape=(8,), latent_dim=2, kl_schedule=0.5)


def test_a_bad_kl_schedule_flag_is_one_line_naming_it_with_status_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # in-process: a subprocess would spend ~10 s importing TensorFlow for one line
    check_error(capsys, ["train", "--kl-schedule", "cyclical:period=0", "--out", "run"],
                "tfvae: error: --kl-schedule: cyclical:period=0: period: expected an integer >= 1; got 0.")
    assert not (tmp_path / "run").exists()


def test_the_command_line_trains_with_a_schedule_keeps_it_on_resume_and_refuses_contradictions(tmp_path, capsys,
                                                                                                monkeypatch):
    monkeypatch.chdir(tmp_path)
    train = ["train", "--dataset", "digits", "--latent-dim", "2", "--batch-size", "100", "--out", "run"]
    assert main([*train, "--epochs", "1", "--kl-schedule", "cyclical:period=20"]) == 0
    assert "KL schedule cyclical:period=20,ratio=0.5,max_beta=1.0" in capsys.readouterr().out
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["kl_schedule"] == "cyclical:period=20,ratio=0.5,max_beta=1.0"
    assert "beta" in (tmp_path / "run" / "history.csv").read_text().splitlines()[0].split(",")

    check_error(capsys, [*train, "--resume", "--kl-schedule", "linear:steps=5"],
                "--kl-schedule linear:steps=5 contradicts the run's kl_schedule")
    check_error(capsys, [*train[:-1], "new", "--kl-schedule", "free_bits:nats=1", "--objective", "iwae"],
                "--kl-schedule: FreeBits replaces the ELBO's KL term and needs objective='elbo'")
    check_error(capsys, [*train[:-1], "new", "--kl-schedule", "free_bits:nats=1", "--prior", "vamp"],
                "--kl-schedule: FreeBits needs a posterior and a prior that factorize")
    assert not (tmp_path / "new").exists()

    # The spec as config.json spells it is the same schedule, so it does not contradict the run.
    assert main([*train, "--resume", "--epochs", "2", "--kl-schedule", "cyclical:period=20,ratio=0.5"]) == 0
    model = keras.models.load_model(tmp_path / "run" / "model.keras")
    assert model.kl_schedule.get_config() == {"period": 20, "ratio": 0.5, "max_beta": 1.0}
    assert int(model.optimizer.iterations) == 2 * 15  # 1,500 training digits in batches of 100, 2 epochs


def fit_under(strategy, schedule, x):
    keras.utils.set_random_seed(7)
    with strategy.scope():
        model = tfvae.VAE(input_shape=(64,), latent_dim=LATENT_DIM, kl_schedule=schedule)
        model.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = model.fit(x, epochs=2, batch_size=40, shuffle=False, verbose=0)
    return history.history, model.get_weights()


@pytest.mark.slow
@pytest.mark.parametrize("schedule", [schedules.Cyclical(period=3), schedules.FreeBits(nats=0.5)])
def test_mirrored_strategy_applies_the_schedule_as_one_device_does(schedule, digits, mirrored):
    """Each replica reads the step; free bits floor the KL's mean over the global batch, not each replica's."""
    x = digits[0][:160]
    single_history, single_weights = fit_under(tf.distribute.get_strategy(), schedule, x)
    mirrored_history, mirrored_weights = fit_under(mirrored, schedule, x)

    assert mirrored_history.keys() == single_history.keys()
    for name, values in single_history.items():
        np.testing.assert_allclose(mirrored_history[name], values, rtol=1e-4, err_msg=name)
    for a, b in zip(single_weights, mirrored_weights):
        np.testing.assert_allclose(a, b, atol=1e-4)
