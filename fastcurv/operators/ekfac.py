"""EK-FAC: K-FAC's eigenbasis with the exact second moments as its eigenvalues."""


from . import _kfac_factors as kf
from ._kronecker import EigenKroneckerBlocks, pinv_entries, psd_eigh
from .kfac import init_factors, layer_blocks


class EKFACOperator(EigenKroneckerBlocks):
    r"""EK-FAC (George et al. 2018): ``v ↦ (⊕_l (Q_A ⊗ Q_G) diag(S_l) (Q_A ⊗ Q_G)ᵀ + δ I) v``.

    ``Q_A``, ``Q_G`` are the eigenvectors of the K-FAC factors (see
    :class:`KFACOperator`, same ``fisher`` choices and normalization) and

    .. math::

        S_{l,kj} = \sum_i c_i \sum_c \big((Q_A^\top \tilde a_i)_k\big)^2
                   \big((Q_G^\top g_{ic})_j\big)^2,

    the exact diagonal of the layer's curvature block in that basis (K-FAC uses
    ``λ_{A,k} λ_{G,j}`` there instead). In Frobenius norm EK-FAC is therefore at least as
    close to the layer block as K-FAC. It costs one more pass over the rows than K-FAC (the
    basis must be known first; ``"mc"`` draws the same labels in both passes). A product
    costs four matrix products per layer. The penalty is not included (pass it as damping).

    Parameters
    ----------
    problem, theta, fisher, damping, seed, mc_samples : as :class:`KFACOperator`.

    Attributes
    ----------
    factors : list of (A, G) float64, the K-FAC factors whose eigenbases are used.
    scalings : list of (n_A, n_out) float64 arrays ``S_l``.
    """

    def __init__(self, problem, theta, fisher="mc", damping=0.0, seed=None, *, mc_samples=1):
        damping, root, mc = init_factors(self, problem, theta, fisher, damping, seed,
                                         mc_samples)
        theta = self.theta
        bases = []
        for A, G in self.factors:
            bases.append((psd_eigh(A)[1], psd_eigh(G)[1]))
        dt = problem.dtype
        rot = [(qa.astype(dt), qg.astype(dt)) for qa, qg in bases]
        self.scalings = kf.second_moments(problem, theta, fisher, mc, root, rot)
        self._bases = bases
        super().__init__(layer_blocks(problem), problem.n_params, dt, bases, self.scalings,
                         damping)

    def inverse(self, kind="exact"):
        """``(Q diag(S) Qᵀ + δ I)⁻¹ = Q diag(1 / (S + δ)) Qᵀ``, exact; entries of ``S + δ`` at
        or below ``max(n_A, n_out) · ε · max`` are dropped (a pseudo-inverse; ``ε`` of the
        operator's dtype, as in :meth:`KFACOperator.inverse`).

        ``kind`` is accepted for the signature of :meth:`KFACOperator.inverse` (code may
        switch between the two classes); EK-FAC has only the exact inverse."""
        if kind != "exact":
            raise ValueError(
                f"kind must be 'exact' for EK-FAC (its damped inverse is exact in the "
                f"Kronecker eigenbasis; 'factored' is K-FAC's approximation), got {kind!r}")
        diags = [pinv_entries(S + self.damping, max(S.shape), self.dtype)
                 for S in self.scalings]
        return EigenKroneckerBlocks(self._layers, self.shape[0], self.dtype, self._bases, diags)

    def __repr__(self):
        return (f"<EKFACOperator {self.shape[0]}x{self.shape[1]} {self.dtype}, "
                f"fisher={self.fisher!r}, {len(self.factors)} layers, damping={self.damping}>")
