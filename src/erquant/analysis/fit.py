"""Log-logistic dose-response fits: R drc's LL.4 and LL.3 models.

Model (drc's parametrisation, ``b, c, d, e``)::

    f(x) = c + (d - c) / (1 + exp(b * (log(x) - log(e))))

``d`` (``top``) is the response at concentration 0, ``c`` (``bottom``) the
response at infinite concentration, ``e`` the EC50 (the concentration halfway
between ``top`` and ``bottom``: the *relative* EC50) and ``b`` the Hill slope.
The slope is kept positive (``b > 0``), so a decreasing curve has ``top >
bottom`` and an increasing one ``top < bottom`` — this removes drc's sign
symmetry ``(b, c, d) ≡ (-b, d, c)``.  Zero concentrations are used as drc uses
them: ``f(0) = d``.

Estimation is (bounded) least squares (:func:`scipy.optimize.least_squares`,
trust-region reflective, several starting points).  Standard errors follow
drc: ``vcov = 2 σ² H⁻¹`` with ``σ² = RSS / df`` and ``H`` the Hessian of the
residual sum of squares at the optimum (the exact Hessian, including the
second derivatives of the model, computed by central differences of the
analytic gradient) — not the Gauss–Newton ``JᵀJ`` of ``curve_fit``.
Confidence intervals use the t distribution with the residual degrees of
freedom, as drc does.

Fallback (``model="auto"``): when the LL.4 fit does not reach its lower
plateau inside the tested range (at the highest concentration the curve has
covered less than 80 % of its way from ``top`` to ``bottom``), the bottom is not determined by the data; the 3-parameter LL.3
model is fitted instead with ``bottom`` fixed at ``lower`` (default 0 — the
physical floor of a readout normalised as "% of vehicle remaining": no
ERα / no cells left; this is also drc's LL.3).  The fit is then flagged
``partial`` and its Dmax is an assumption, not an estimate.  A rising curve
(``bottom > top``, e.g. ERα stabilised by a SERM) that does not reach its
plateau keeps LL.4 and is flagged ``partial`` too.

Flags (``;``-joined, ``ok`` when none): ``too_few_points`` (fewer distinct
concentrations than parameters, or no residual degree of freedom: nothing is
fitted), ``flat`` (F-test against a constant model not significant at 0.05:
the constant is reported, EC50 NaN), ``partial`` (plateau at high
concentration not reached; LL.3 fallback for a falling curve),
``ec50_outside_range`` (EC50 outside the tested non-zero concentrations),
``unstable`` (condition number of the correlation-scaled Hessian above
``max_condition``, Hessian not positive definite, or a parameter at a bound),
``wide_ci`` (the EC50's confidence interval spans more than ``max_ci_ratio``,
default 10-fold).

Examples
--------
>>> import numpy as np
>>> x = np.repeat([0.1, 0.3, 1, 3, 10, 30, 100], 2)
>>> y = 10 + 90 / (1 + (x / 2.0) ** 1.5)
>>> f = fit_ll4(x, y)
>>> round(f.ec50, 3), round(f.hill, 3), round(f.top, 2), round(f.bottom, 2), f.flag
(2.0, 1.5, 100.0, 10.0, 'ok')
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, stats
from scipy.special import expit

__all__ = ["Fit", "fit_ll4", "ll4"]

_LN10 = math.log(10.0)
_NAMES4 = ("hill", "bottom", "top", "ec50")  # drc's b, c, d, e


def ll4(conc, hill: float, bottom: float, top: float, ec50: float) -> np.ndarray:
    """Evaluate drc's LL.4 curve ``c + (d - c) / (1 + (x / e) ** b)``.

    ``conc = 0`` gives ``top`` for ``hill > 0``.

    Examples
    --------
    >>> ll4([0.0, 1.0, 1e9], hill=1.0, bottom=0.0, top=100.0, ec50=1.0).round(6).tolist()
    [100.0, 50.0, 0.0]
    """
    x = np.asarray(conc, dtype=float)
    s = _sigmoid(x, hill, math.log(ec50))
    return bottom + (top - bottom) * s


def _sigmoid(x: np.ndarray, b: float, le: float) -> np.ndarray:
    """``1 / (1 + exp(b (log x - le)))``, with ``x = 0`` → 1 (b > 0), 0 (b < 0), 0.5 (b = 0)."""
    pos = x > 0
    u = np.full(x.shape, -math.copysign(np.inf, b) if b != 0 else 0.0)
    u[pos] = b * (np.log(x[pos]) - le)
    return expit(-u)


@dataclass
class Fit:
    """Result of :func:`fit_ll4`.

    Attributes
    ----------
    ec50, hill, top, bottom : float
        drc's ``e, b, d, c`` (``top`` = response at concentration 0, ``bottom`` =
        at infinite concentration).  NaN when not estimated.
    se : dict
        Standard errors keyed ``hill, bottom, top, ec50`` (parameters fixed by the
        model are absent).
    ci_low, ci_high : float
        Confidence interval of the EC50 (``level``; by default the delta method
        on log EC50, i.e. ``exp(log e ± t·se(log e))``; see ``ci_method``).
    se_log10 : float
        Standard error of ``log10(ec50)``.
    r2, rss : float
        Coefficient of determination and residual sum of squares.
    df : int
        Residual degrees of freedom.
    n_points : int
    flag : str
        ``ok`` or ``;``-joined flags (module docstring).
    model : str
        ``"LL.4"``, ``"LL.3"`` or ``"constant"`` (flat curve) / ``"none"``.
    vcov : ndarray or None
        Covariance of the free parameters in the order of ``se`` (``b, c, d, e``).
    level : float
    ci_method : str
    conc_range : (float, float)
        Smallest and largest non-zero concentration.
    p_flat : float
        p-value of the F-test against a constant model.
    condition : float
        Condition number of the correlation-scaled Hessian.
    """

    ec50: float
    hill: float
    top: float
    bottom: float
    se: dict = field(default_factory=dict)
    ci_low: float = math.nan
    ci_high: float = math.nan
    se_log10: float = math.nan
    r2: float = math.nan
    rss: float = math.nan
    df: int = 0
    n_points: int = 0
    flag: str = "ok"
    model: str = "LL.4"
    vcov: np.ndarray | None = None
    level: float = 0.95
    ci_method: str = "delta"
    conc_range: tuple[float, float] = (math.nan, math.nan)
    p_flat: float = math.nan
    condition: float = math.nan

    @property
    def sigma(self) -> float:
        """Residual standard error ``sqrt(RSS / df)``."""
        return math.sqrt(self.rss / self.df) if self.df > 0 else math.nan

    @property
    def flags(self) -> list[str]:
        """The flags as a list (empty when ``ok``)."""
        return [] if self.flag == "ok" else self.flag.split(";")

    def predict(self, conc) -> np.ndarray:
        """Fitted response at ``conc`` (constant for a flat fit; NaN when not fitted).

        Examples
        --------
        >>> Fit(ec50=1.0, hill=1.0, top=100.0, bottom=0.0).predict([1.0]).tolist()
        [50.0]
        """
        x = np.asarray(conc, dtype=float)
        if self.model == "constant":
            return np.full(x.shape, self.top)
        if not np.isfinite(self.ec50):
            return np.full(x.shape, np.nan)
        return ll4(x, self.hill, self.bottom, self.top, self.ec50)

    def inverse(self, response: float) -> float:
        """Concentration at which the fitted curve equals ``response`` (NaN if never).

        With ``response = 50`` on a "% of vehicle" readout this is the absolute
        50 % concentration (as opposed to the relative EC50).

        Examples
        --------
        >>> round(Fit(ec50=2.0, hill=1.0, top=100.0, bottom=20.0).inverse(50.0), 4)
        3.3333
        """
        c, d, b, e = self.bottom, self.top, self.hill, self.ec50
        if self.model not in ("LL.4", "LL.3") or not np.isfinite([c, d, b, e]).all():
            return math.nan
        lo, hi = min(c, d), max(c, d)
        if not lo < response < hi:
            return math.nan
        return float(e * ((d - response) / (response - c)) ** (1.0 / b))

    def ci_ec50(self, scale: str = "log", level: float | None = None) -> tuple[float, float]:
        """Delta-method confidence interval of the EC50 with the t distribution.

        Parameters
        ----------
        scale : {"log", "linear"}
            ``"log"``: ``e · exp(±t·se(log e))`` (always positive; what
            ``dose_response.csv`` reports). ``"linear"``: ``e ± t·se(e)`` — what
            drc's ``ED(model, 50, interval = "delta")`` prints.
        level : float, optional
            Defaults to the fit's ``level``.

        Examples
        --------
        >>> f = Fit(ec50=3.0, hill=1.0, top=1.0, bottom=0.0, se={"ec50": 0.1}, df=10)
        >>> [round(v, 4) for v in f.ci_ec50("linear")]
        [2.7772, 3.2228]
        """
        level = self.level if level is None else level
        se_e = self.se.get("ec50", math.nan)
        if self.df <= 0 or not np.isfinite(se_e) or not np.isfinite(self.ec50):
            return math.nan, math.nan
        t = float(stats.t.ppf(0.5 + level / 2.0, self.df))
        if scale == "linear":
            return self.ec50 - t * se_e, self.ec50 + t * se_e
        if scale == "log":
            s = min(t * se_e / self.ec50, 700.0)  # beyond e^700 the bound is infinite anyway
            return self.ec50 * math.exp(-s), self.ec50 * math.exp(s)
        raise ValueError(f"scale must be 'log' or 'linear', got {scale!r}")


# ---------------------------------------------------------------------------- model pieces
class _Model:
    """Residuals, Jacobian and RSS Hessian in the optimisation parameters.

    Free parameters, in order: ``b, [c], d, log e`` (``c`` absent for LL.3).
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, fixed_c: float | None):
        self.x, self.y, self.fixed_c = x, y, fixed_c
        self.pos = x > 0
        self.lx = np.where(self.pos, np.log(np.where(self.pos, x, 1.0)), 0.0)

    def unpack(self, p: np.ndarray) -> tuple[float, float, float, float]:
        if self.fixed_c is None:
            b, c, d, le = p
        else:
            b, d, le = p
            c = self.fixed_c
        return float(b), float(c), float(d), float(le)

    def f(self, p: np.ndarray) -> np.ndarray:
        b, c, d, le = self.unpack(p)
        return c + (d - c) * _sigmoid(self.x, b, le)

    def resid(self, p: np.ndarray) -> np.ndarray:
        return self.f(p) - self.y

    def jac(self, p: np.ndarray) -> np.ndarray:
        b, c, d, le = self.unpack(p)
        s = _sigmoid(self.x, b, le)
        w = s * (1.0 - s)  # 0 at x = 0 (s is exactly 0 or 1 there)
        dfdb = np.where(self.pos, -(d - c) * w * (self.lx - le), 0.0)
        dfdle = (d - c) * w * b
        cols = [dfdb]
        if self.fixed_c is None:
            cols.append(1.0 - s)
        cols += [s, dfdle]
        return np.column_stack(cols)

    def grad_rss(self, p: np.ndarray) -> np.ndarray:
        return 2.0 * self.jac(p).T @ self.resid(p)

    def hess_rss(self, p: np.ndarray) -> np.ndarray:
        """Exact Hessian of RSS: central differences of the analytic gradient (O(h²))."""
        k = len(p)
        h = 1e-5 * np.maximum(1.0, np.abs(p))
        H = np.empty((k, k))
        for i in range(k):
            dp = np.zeros(k)
            dp[i] = h[i]
            H[:, i] = (self.grad_rss(p + dp) - self.grad_rss(p - dp)) / (2.0 * h[i])
        return 0.5 * (H + H.T)


def _group_means(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ux = np.unique(x)
    return ux, np.array([y[x == u].mean() for u in ux])


def _starts(x: np.ndarray, y: np.ndarray, fixed_c: float | None) -> list[np.ndarray]:
    """Starting points: a logit regression plus a small grid of EC50 / slope values."""
    ux, my = _group_means(x, y)
    d0 = float(my[0])
    c0 = float(my[-1]) if fixed_c is None else float(fixed_c)
    if abs(d0 - c0) < 1e-12 * max(1.0, abs(d0)):
        d0 = c0 + 1e-6 * max(1.0, abs(c0)) + 1e-9
    lpos = np.log(ux[ux > 0])
    le_grid = list(np.quantile(lpos, [0.2, 0.5, 0.8]))
    b_grid = [1.0, 3.0]
    starts = []
    # logit regression on points strictly between the plateaus
    lo, hi = min(c0, d0), max(c0, d0)
    span = hi - lo
    sel = (x > 0) & (y > lo + 0.05 * span) & (y < hi - 0.05 * span)
    if sel.sum() >= 2 and np.ptp(np.log(x[sel])) > 0:
        z = np.log((d0 - y[sel]) / (y[sel] - c0))
        slope, icpt = np.polyfit(np.log(x[sel]), z, 1)
        if slope > 0:
            starts.append((min(slope, 10.0), -icpt / slope))
    for le in le_grid:
        for b in b_grid:
            starts.append((b, le))
    out = []
    for b, le in starts:
        le = float(np.clip(le, lpos.min() - 2.0, lpos.max() + 2.0))
        p = [b, c0, d0, le] if fixed_c is None else [b, d0, le]
        out.append(np.asarray(p, dtype=float))
    return out


def _solve(
    m: _Model, starts: Sequence[np.ndarray], bounds, loss: str, f_scale: float
) -> optimize.OptimizeResult:
    def ls(p0, tol, nfev):
        return optimize.least_squares(
            m.resid, p0, jac=m.jac, bounds=bounds, method="trf", loss=loss, f_scale=f_scale,
            x_scale="jac", ftol=tol, xtol=tol, gtol=tol, max_nfev=nfev,
        )

    # screen the starts coarsely (a flat or step-like curve creeps along a valley), then polish
    best = None
    for p0 in starts:
        r = ls(np.clip(p0, bounds[0] + 1e-9, bounds[1] - 1e-9), 1e-8, 100)
        if best is None or r.cost < best.cost:
            best = r
    return ls(best.x, 1e-14, 300)


def _bounds(x: np.ndarray, y: np.ndarray, fixed_c: float | None, max_hill: float):
    lpos = np.log(x[x > 0])
    r = max(float(np.ptp(y)), 1e-9 * max(1.0, float(np.abs(y).max())), 1e-12)
    ylo, yhi = float(y.min()) - 2.0 * r, float(y.max()) + 2.0 * r
    if fixed_c is not None:
        ylo, yhi = min(ylo, fixed_c - r), max(yhi, fixed_c + r)
    le_lo, le_hi = lpos.min() - math.log(1000.0), lpos.max() + math.log(1000.0)
    lo = [1e-3, ylo, ylo, le_lo] if fixed_c is None else [1e-3, ylo, le_lo]
    hi = [max_hill, yhi, yhi, le_hi] if fixed_c is None else [max_hill, yhi, le_hi]
    return np.asarray(lo), np.asarray(hi)


def _nan_fit(n: int, df: int, flag: str, model: str, level: float, crange) -> Fit:
    return Fit(
        ec50=math.nan, hill=math.nan, top=math.nan, bottom=math.nan, n_points=n, df=df,
        flag=flag, model=model, level=level, conc_range=crange,
    )


def _finish(
    m: _Model, p: np.ndarray, bounds, *, level: float, max_condition: float, tss: float,
    crange: tuple[float, float], model: str,
) -> Fit:
    """SEs (drc: vcov = 2 σ² H⁻¹), delta CIs, R² and the stability flag for optimum ``p``."""
    b, c, d, le = m.unpack(p)
    e = math.exp(le)
    n, k = len(m.y), len(p)
    rss = float(np.sum(m.resid(p) ** 2))
    df = n - k
    flags = []
    H = m.hess_rss(p)
    dg = np.sqrt(np.abs(np.diag(H)))
    vcov = None
    se: dict[str, float] = {}
    cond = math.inf
    at_bound = np.any(np.isclose(p, bounds[0], rtol=1e-6, atol=1e-9)) or np.any(
        np.isclose(p, bounds[1], rtol=1e-6, atol=1e-9)
    )
    if np.all(dg > 0) and np.all(np.isfinite(H)):
        Hs = H / np.outer(dg, dg)
        cond = float(np.linalg.cond(Hs))
        evals = np.linalg.eigvalsh(Hs)
        if evals.min() > 0 and df > 0:
            sigma2 = rss / df
            v = 2.0 * sigma2 * np.linalg.inv(H)
            # log e -> e: delta method (exact at the optimum, where the gradient is 0)
            a = np.ones(k)
            a[-1] = e
            vcov = v * np.outer(a, a)
            names = _NAMES4 if m.fixed_c is None else ("hill", "top", "ec50")
            se = {nm: float(math.sqrt(vcov[i, i])) for i, nm in enumerate(names)}
    if vcov is None or cond > max_condition or at_bound:
        flags.append("unstable")
    se_le = se.get("ec50", math.nan) / e
    f = Fit(
        ec50=e, hill=b, top=d, bottom=c, se=se, se_log10=se_le / _LN10,
        r2=1.0 - rss / tss if tss > 0 else math.nan, rss=rss, df=df, n_points=n,
        model=model, vcov=vcov, level=level, conc_range=crange, condition=cond,
        flag=";".join(flags) or "ok",
    )
    f.ci_low, f.ci_high = f.ci_ec50("log")
    return f


def _p_flat(rss_model: float, df_model: int, tss: float, n: int) -> float:
    """F-test of the fitted model against the constant (mean) model."""
    if df_model <= 0 or rss_model <= 0:
        return 0.0 if tss > rss_model else 1.0
    dfn = (n - 1) - df_model
    fstat = ((tss - rss_model) / dfn) / (rss_model / df_model)
    return float(stats.f.sf(fstat, dfn, df_model))


def _profile_ci(m: _Model, p: np.ndarray, bounds, level: float, loss: str, f_scale: float):
    """Profile-RSS interval of the EC50: {e : (RSS(e) - RSS) / σ² <= t²(df)}."""
    n, k = len(m.y), len(p)
    df = n - k
    rss0 = float(np.sum(m.resid(p) ** 2))
    crit = rss0 * (1.0 + stats.t.ppf(0.5 + level / 2.0, df) ** 2 / df)
    sub_lo, sub_hi = bounds[0][:-1], bounds[1][:-1]

    def prof(le: float) -> float:
        def r(q):
            return m.resid(np.append(q, le))

        def j(q):
            return m.jac(np.append(q, le))[:, :-1]

        q = optimize.least_squares(
            r, np.clip(p[:-1], sub_lo + 1e-9, sub_hi - 1e-9), jac=j, bounds=(sub_lo, sub_hi),
            method="trf", x_scale="jac", ftol=1e-12, xtol=1e-12, gtol=1e-12,
        ).x
        return float(np.sum(r(q) ** 2)) - crit

    le0 = p[-1]
    out = []
    for lim in (bounds[0][-1], bounds[1][-1]):
        if prof(lim) < 0:
            out.append(math.nan)  # the interval is open on that side
        else:
            out.append(math.exp(optimize.brentq(prof, le0, lim, xtol=1e-8)))
    return out[0], out[1]


def _bootstrap_ci(m, p, bounds, level, loss, f_scale, n_boot, seed):
    """Residual bootstrap (percentile) interval of the EC50."""
    rng = np.random.default_rng(seed)
    fitted = m.f(p)
    res = m.y - fitted
    res = (res - res.mean()) * math.sqrt(len(res) / max(1, len(res) - len(p)))
    les = []
    for _ in range(n_boot):
        mb = _Model(m.x, fitted + rng.choice(res, len(res)), m.fixed_c)
        r = optimize.least_squares(
            mb.resid, p, jac=mb.jac, bounds=bounds, method="trf", loss=loss,
            f_scale=f_scale, x_scale="jac",
        )
        les.append(r.x[-1])
    q = np.quantile(les, [0.5 - level / 2.0, 0.5 + level / 2.0])
    return float(math.exp(q[0])), float(math.exp(q[1]))


# ---------------------------------------------------------------------------- public fit
def fit_ll4(
    conc,
    response,
    *,
    model: str = "auto",
    lower: float = 0.0,
    loss: str = "linear",
    f_scale: float | None = None,
    ci: str = "delta",
    level: float = 0.95,
    plateau_fraction: float = 0.8,
    max_condition: float = 1e8,
    max_ci_ratio: float = 10.0,
    max_hill: float = 20.0,
    alpha_flat: float = 0.05,
    n_boot: int = 200,
    seed: int = 0,
) -> Fit:
    """Fit a log-logistic dose-response curve (drc's LL.4, LL.3 fallback).

    Parameters
    ----------
    conc, response : array_like
        One point per well (replicates are separate points).  ``conc = 0``
        points (vehicle) are used as drc uses them (``f(0) = top``).  NaN
        points are dropped.
    model : {"auto", "LL.4", "LL.3"}
        ``"auto"``: LL.4, falling back to LL.3 (bottom fixed at ``lower``) when
        the lower plateau is not reached (module docstring).
    lower : float
        The fixed bottom of LL.3 (0 = nothing left, for "% of vehicle" data).
    loss : {"linear", "soft_l1", "huber", "cauchy"}
        Least-squares loss.  ``"linear"`` (default) is drc's plain least squares;
        a robust loss down-weights outlier wells (the SEs are still the
        RSS-Hessian ones, evaluated at the robust estimate).
    f_scale : float, optional
        Residual scale of the robust loss (default: 1.4826 × MAD of the
        plain least-squares residuals).
    ci : {"delta", "profile", "bootstrap"}
        Interval of ``ci_low, ci_high``: delta method on log EC50, profile RSS,
        or residual bootstrap (``n_boot`` resamples, ``seed``).
    level : float
        Confidence level.
    plateau_fraction : float
        Share of the ``top``→``bottom`` change the curve must have covered at
        the highest concentration for LL.4 to be kept under ``"auto"``.
    max_condition : float
        Condition number of the correlation-scaled RSS Hessian above which the
        fit is flagged ``unstable``.
    max_ci_ratio : float
        A confidence interval of the EC50 wider than this factor (``ci_high /
        ci_low``) flags the fit ``wide_ci``: the curve does not pin the EC50 down
        (e.g. a 6 h count curve that lost 10 % of its cells).
    max_hill : float
        Upper bound of the Hill slope.
    alpha_flat : float
        Significance level of the F-test against a constant model.

    Returns
    -------
    Fit

    Examples
    --------
    drc's ``ryegrass`` data (``drm(rootl ~ conc, data = ryegrass, fct = LL.4())``):

    >>> conc = [0] * 6 + [c for c in (0.94, 1.88, 3.75, 7.5, 15, 30) for _ in range(3)]
    >>> rootl = [7.58, 8, 8.328571429, 7.25, 7.375, 7.9625, 8.355555556, 6.914285714,
    ...          7.75, 6.871428571, 6.45, 5.922222222, 1.925, 2.885714286, 4.233333333,
    ...          1.1875, 0.857142857, 1.057142857, 0.6875, 0.525, 0.825, 0.25, 0.22, 0.44]
    >>> f = fit_ll4(conc, rootl, model="LL.4")
    >>> print(f"{f.ec50:.4f} {f.se['ec50']:.4f} {f.hill:.4f} {f.sigma:.4f} {f.df}")
    3.0580 0.1857 2.9822 0.5196 20
    """
    if model not in ("auto", "LL.4", "LL.3"):
        raise ValueError(f"model must be 'auto', 'LL.4' or 'LL.3', got {model!r}")
    if ci not in ("delta", "profile", "bootstrap"):
        raise ValueError(f"ci must be 'delta', 'profile' or 'bootstrap', got {ci!r}")
    x = np.asarray(conc, dtype=float).ravel()
    y = np.asarray(response, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"conc and response differ in length: {x.size} vs {y.size}")
    if np.any(x[np.isfinite(x)] < 0):
        raise ValueError("concentrations must be >= 0")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    n = int(x.size)
    pos = x[x > 0]
    crange = (float(pos.min()), float(pos.max())) if pos.size else (math.nan, math.nan)
    k_min = 3 if model == "LL.3" else 4
    n_conc = int(np.unique(x).size)
    if pos.size == 0 or n_conc < k_min or n <= k_min:
        return _nan_fit(n, n - k_min, "too_few_points", model, level, crange)

    tss = float(np.sum((y - y.mean()) ** 2))
    if f_scale is None and loss != "linear":
        prelim = fit_ll4(x, y, model="LL.4" if model == "auto" else model, lower=lower,
                         max_hill=max_hill, max_condition=np.inf)
        m0 = _Model(x, y, None if prelim.model == "LL.4" else lower)
        if np.isfinite(prelim.ec50):
            p_pre = [prelim.hill, prelim.top, math.log(prelim.ec50)]
            if prelim.model == "LL.4":
                p_pre.insert(1, prelim.bottom)
            r0 = m0.resid(np.asarray(p_pre))
            f_scale = float(1.4826 * np.median(np.abs(r0 - np.median(r0))))
        f_scale = f_scale if f_scale and f_scale > 0 else max(1e-6, 0.05 * float(np.ptp(y)))
    f_scale = 1.0 if f_scale is None else float(f_scale)

    def run(fixed_c: float | None, name: str) -> tuple[Fit, _Model, np.ndarray, tuple]:
        m = _Model(x, y, fixed_c)
        bnds = _bounds(x, y, fixed_c, max_hill)
        r = _solve(m, _starts(x, y, fixed_c), bnds, loss, f_scale)
        fit = _finish(m, r.x, bnds, level=level, max_condition=max_condition, tss=tss,
                      crange=crange, model=name)
        fit.p_flat = _p_flat(fit.rss, fit.df, tss, n)
        return fit, m, r.x, bnds

    if model == "LL.3":
        fit, m, p, bnds = run(lower, "LL.3")
    else:
        fit, m, p, bnds = run(None, "LL.4")
        if model == "auto" and fit.p_flat <= alpha_flat:
            covered = 1.0 - float(_sigmoid(np.array([crange[1]]), fit.hill, math.log(fit.ec50))[0])
            if covered < plateau_fraction and fit.top > fit.bottom and fit.top > lower:
                fit3, m3, p3, b3 = run(lower, "LL.3")
                fit3.flag = ";".join(["partial", *fit3.flags])
                fit, m, p, bnds = fit3, m3, p3, b3
            elif covered < plateau_fraction:  # rising curve: no principled floor to fix
                fit.flag = ";".join(["partial", *fit.flags])

    flags = [fl for fl in fit.flags if fl != "partial"]
    partial = "partial" in fit.flags
    if fit.p_flat > alpha_flat:
        mean = float(y.mean())
        return Fit(
            ec50=math.nan, hill=math.nan, top=mean, bottom=mean, r2=0.0, rss=tss, df=n - 1,
            n_points=n, flag="flat", model="constant", level=level, conc_range=crange,
            p_flat=fit.p_flat, se={"top": math.sqrt(tss / max(1, n - 1) / n)},
        )
    if ci != "delta" and "unstable" not in flags and fit.df > 0:
        if ci == "profile":
            fit.ci_low, fit.ci_high = _profile_ci(m, p, bnds, level, loss, f_scale)
        else:
            fit.ci_low, fit.ci_high = _bootstrap_ci(m, p, bnds, level, loss, f_scale, n_boot, seed)
        fit.ci_method = ci
    if not crange[0] <= fit.ec50 <= crange[1]:
        flags.append("ec50_outside_range")
    if "unstable" not in flags and not (fit.ci_high / fit.ci_low <= max_ci_ratio):
        flags.append("wide_ci")
    fit.flag = ";".join((["partial"] if partial else []) + flags) or "ok"
    return fit
