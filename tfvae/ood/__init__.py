"""Out-of-distribution and anomaly detection with a trained VAE: scores, conformal calibration, the detector.

    detector = tfvae.OutlierDetector(model).calibrate(x_validation)   # held-out in-distribution data
    detector.score(x)          # [N], higher = more unlike the data
    detector.p_value(x)        # [N], conformal: P(p <= a) <= a on in-distribution data
    detector.predict(x, 0.05)  # [N] bool, at most 5% of in-distribution data flagged

Raw log p(x) ranks MNIST as likelier than the Fashion-MNIST a model was trained on (Nalisnick et al.
2019); the scores here correct for that (docs/ood.md).
"""

from tfvae.ood.detector import DEFAULT_METHOD, OutlierDetector
from tfvae.ood.scores import (
    BUILT_IN, SCORES, Combined, Complexity, Evidence, InferenceGap, LogProb, Regret, Score, get, register)

__all__ = ["BUILT_IN", "DEFAULT_METHOD", "OutlierDetector", "SCORES", "Combined", "Complexity", "Evidence", "InferenceGap",
           "LogProb", "Regret", "Score", "get", "register"]
