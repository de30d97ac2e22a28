"""The alternatives fastcurv is compared with: numpy/scipy two-pass products and scikit-learn.

Every baseline computes exactly fastcurv's objective (mean loss + (λ/2)‖coef‖², intercept not
penalized) and returns results in fastcurv's parameter layout, so the benchmarks can check that
they agree before timing them. Per-sample curvature weights are computed once per θ (outside
the timed region), as fastcurv caches them: only the products are timed.
"""

import numpy as np
import scipy.sparse as sp
from scipy.special import expit

N_THREADS = 2


# ---------------------------------------------------------------- binary logistic
def logistic_hess_weights(X, theta):
    """``a_i ℓ''(η_i) = σ(1 − σ) / n`` at ``theta`` (float64)."""
    eta = np.asarray(X @ theta[:-1]).astype(np.float64) + theta[-1]
    s = expit(eta)
    return s * (1.0 - s) / X.shape[0]


def twopass_logistic_hvp(X, hw, lam):
    """numpy/scipy two-pass HVP: ``[X.T @ (h * (X @ v_w + v_b)) + λ v_w, Σ h (X v_w + v_b)]``."""
    d = X.shape[1]

    def hvp(v):
        t = X @ v[:d]
        t += v[d]
        t *= hw
        out = np.empty(d + 1, dtype=np.result_type(X.dtype, hw.dtype))
        out[:d] = X.T @ t
        out[:d] += lam * v[:d]
        out[d] = t.sum()
        return out

    return hvp


def twopass_logistic_value_grad(X, y, lam):
    """numpy/scipy value+grad from two products: ``η = X θ`` then ``X.T r``."""
    n, d = X.shape

    def value_grad(theta):
        w = theta[:d]
        eta = X @ w
        eta += theta[d]
        loss = np.logaddexp(0.0, eta)
        loss -= y * eta
        r = expit(eta)
        r -= y
        r /= n
        g = np.empty(d + 1)
        g[:d] = X.T @ r
        g[:d] += lam * w
        g[d] = r.sum()
        return float(loss.mean()) + 0.5 * lam * float(w @ w), g

    return value_grad


# ---------------------------------------------------------------- scikit-learn
def sklearn_loss(family, n_classes=None):
    from sklearn._loss.loss import HalfBinomialLoss, HalfMultinomialLoss
    from sklearn.linear_model._linear_loss import LinearModelLoss

    base = HalfBinomialLoss() if family == "logistic" else HalfMultinomialLoss(
        n_classes=n_classes)
    return LinearModelLoss(base_loss=base, fit_intercept=True)


def fc_to_sk(vec, d, K):
    """fastcurv flat ``(d+1, K)`` C-order -> scikit-learn's (K, d+1) raveled in F order."""
    if K == 1:
        return np.asarray(vec, dtype=np.float64)
    return np.asarray(vec, dtype=np.float64).reshape(d + 1, K).T.ravel(order="F")


def sk_to_fc(vec, d, K):
    """Inverse of :func:`fc_to_sk`."""
    if K == 1:
        return vec
    return np.asarray(vec).reshape((K, d + 1), order="F").T.ravel()


def sklearn_hessp(X, y, theta, lam, family="logistic", n_classes=1):
    """scikit-learn's Newton-CG product: returns (setup seconds, hvp in fastcurv layout).

    ``gradient_hessian_product`` does the per-θ setup (for the binary loss it builds
    ``hX = h * X``, a copy of X); only the returned ``hessp`` closure is timed.
    """
    import time

    d = X.shape[1]
    K = n_classes
    lml = sklearn_loss(family, n_classes if family == "multinomial" else None)
    coef = fc_to_sk(theta, d, K)
    t0 = time.perf_counter()
    _, hessp = lml.gradient_hessian_product(coef, X, y, sample_weight=None,
                                            l2_reg_strength=lam, n_threads=N_THREADS)
    setup = time.perf_counter() - t0

    def hvp(v):
        return sk_to_fc(hessp(fc_to_sk(v, d, K)), d, K)

    # the layout conversion is a tiny copy of P numbers; time the closure on a
    # pre-converted vector to exclude even that
    def hvp_sk(v_sk):
        return hessp(v_sk)

    return setup, hvp, hvp_sk


def sklearn_value_grad(X, y, lam, family="logistic", n_classes=1):
    """``LinearModelLoss.loss_gradient`` in fastcurv's layout: f(theta) -> (value, grad)."""
    d = X.shape[1]
    K = n_classes
    lml = sklearn_loss(family, n_classes if family == "multinomial" else None)

    def value_grad(theta):
        loss, g = lml.loss_gradient(fc_to_sk(theta, d, K), X, y, sample_weight=None,
                                    l2_reg_strength=lam, n_threads=N_THREADS)
        return loss, sk_to_fc(g, d, K)

    return value_grad


def is_sparse(X):
    return sp.issparse(X)
