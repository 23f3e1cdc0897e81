"""Out-of-distribution scores, higher = more anomalous, each one small class behind one protocol.

A score is a callable on an `Evidence`, the batch and what its scores read (one importance-sampling
pass of K samples, shared by every score of the batch that asks for it):

    class MyScore(tfvae.ood.Score):
        name = "my_score"
        def __call__(self, evidence):                  # -> float64 numpy [B]
            terms = evidence.importance(self.num_samples)
            return -terms["reconstruction"]

`tfvae.ood.register(MyScore)` makes it a method by name (and lets a saved detector that uses it
load). A score that is a function of x and the importance-sampling terms alone also defines
`from_terms(terms, x)` in TensorFlow ops (TFLite builtins): then it is exported too. A score that
learns from the calibration data (complexity's "learned" coder, the combination) says so in `learns`,
learns in `fit` and keeps what it learned in `get_state` for saving.
"""

import math

import numpy as np
import tensorflow as tf

from tfvae import arguments, inference, noise
from tfvae.ood import coders, conformal, learned_context


class Evidence:
    """A batch x (with its conditions) and what its scores read, each computed once on first use.

    Args:
        model: a `tfvae.VAE`.
        x: a checked batch [B, *event_shape] (`model.as_input`).
        condition: its conditions for a conditional model, else None.
        seed: an int: the noise of every estimate, so the same x gets the same score.
    """

    def __init__(self, model, x, condition, seed):
        self.model, self.x, self.condition, self.seed = model, x, condition, seed
        self._importance = {}

    def importance(self, num_samples):
        """`model.importance_sampled` with K = num_samples as float64 numpy: log_prob, reconstruction, kl [B]."""
        if num_samples not in self._importance:
            with noise.seeded(self.model.seed_generator, self.seed):
                terms = self.model.importance_sampled(self.x, tf.constant(num_samples), condition=self.condition)
            self._importance[num_samples] = {k: np.asarray(v, np.float64) for k, v in terms.items()}
        return self._importance[num_samples]


class Score:
    """The protocol of a score: `name`, `__call__(evidence) -> [B]`, and `get_config` for saving.

    Args:
        num_samples: K, the importance samples of z behind log p(x) and the ELBO.
    """

    name = None
    from_terms = None  # (terms, x) -> [B] in TensorFlow ops, for a score of x and the importance terms alone

    def __init__(self, num_samples=100):
        self.num_samples = arguments.positive_int(num_samples, "num_samples")

    def get_config(self):
        return {"num_samples": self.num_samples}

    def in_graph(self, model):
        """Whether the score of `model`'s x runs in an exported graph (it has `from_terms`)."""
        return self.from_terms is not None

    def learns(self, model):
        """Whether the score of `model`'s x learns from the calibration data (`fit`), and so scores only after it."""
        return False

    def fit(self, evidences):
        """Learns what the score learns from the calibration data (a list of `Evidence`); returns their scores [n],
        each scored as a new example would be (a score that learns leaves the example itself out)."""
        return np.concatenate([self(evidence) for evidence in evidences])

    def get_state(self):
        """What `fit` learned, JSON-ready (None: nothing), saved with the detector; `set_state` takes it back."""
        return None

    def set_state(self, state):
        pass

    def __call__(self, evidence):
        terms = evidence.importance(self.num_samples)
        return np.asarray(self.from_terms(terms, evidence.x), np.float64)


class LogProb(Score):
    """-log p(x) in nats by importance sampling: the raw density, which ranks some unlike data as likelier
    (Nalisnick et al. 2019: MNIST under a Fashion-MNIST model, AUROC 0.33), and noise as very unlikely."""

    name = "log_prob"

    @staticmethod
    def from_terms(terms, x):
        return -terms["log_prob"]


class InferenceGap(Score):
    """log p(x) - ELBO(x) in nats, both from the same K samples (the ELBO's KL analytic where TFP has it):
    how far the encoder's q(z|x) is from the posterior on x (Cremer et al. 2018's inference gap), >= 0 up
    to Monte Carlo error, as KL(q(z|x) || p(z|x)) is. An
    encoder fits the data it was trained on; on unlike x the gap grows. It measures as likelihood regret
    does (MNIST 0.94 both), with one importance pass instead of 100 gradient steps."""

    name = "inference_gap"

    @staticmethod
    def from_terms(terms, x):
        return terms["log_prob"] - (terms["reconstruction"] - terms["kl"])


class Complexity(Score):
    """Input complexity (Serra et al. 2020): -log2 p(x) - L(x) in bits, L(x) the length of a lossless code of x.

    Simple inputs get high likelihoods from every model; a lossless coder's length corrects for that.

    Args:
        num_samples: K of the log p(x) estimate.
        coder: "learned", "context", "bits", "png" or "bz2" (`tfvae.ood.coders`); None picks by the model's
            likelihood ("learned" for binary images: it counts its contexts on the calibration data, so the
            score needs `OutlierDetector.calibrate` first; "context" scores alone).
    """

    name = "complexity"

    def __init__(self, num_samples=100, coder=None):
        super().__init__(num_samples)
        self.coder = None if coder is None else coders.check(coder)
        self.counts = None  # the "learned" coder's context model (`learned_context.Counts`), set by `fit`

    def get_config(self):
        return {**super().get_config(), "coder": self.coder}

    def coder_of(self, model):
        return self.coder or coders.default_coder(model)

    def in_graph(self, model):
        return self.coder_of(model) in coders.IN_GRAPH

    def learns(self, model):
        return self.coder_of(model) == "learned"

    def fit(self, evidences):
        if not self.learns(evidences[0].model):
            return super().fit(evidences)
        self.counts = learned_context.Counts.count(coders.check_binary(e.x, "learned") for e in evidences)
        return np.concatenate([_complexity(e.importance(self.num_samples)["log_prob"],
                                           self.counts.code_lengths(e.x, leave_out=True).numpy()) for e in evidences])

    def get_state(self):
        return None if self.counts is None else {"counts": self.counts.get_config()}

    def set_state(self, state):
        if state is not None:
            self.counts = learned_context.Counts(**state["counts"])

    def from_terms(self, terms, x):  # the "learned" coder's, or the "context" coder's, in TensorFlow ops
        if self.counts is not None:
            return _complexity(terms["log_prob"], self.counts.code_lengths(x, dtype=tf.float32))
        return _complexity(terms["log_prob"], coders.context_code_lengths(x, coders.image_size(x.shape[1:])))

    def __call__(self, evidence):
        coder = self.coder_of(evidence.model)
        if coder == "learned":
            bits = self.counts.code_lengths(coders.check_binary(evidence.x, coder)).numpy()
        else:
            bits = coders.code_lengths(np.asarray(evidence.x), coder)
        return _complexity(evidence.importance(self.num_samples)["log_prob"], bits)


def _complexity(log_prob, bits):
    """-log2 p(x) - L(x), in bits."""
    return -log_prob / math.log(2.0) - bits


class Regret(Score):
    """Likelihood regret (Xiao, Yan, Amit 2020): the ELBO gained by fitting q(z|x) to x alone, in nats.

    Every example of a batch is refined at once (`model.infer`: Adam on its own posterior parameters;
    the paper refits the encoder's weights per example, which no batch shares); both ELBOs use the
    same noise, so their difference has little Monte Carlo error.

    Args:
        num_samples: K of both ELBO estimates.
        steps, learning_rate: of the refinement.
    """

    name = "regret"

    def __init__(self, num_samples=16, steps=100, learning_rate=1e-2):
        super().__init__(num_samples)
        self.steps = arguments.positive_int(steps, "steps")
        self.learning_rate = arguments.finite_float(learning_rate, "learning_rate")

    def get_config(self):
        return {**super().get_config(), "steps": self.steps, "learning_rate": self.learning_rate}

    def __call__(self, evidence):
        model, x, condition, seed = evidence.model, evidence.x, evidence.condition, evidence.seed
        refined = model.infer(x, steps=self.steps, learning_rate=self.learning_rate, seed=seed, condition=condition)
        encoder = model.encode(x, condition)
        return np.asarray(
            inference.elbo(model, x, refined, self.num_samples, seed + 1, condition)
            - inference.elbo(model, x, encoder, self.num_samples, seed + 1, condition),
            np.float64,
        )


class Combined(Score):
    """Several scores in one: Fisher's combination of their conformal p-values against calibration data.

    T(x) = -2 sum_j log p_j(x), p_j the p-value of score j against its calibration scores (`tfvae.ood.conformal`).
    Each score catches a kind of unlike data the others miss (log p(x) noise, complexity and the inference
    gap MNIST), and a p-value puts them on one scale. It ranks x against the calibration data, so it scores
    only after `OutlierDetector.calibrate`.

    Args:
        scores: the names of the scores to combine.
        num_samples: K of each score's importance sampling (one pass, shared).
    """

    name = "combined"

    def __init__(self, scores=("log_prob", "inference_gap", "complexity"), num_samples=100):
        super().__init__(num_samples)
        scores = (scores,) if isinstance(scores, str) else tuple(scores)
        if len(scores) < 2 or len(set(scores)) != len(scores) or "combined" in scores:
            raise ValueError(f"scores: expected two or more different scores to combine; got {list(scores)}.")
        self.scores = {name: get(name, num_samples=num_samples) for name in scores}
        self.reference = None  # {name: calibration scores [n]}, set by `fit`

    def get_config(self):
        return {"scores": list(self.scores), "num_samples": self.num_samples}

    def learns(self, model):
        return True

    def fit(self, evidences):
        """Fits each score on the calibration data and takes their scores as the reference; returns T [n]."""
        return self.use_reference({name: score.fit(evidences) for name, score in self.scores.items()})

    def use_reference(self, reference):
        """Takes {name: calibration scores [n]} as the reference; returns their statistics T [n], each
        calibration example's p-values against the other n - 1."""
        self.reference = {name: np.asarray(reference[name], np.float64) for name in self.scores}
        return conformal.fisher([conformal.leave_one_out_p_values(s) for s in self.reference.values()])

    def get_state(self):
        if self.reference is None:
            return None
        return {"reference": {name: s.tolist() for name, s in self.reference.items()},
                "scores": {name: score.get_state() for name, score in self.scores.items()}}

    def set_state(self, state):
        if state is not None:
            for name, score in self.scores.items():
                score.set_state(state["scores"][name])
            self.use_reference(state["reference"])

    def __call__(self, evidence):
        return conformal.fisher([conformal.p_values(self.reference[name], score(evidence))
                                 for name, score in self.scores.items()])


SCORES = {score.name: score for score in (LogProb, InferenceGap, Complexity, Regret, Combined)}
BUILT_IN = tuple(SCORES)  # tfvae's own; `register` adds a user's


def register(score_class):
    """Makes a `Score` subclass a method by its `name`: `OutlierDetector(model, method=name)`. Returns it (a decorator)."""
    if not (isinstance(score_class, type) and issubclass(score_class, Score)) or not isinstance(score_class.name, str):
        raise TypeError(f"score_class: expected a subclass of tfvae.ood.Score with a str name; got {score_class!r}.")
    SCORES[score_class.name] = score_class
    return score_class


def get(method, **options):
    """A score from its name and options (or a `Score` given as is)."""
    if isinstance(method, Score):
        if options:
            raise TypeError(f"options: a Score instance takes no options; got {sorted(options)}.")
        return method
    if method not in SCORES:
        raise ValueError(f"method: expected one of {', '.join(SCORES)} or a tfvae.ood.Score; got {method!r}.")
    try:
        return SCORES[method](**options)
    except TypeError as error:
        raise TypeError(f"options: {error}") from None
