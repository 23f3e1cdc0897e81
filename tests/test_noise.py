import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from tfvae import noise

N = 100_000


@pytest.fixture(scope="module")
def draws():
    # An odd last dimension: the second of each Box-Muller pair is dropped for the last column.
    return noise.standard_normal((N, 5), tf.constant([3, 4], tf.int64)).numpy()


def test_each_column_is_standard_normal(draws):
    assert draws.shape == (N, 5) and draws.dtype == np.float32
    for column in draws.T:
        # Mean 0 (SE 1/sqrt(N)) and variance 1 (SE sqrt(2/N)), within 4 SE; Kolmogorov-Smirnov
        # against N(0, 1) at the 0.1% level.
        assert abs(column.mean()) < 4 / np.sqrt(N)
        assert abs(column.var() - 1) < 4 * np.sqrt(2 / N)
        assert stats.kstest(column, "norm").pvalue > 1e-3


def test_columns_are_uncorrelated(draws):
    # Columns 0 and 3 are the cosine and sine halves of the same pairs: independent, so their
    # correlation is within 4 SE (1/sqrt(N)) of 0, as for any other two columns.
    correlation = np.corrcoef(draws.T)
    off_diagonal = correlation[~np.eye(5, dtype=bool)]
    assert np.max(np.abs(off_diagonal)) < 4 / np.sqrt(N)
    # Independence, not just zero correlation: the squared radius r^2 = z0^2 + z3^2 of a pair is
    # chi-squared with 2 degrees of freedom.
    assert stats.kstest(draws[:, 0] ** 2 + draws[:, 3] ** 2, "chi2", args=(2,)).pvalue > 1e-3


def test_seed_fixes_the_draw_and_tensor_shapes_work():
    seed = tf.constant([7, 0], tf.int64)
    batch = tf.constant(3)
    a = noise.standard_normal((2, batch, 4), seed)
    np.testing.assert_array_equal(a, noise.standard_normal((2, 3, 4), seed))
    assert a.shape == (2, 3, 4)
    assert not np.allclose(a, noise.standard_normal((2, 3, 4), tf.constant([8, 0], tf.int64)))
