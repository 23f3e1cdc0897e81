"""`OutlierDetector`: "is this input unlike my data?" from a trained VAE, with a false-positive rate that holds."""

import json
import math
import os
import zipfile

import keras
import numpy as np

from tfvae import arguments, atomic, checks, resources
from tfvae.ood import coders, conformal, scores as scores_lib

DEFAULT_METHOD = "complexity"
# What an export runs for a single score that no graph can (regret; complexity by bz2 or PNG): the best of those
# that run in one (benchmarks/ood.py), from the importance pass the score shares, so calibrating it costs little.
EXPORT_FALLBACK = "inference_gap"
DETECTOR_FILE = "tfvae_detector.json"  # the entry a saved detector adds to the model's .keras file
FORMAT = "tfvae-outlier-detector/2"  # /2: a score's learned state (a coder's counts) saved


class OutlierDetector:
    """Scores inputs by how unlike the model's data they are, and turns scores into conformal p-values.

    The default method, "complexity", is -log2 p(x) (importance sampling, K = 100) minus the bits of a
    lossless code of x: the score that measured best on binary and 8-bit images alike, the combination
    of scores included (docs/ood.md has the measurements behind the choice). For binary images its
    coder learns the images' local statistics from the calibration data, so it scores after `calibrate`.

    Args:
        model: a trained `tfvae.VAE`.
        method: a score's name ("complexity", "log_prob", "inference_gap", "regret", "combined" or one
            registered with `tfvae.ood.register`), a `tfvae.ood.Score`, or None for "complexity".
        seed: the noise of every estimate: the same x gets the same score.
        batch_size: examples per estimate.
        **options: the score's own, e.g. num_samples=300, or coder="png" for "complexity".

    Example:
        >>> detector = tfvae.OutlierDetector(model).calibrate(x_validation)
        >>> detector.predict(x_new, false_positive_rate=0.05)   # bool [N]
    """

    def __init__(self, model, method=None, seed=0, batch_size=500, **options):
        from tfvae.model import VAE

        if not isinstance(model, VAE):
            raise TypeError(f"model: expected a tfvae.VAE; got {type(model).__name__}.")
        self.model = model
        self.method = scores_lib.get(DEFAULT_METHOD if method is None else method, **options)
        self.seed = checks.seed(seed, "seed")
        if self.seed is None:
            raise ValueError("seed: expected an integer (the scores' noise); got None.")
        # One example's K samples are one step without progress; a batch is made smaller to stay one step.
        event_size, num_samples = math.prod(model.event_shape), self.method.num_samples
        resources.check_step(num_samples * event_size, "num_samples")
        batch_size = arguments.batch_size(batch_size)
        self.batch_size = resources.examples_per_step(num_samples, event_size, batch_size)
        self.calibration_scores = None
        self.fallback_calibration_scores = None  # EXPORT_FALLBACK's, for a method no graph runs

    def score(self, x, condition=None):
        """The score of each x, higher = more anomalous: float64 numpy [N]."""
        if self.method.learns(self.model) and self.calibration_scores is None:
            raise ValueError(
                f"score: the {self.method.name!r} method learns from in-distribution data; call calibrate(x_in) "
                "first (or pick a method that scores alone, e.g. 'log_prob', or complexity with coder='context')."
            )
        return np.concatenate([self.method(evidence) for evidence in self._evidence(x, condition, "x")])

    def calibrate(self, x, condition=None):
        """Scores held-out in-distribution x (not the training data) as the reference of the p-values; returns self."""
        evidence = list(self._evidence(x, condition, "x"))
        self.calibration_scores = self.method.fit(evidence)
        if self._falls_back():
            self.fallback_calibration_scores = self._fallback().method.fit(evidence)
        return self

    def p_value(self, x, condition=None):
        """Conformal p-values of x against the calibration scores: (1 + #{calibration >= s}) / (n + 1), [N]."""
        self._check_calibrated("p_value")
        return conformal.p_values(self.calibration_scores, self.score(x, condition))

    def predict(self, x, false_positive_rate=0.05, condition=None):
        """Whether each x is flagged as unlike the data: p-value <= false_positive_rate, bool [N]. On
        in-distribution data exchangeable with the calibration data, at most that share is flagged on average."""
        rate = arguments.finite_float(false_positive_rate, "false_positive_rate")
        if rate >= 1.0:
            raise ValueError(f"false_positive_rate: expected a number in (0, 1); got {false_positive_rate!r}.")
        self._check_calibrated("predict")
        conformal.check_resolves(len(self.calibration_scores), rate)
        return self.p_value(x, condition) <= rate

    def exported(self):
        """The detector `tfvae.export.save(model, dir, detector=self)` writes, calibrated from this one's scores.

        Itself if its method runs in a graph (`Score.in_graph`: a function of x and one importance-sampling
        pass); for a combination, the combination of its scores that do (regret takes gradient steps,
        complexity with a coder other than "learned" or "context" runs bz2 or PNG), ValueError when none does; for
        another single score, `EXPORT_FALLBACK`'s detector, calibrated on the same data."""
        self._check_calibrated("exported")
        method = self.method
        if not isinstance(method, scores_lib.Combined):
            if self._falls_back():
                fallback = self._fallback()
                fallback.calibration_scores = self.fallback_calibration_scores
                return fallback
            return self
        kept = [name for name, score in method.scores.items() if score.in_graph(self.model)]
        if not kept:
            raise ValueError(f"detector: none of the combined scores {list(method.scores)} runs in an exported graph.")
        if len(kept) == len(method.scores):
            return self
        # The kept scores as fitted (a learned coder's counts included), with their calibration scores.
        if len(kept) == 1:
            detector = OutlierDetector(self.model, method.scores[kept[0]], self.seed, self.batch_size)
            detector.calibration_scores = method.reference[kept[0]]
            return detector
        detector = OutlierDetector(self.model, method.name, self.seed, self.batch_size, scores=kept,
                                   num_samples=method.num_samples)
        detector.method.scores = {name: method.scores[name] for name in kept}
        detector.calibration_scores = detector.method.use_reference(method.reference)
        return detector

    def graph_outputs(self, terms, x):
        """{"score", "p_value"} [B] as TensorFlow ops (TFLite builtins) of x and its importance-sampling terms
        (`tfvae.objectives.importance_sampled`), for an exportable detector (`exported`)."""
        import tensorflow as tf

        def p_values(calibration, score):
            calibration = tf.constant(calibration, tf.float32)
            at_least = tf.reduce_sum(tf.cast(calibration[None, :] >= score[:, None], tf.float32), axis=1)
            return (1.0 + at_least) / (float(calibration.shape[0]) + 1.0)

        method = self.method
        if isinstance(method, scores_lib.Combined):
            score = tf.add_n([-2.0 * tf.math.log(p_values(method.reference[name], s.from_terms(terms, x)))
                              for name, s in method.scores.items()])
        else:
            score = method.from_terms(terms, x)
        return {"score": score, "p_value": p_values(self.calibration_scores, score)}

    def _falls_back(self):
        return not isinstance(self.method, scores_lib.Combined) and not self.method.in_graph(self.model)

    def _fallback(self):
        # With its own K (complexity's, 100 by default, shares the importance pass).
        return OutlierDetector(self.model, EXPORT_FALLBACK, self.seed, self.batch_size)

    def takes_binary_input(self):
        """Whether the scores code x as binary (`coders.BINARY`: "learned", "context", "bits"): then only 0s and 1s."""
        scores = self.method.scores.values() if isinstance(self.method, scores_lib.Combined) else [self.method]
        return any(isinstance(s, scores_lib.Complexity) and s.coder_of(self.model) in coders.BINARY for s in scores)

    def _check_calibrated(self, call):
        if self.calibration_scores is None:
            raise ValueError(f"{call}: the detector is not calibrated; call calibrate(x_in) on held-out in-distribution data first.")

    def _evidence(self, x, condition, name):
        x = self.model.as_input(x, name)
        condition = self.model.as_condition(condition, x.shape[0])
        for start in range(0, x.shape[0], self.batch_size):
            rows = slice(start, start + self.batch_size)
            yield scores_lib.Evidence(self.model, x[rows], None if condition is None else condition[rows], self.seed)

    def get_config(self):
        """The detector without its model: method, options, seed, batch size and calibration (JSON-ready)."""
        calibration = None
        if self.calibration_scores is not None:
            calibration = {"scores": self.calibration_scores.tolist()}
            if self.fallback_calibration_scores is not None:
                calibration["fallback_scores"] = self.fallback_calibration_scores.tolist()
            calibration["state"] = self.method.get_state()
        return {"format": FORMAT, "method": self.method.name, "options": self.method.get_config(), "seed": self.seed,
                "batch_size": self.batch_size, "calibration": calibration}

    @classmethod
    def from_config(cls, model, config):
        detector = cls(model, config["method"], config["seed"], config["batch_size"], **config["options"])
        calibration = config.get("calibration")
        if calibration is not None:
            detector.calibration_scores = np.asarray(calibration["scores"], np.float64)
            if "fallback_scores" in calibration:
                detector.fallback_calibration_scores = np.asarray(calibration["fallback_scores"], np.float64)
            detector.method.set_state(calibration["state"])
        return detector

    def save(self, path, overwrite=False):
        """Writes the model and the detector (calibration included) as one `.keras` file, atomically.

        `keras.models.load_model(path)` reads the model alone; `OutlierDetector.load(path)` both."""
        path = os.fspath(path)
        if not path.endswith(".keras"):
            raise ValueError(f"path: expected a file name ending in .keras; got {path!r}.")
        if os.path.exists(path) and not overwrite:
            raise FileExistsError(f"path: {path!r} exists; pass overwrite=True to replace it.")
        with atomic.atomic_path(path) as tmp:
            self.model.save(tmp)
            with zipfile.ZipFile(tmp, "a") as archive:
                archive.writestr(DETECTOR_FILE, json.dumps(self.get_config()))

    @classmethod
    def load(cls, path):
        """The detector (and its model) that `save` wrote to `path`."""
        path = os.fspath(path)
        try:
            with zipfile.ZipFile(path) as archive:
                config = json.loads(archive.read(DETECTOR_FILE)) if DETECTOR_FILE in archive.namelist() else None
        except (OSError, zipfile.BadZipFile) as error:
            raise ValueError(f"path: cannot read {path!r} as a .keras file ({error}).") from None
        if config is None:
            raise ValueError(
                f"path: {path!r} holds a model without a detector; load it with keras.models.load_model and "
                "build one with tfvae.OutlierDetector(model)."
            )
        if config.get("format") != FORMAT:
            raise ValueError(
                f"path: the detector in {path!r} is in format {config.get('format')!r}; this tfvae reads {FORMAT!r}. "
                "Load the model with keras.models.load_model and calibrate a new tfvae.OutlierDetector(model)."
            )
        return cls.from_config(keras.models.load_model(path), config)
