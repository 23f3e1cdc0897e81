"""Conformal p-values (Vovk et al.): how a score ranks among the scores of held-out in-distribution data.

For n calibration scores and a new score s of an exchangeable in-distribution example,

    p(s) = (1 + #{calibration scores >= s}) / (n + 1)

is a valid p-value: P(p(s) <= alpha) <= alpha for every alpha, so flagging p <= alpha keeps the false
positive rate at or below alpha, whatever the score's distribution. The smallest p-value n scores can
give is 1 / (n + 1): a rate alpha needs n + 1 >= 1 / alpha.

Several scores combine by Fisher's method, T = -2 sum_j log p_j, itself ranked conformally against
the calibration data's T. A calibration example's own p_j are taken against the other n - 1 (leave
one out), as a new example's are against all n.
"""

import math

import numpy as np


def p_values(calibration, scores):
    """(1 + #{calibration >= s}) / (n + 1) for each s of `scores`: float64 [N].

    Args:
        calibration: the calibration scores, [n], any order.
        scores: [N] scores to rank, higher = more anomalous.
    """
    calibration = np.sort(np.asarray(calibration, np.float64))
    at_least = len(calibration) - np.searchsorted(calibration, np.asarray(scores, np.float64), side="left")
    return (1.0 + at_least) / (len(calibration) + 1.0)


def leave_one_out_p_values(calibration):
    """Each calibration score's p-value against the other n - 1: (1 + #{j != i: s_j >= s_i}) / n."""
    calibration = np.asarray(calibration, np.float64)
    ordered = np.sort(calibration)
    at_least = len(ordered) - np.searchsorted(ordered, calibration, side="left") - 1  # not itself
    return (1.0 + at_least) / len(ordered)


def fisher(p_values_by_score):
    """Fisher's combination -2 sum_j log p_j of [N] p-values, one array per score: float64 [N]."""
    return -2.0 * np.sum([np.log(p) for p in p_values_by_score], axis=0)


def examples_needed(false_positive_rate):
    """The fewest calibration scores n whose p-values can reach `false_positive_rate`: n + 1 >= 1 / rate."""
    return max(1, math.ceil(1.0 / false_positive_rate - 1e-9) - 1)


def check_resolves(count, false_positive_rate):
    """Refuses a calibration of `count` scores too few for p-values as small as `false_positive_rate`."""
    needed = examples_needed(false_positive_rate)
    if count < needed:
        raise ValueError(
            f"false_positive_rate: {false_positive_rate:g} needs at least {needed} calibration examples "
            f"((n + 1) >= 1 / rate); the detector was calibrated on {count}. Calibrate on more in-distribution "
            f"data, or ask for a rate of at least {1.0 / (count + 1):.4g}."
        )
