"""Promotion by evidence: is a shadow challenger proven better than production, on the same bars?

The audit's effect size (macro-F1 more than ``QT_CLM_PROMOTE_MARGIN`` above production's) is
kept and must be proven at ``QT_CLM_PROMOTE_CONFIDENCE``: a paired circular block bootstrap
over event time (blocks of at least one label horizon), group-sequential looks at 100, 200, ...,
``QT_CLM_SHADOW_MAX`` bars with alpha spending, and an economic guard (the challenger must
earn at least as much per bar). Decisions: promote, retire_not_better, wait, retire_unproven.
The method, why each choice, and its measured error rates: ``docs/promotion.md``.

>>> rng = np.random.default_rng(7)
>>> n = 2000
>>> ts = np.repeat(np.arange(n // 2, dtype=np.int64) * 60_000, 2)
>>> sym = np.tile(["A", "B"], n // 2)
>>> y = rng.choice(3, size=n, p=[0.8, 0.1, 0.1])
>>> fwd = np.where(y == 1, 0.003, np.where(y == 2, -0.003, 0.0))
>>> noisy = np.where(rng.random(n) < 0.5, y, rng.choice(3, size=n))
>>> r = judge(ts, sym, y, noisy, y, fwd, cost=0.001)  # a challenger that is always right
>>> r.decision, r.look, r.n, r.n_blocks  # 100 bars of 2 symbols are 5 blocks: look 1 skipped
(<Decision.PROMOTE: 'promote'>, 2, 200, 10)
>>> r.reason
'promoted: macro-F1 +80.3% [+30.5%, +191.7%] at 95%, earns +5.1 bps/bar more [+1.0, +9.2]'
>>> judge(ts, sym, y, noisy, noisy, fwd, cost=0.001).decision
<Decision.RETIRE_NOT_BETTER: 'retire_not_better'>
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from enum import StrEnum
from functools import lru_cache
from itertools import pairwise
from statistics import NormalDist
from typing import Any

import numpy as np

from models.labels import UNLABELLED
from schemas.signals import CLASS_OF, Action
from settings import DEFAULTS, Settings

_NORMAL = NormalDist()
_GRID_STEP = 0.002  # spacing of the Brownian-motion grid in spending_bounds (z error ~1e-3)

# per-close count columns: tp and predicted per class for production, then challenger; true
# per class; economic sums of production and challenger; bars
_TP_P, _PR_P, _TP_C, _PR_C, _TRUE = (
    slice(0, 3),
    slice(3, 6),
    slice(6, 9),
    slice(9, 12),
    slice(12, 15),
)
_ECON_P, _ECON_C, _BARS = 15, 16, 17
_COLUMNS = 18


class Decision(StrEnum):
    """What the caller does with a challenger (see the module docstring)."""

    PROMOTE = "promote"
    RETIRE_NOT_BETTER = "retire_not_better"
    WAIT = "wait"
    RETIRE_UNPROVEN = "retire_unproven"

    @property
    def final(self) -> bool:
        """Every decision but ``wait`` ends the shadow test."""
        return self is not Decision.WAIT


@dataclass(frozen=True)
class EvidenceConfig:
    """The test's knobs; :meth:`from_settings` reads the ``QT_CLM_*`` ones.

    ``spending`` is the exponent of the alpha-spending function ``alpha * t ** spending``
    (1 spends evenly in bars; higher saves alpha for the late, better informed looks).
    """

    margin: float = DEFAULTS.clm_promote_margin
    confidence: float = DEFAULTS.clm_promote_confidence
    min_bars: int = DEFAULTS.clm_shadow_min
    max_bars: int = DEFAULTS.clm_shadow_max
    horizon: int = DEFAULTS.label_horizon_bars
    bar_ms: int = DEFAULTS.bar_seconds * 1000
    seed: int | str = 0
    resamples: int = 1000
    min_blocks: int = 10
    spending: float = 2.0

    def __post_init__(self) -> None:
        if self.margin < 0:
            raise ValueError(f"margin {self.margin} must be >= 0")
        if not 0.5 < self.confidence < 1:
            raise ValueError(f"confidence {self.confidence} must be in (0.5, 1)")
        if not 1 <= self.min_bars <= self.max_bars:
            raise ValueError(f"need 1 <= min_bars ({self.min_bars}) <= max_bars ({self.max_bars})")
        if self.horizon < 1 or self.bar_ms < 1:
            raise ValueError(f"horizon {self.horizon} and bar_ms {self.bar_ms} must be >= 1")
        seed_value(self.seed)
        if self.resamples < 100 or self.min_blocks < 3 or self.spending <= 0:
            raise ValueError(
                f"resamples {self.resamples} >= 100, min_blocks "
                f"{self.min_blocks} >= 3 and spending {self.spending} > 0 needed"
            )

    @classmethod
    def from_settings(cls, s: Settings, **overrides: Any) -> EvidenceConfig:
        """From :class:`settings.Settings` (``QT_CLM_PROMOTE_MARGIN``,
        ``QT_CLM_PROMOTE_CONFIDENCE``, ``QT_CLM_SHADOW_MIN``, ``QT_CLM_SHADOW_MAX``, the label
        horizon and the bar length)."""
        values: dict[str, Any] = {
            "margin": s.clm_promote_margin,
            "confidence": s.clm_promote_confidence,
            "min_bars": s.clm_shadow_min,
            "max_bars": s.clm_shadow_max,
            "horizon": s.label_horizon_bars,
            "bar_ms": s.bar_seconds * 1000,
        }
        return cls(**{**values, **overrides})

    @property
    def alpha(self) -> float:
        return 1.0 - self.confidence

    @property
    def schedule(self) -> tuple[int, ...]:
        """Bars at each look: ``min_bars * 2**k`` below ``max_bars``, then ``max_bars`` (a look
        within 25% of ``max_bars`` is dropped: it would add a look but hardly any bars).

        >>> EvidenceConfig().schedule
        (100, 200, 400, 800, 1600, 3200)
        >>> EvidenceConfig(max_bars=1800).schedule
        (100, 200, 400, 800, 1800)
        """
        looks = []
        n = self.min_bars
        while n < self.max_bars:
            looks.append(n)
            n *= 2
        if looks and self.max_bars < 1.25 * looks[-1]:
            looks.pop()
        return (*looks, self.max_bars)


@dataclass(frozen=True)
class PromotionEvidence:
    """One judgement of a challenger: what the ``clm_cycles`` row records.

    Figures are those of look ``look`` (1-based in :attr:`EvidenceConfig.schedule`; 0 before
    the first look taken, when figures cover all ``n_available`` bars and intervals are NaN).
    Economic scores are mean per bar, as fractions of notional (x 1e4 for bps).
    """

    decision: Decision
    reason: str
    look: int
    looks: int
    n: int
    n_available: int
    n_blocks: int
    block_closes: int
    n_symbols: int
    production_f1: float
    challenger_f1: float
    improvement: float
    improvement_low: float
    improvement_high: float
    production_econ: float
    challenger_econ: float
    econ_diff: float
    econ_diff_low: float
    econ_diff_high: float
    z: float
    critical: float
    margin: float
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "decision": str(self.decision)}

    def metrics(self) -> dict[str, float]:
        """The numeric fields as floats (a ``clm_cycles`` metrics map; NaN where undefined)."""
        return {
            f.name: float(getattr(self, f.name))
            for f in fields(self)
            if f.name not in ("decision", "reason")
        }


# --- the sequential boundaries -----------------------------------------------------------------
@lru_cache(maxsize=256)
def spending_bounds(
    fractions: tuple[float, ...], alpha: float, spending: float = 2.0
) -> tuple[float, ...]:
    """Upper z boundaries of a one-sided group-sequential test with ``alpha * t ** spending``
    spent by information fraction ``t`` (increasing, last <= 1): the first look gets all alpha
    spent up to it.

    >>> spending_bounds((1.0,), 0.05) == (round(NormalDist().inv_cdf(0.95), 12),)
    True
    >>> [round(c, 2) for c in spending_bounds((0.25, 0.5, 1.0), 0.05)]
    [2.73, 2.3, 1.7]
    """
    spent = [alpha * t**spending for t in fractions]
    increments = (spent[0], *(b - a for a, b in pairwise(spent)))
    return boundaries_from_increments(fractions, increments)


def boundaries_from_increments(
    fractions: Sequence[float], increments: Sequence[float]
) -> tuple[float, ...]:
    """z boundaries ``c_k`` with ``P(Z_1 <= c_1, ..., Z_k > c_k) = increments[k]`` for
    ``Z_k = W(t_k) / sqrt(t_k)``, W a standard Brownian motion (the large-sample law of a
    statistic computed on growing prefixes). The density of ``W(t_k)`` below the boundaries is
    carried look to look on a grid and convolved with the Gaussian increment."""
    t = [float(f) for f in fractions]
    if not t or any(b <= a for a, b in pairwise(t)) or t[0] <= 0:
        raise ValueError(f"information fractions must increase from above 0: {fractions}")
    h = _GRID_STEP
    half = 10.0 * math.sqrt(max(t[-1], 1.0))
    x = np.arange(-half, half + h / 2, h)
    out: list[float] = []
    density = np.exp(-(x**2) / (2 * t[0])) / math.sqrt(2 * math.pi * t[0])
    for k, (tk, a) in enumerate(zip(t, increments, strict=True)):
        if k:
            dt = tk - t[k - 1]
            kx = (
                np.arange(-math.ceil(8 * math.sqrt(dt) / h), math.ceil(8 * math.sqrt(dt) / h) + 1)
                * h
            )
            kernel = np.exp(-(kx**2) / (2 * dt)) / math.sqrt(2 * math.pi * dt) * h
            density = _convolve_same(density, kernel)
        if a <= 0:  # nothing to spend here: the boundary is at infinity
            out.append(math.inf)
            continue
        if k == 0:  # exact: nothing has been cut yet
            b = math.sqrt(tk) * _NORMAL.inv_cdf(1 - a)
        else:
            # P(W(t_k) >= x_i, not crossed before), trapezoid rule
            tail = (np.cumsum(density[::-1])[::-1] - density / 2) * h
            i = int(np.searchsorted(-tail, -a))  # first grid point whose tail is below a
            if i == 0 or i >= len(x):
                raise ValueError(f"alpha {a} at look {k + 1} is outside the grid")
            # interpolate linearly between the grid points around the crossing
            w = (tail[i - 1] - a) / (tail[i - 1] - tail[i])
            b = float(x[i - 1] + w * h)
        out.append(round(b / math.sqrt(tk), 12))
        density = np.where(x < b, density, 0.0)
    return tuple(out)


def _convolve_same(a: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``np.convolve(a, kernel, mode="same")`` (odd kernel) by FFT: 1 ms instead of 10."""
    size = len(a) + len(kernel) - 1
    nfft = 1 << (size - 1).bit_length()
    full = np.fft.irfft(np.fft.rfft(a, nfft) * np.fft.rfft(kernel, nfft), nfft)[:size]
    start = (len(kernel) - 1) // 2
    return np.maximum(full[start : start + len(a)], 0.0)


def t_quantile(p: float, df: float) -> float:
    """Student's t quantile by the Cornish-Fisher expansion about the normal (4 terms; relative
    error below 0.1% for ``df >= 9`` and ``p <= 0.9999``, the range used), keeping scipy out.

    >>> round(t_quantile(0.975, 9), 3), round(t_quantile(0.99, 19), 3)
    (2.262, 2.539)
    """
    if not math.isfinite(df) or df <= 0:
        raise ValueError(f"degrees of freedom {df} must be > 0")
    z = _NORMAL.inv_cdf(p)
    z2 = z * z
    return z * (
        1
        + (z2 + 1) / (4 * df)
        + (5 * z2**2 + 16 * z2 + 3) / (96 * df**2)
        + (3 * z2**3 + 19 * z2**2 + 17 * z2 - 15) / (384 * df**3)
        + (79 * z2**4 + 776 * z2**3 + 1482 * z2**2 - 1920 * z2 - 945) / (92160 * df**4)
    )


# --- bars -> per-close counts --------------------------------------------------------------------
def seed_value(seed: int | str) -> int:
    """A non-negative RNG seed; strings (a cycle id and model name) by SHA-256, not ``hash()``,
    which changes between processes.

    >>> seed_value(7), seed_value("c1/xgboost") == seed_value("c1/xgboost")
    (7, True)
    """
    if isinstance(seed, str):
        return int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big")
    if seed < 0:
        raise ValueError(f"seed {seed} must be >= 0")
    return int(seed)


def _class_ids(pred: Sequence[Any] | np.ndarray) -> np.ndarray:
    arr = np.asarray(pred)
    if arr.dtype.kind not in "iu":
        arr = np.array([CLASS_OF[Action(a)] for a in arr.tolist()], dtype=np.int64)
    return arr.astype(np.int64)


def econ_scores(call: np.ndarray, fwd: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Per-bar economic score of a model's calls: ``d * fwd - cost`` for BUY (+1) / SELL (-1),
    0 for HOLD.

    >>> econ_scores(np.array([0, 1, 2]), np.array([0.01, 0.01, 0.01]), np.full(3, 0.002))
    array([ 0.   ,  0.008, -0.012])
    """
    d = np.where(call == 1, 1.0, np.where(call == 2, -1.0, 0.0))
    return np.where(d != 0, d * fwd - cost, 0.0)


@dataclass(frozen=True)
class _Closes:
    """All bars folded into per-close count rows (closes in time order)."""

    counts: np.ndarray  # (closes, _COLUMNS)
    cum_bars: np.ndarray  # bars up to and including each close
    n_symbols: int


def _fold(
    ts_ms: Sequence[int] | np.ndarray,
    symbol: Sequence[Any] | np.ndarray,
    y: Sequence[int] | np.ndarray,
    prod: Sequence[Any] | np.ndarray,
    chal: Sequence[Any] | np.ndarray,
    fwd: Sequence[float] | np.ndarray,
    cost: float | Sequence[float] | np.ndarray,
    bar_ms: int,
) -> _Closes:
    """Validate the bars, drop unrealised ones (``y == -1``) and sum counts per bar close."""
    ts = np.asarray(ts_ms, dtype=np.int64)
    sym = np.asarray(symbol)
    yy = np.asarray(y, dtype=np.int64)
    p, c = _class_ids(prod), _class_ids(chal)
    r = np.asarray(fwd, dtype=np.float64)
    k = np.broadcast_to(np.asarray(cost, dtype=np.float64), ts.shape)
    lengths = {len(a) for a in (ts, sym, yy, p, c, r, k)}
    if len(lengths) != 1 or ts.ndim != 1:
        raise ValueError(
            "ts_ms, symbol, y, prod, chal, fwd and cost must be 1-d and as long as "
            f"each other (lengths {sorted(lengths)})"
        )
    keep = yy != UNLABELLED
    ts, sym, yy, p, c, r, k = ts[keep], sym[keep], yy[keep], p[keep], c[keep], r[keep], k[keep]
    for name, arr in (("labels", yy), ("production", p), ("challenger", c)):
        if len(arr) and (arr.min() < 0 or arr.max() > 2):
            raise ValueError(f"{name}: class ids must be 0 HOLD, 1 BUY, 2 SELL")
    if not (np.isfinite(r).all() and np.isfinite(k).all()):
        raise ValueError("fwd and cost must be finite on realised bars")
    if len(ts) == 0:
        return _Closes(np.zeros((0, _COLUMNS)), np.zeros(0, dtype=np.int64), 0)
    names, code = np.unique(sym.astype(str), return_inverse=True)
    order = np.lexsort((code, ts))
    ts, code, yy = ts[order], code[order], yy[order]
    p, c, r, k = p[order], c[order], r[order], k[order]
    dup = (ts[1:] == ts[:-1]) & (code[1:] == code[:-1])
    if dup.any():
        i = int(np.argmax(dup))
        raise ValueError(f"bar {names[code[i]]} at {ts[i]} ms is given twice")
    slot = ts // bar_ms
    starts = np.flatnonzero(np.r_[True, slot[1:] != slot[:-1]])
    cols = np.empty((len(ts), _COLUMNS))
    for j in range(3):
        cols[:, _TP_P.start + j] = (p == j) & (yy == j)
        cols[:, _PR_P.start + j] = p == j
        cols[:, _TP_C.start + j] = (c == j) & (yy == j)
        cols[:, _PR_C.start + j] = c == j
        cols[:, _TRUE.start + j] = yy == j
    cols[:, _ECON_P] = econ_scores(p, r, k)
    cols[:, _ECON_C] = econ_scores(c, r, k)
    cols[:, _BARS] = 1.0
    counts = np.add.reduceat(cols, starts, axis=0)
    return _Closes(counts, np.cumsum(counts[:, _BARS]).astype(np.int64), len(names))


# --- one look ------------------------------------------------------------------------------------
def _f1(tp: np.ndarray, pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Macro-F1 over the last axis of per-class counts (a class never seen nor called is 0)."""
    den = pred + true
    return np.mean(np.divide(2 * tp, den, out=np.zeros_like(den), where=den > 0), axis=-1)


def _required(f1_prod: np.ndarray, margin: float) -> np.ndarray:
    return np.where(f1_prod > 0, f1_prod * (1 + margin), margin)


@dataclass(frozen=True)
class _Look:
    n: int
    blocks: int
    block: int
    f1_p: float
    f1_c: float
    econ_p: float
    econ_c: float
    z: float
    var_c: float
    var_p: float
    cov: float
    econ_se: float


def _block_length(closes: int, cfg: EvidenceConfig) -> int:
    """Closes per block: at least a label horizon, growing as ``T ** (1/3)`` (Hall et al.)."""
    return max(cfg.horizon, math.ceil(closes ** (1 / 3)))


def _stats(total: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(F1 prod, F1 chal, econ prod per bar, econ chal per bar) of count rows (..., columns)."""
    bars = np.maximum(total[..., _BARS], 1.0)
    return (
        _f1(total[..., _TP_P], total[..., _PR_P], total[..., _TRUE]),
        _f1(total[..., _TP_C], total[..., _PR_C], total[..., _TRUE]),
        total[..., _ECON_P] / bars,
        total[..., _ECON_C] / bars,
    )


def _look(counts: np.ndarray, cfg: EvidenceConfig, look: int) -> _Look:
    """Point estimates and the bias-corrected circular-block-bootstrap spread on ``counts``."""
    closes = len(counts)
    L = _block_length(closes, cfg)
    k = math.ceil(closes / L)
    last = closes - (k - 1) * L  # the last block of a resample is cut to keep `closes` closes
    wrapped = np.concatenate([np.zeros((1, _COLUMNS)), counts, counts[:L]]).cumsum(axis=0)
    full = wrapped[L : L + closes] - wrapped[:closes]  # block of L closes starting at each close
    part = wrapped[last : last + closes] - wrapped[:closes]
    rng = np.random.default_rng([seed_value(cfg.seed), look])
    starts = rng.integers(0, closes, size=(cfg.resamples, k))
    total = np.einsum("bkc->bc", full[starts[:, :-1]]) + part[starts[:, -1]]  # 2x .sum()
    f1_p, f1_c, e_p, e_c = _stats(total)
    sums = counts.sum(axis=0)
    p_f1, c_f1, p_e, c_e = (float(v) for v in _stats(sums))
    d = f1_c - _required(f1_p, cfg.margin)
    d_hat = c_f1 - float(_required(np.array(p_f1), cfg.margin))
    # the resamples give the shape (covariances, nonlinearity); the closed-form correction the
    # level (see _inflation)
    k_d = _inflation(counts @ _gradient(sums, p_f1 > 0, cfg.margin), L)
    bars = max(float(sums[_BARS]), 1.0)
    diff_hat = c_e - p_e
    k_e = _inflation(
        (counts[:, _ECON_C] - counts[:, _ECON_P] - diff_hat * counts[:, _BARS]) / bars, L
    )
    se = math.sqrt(k_d) * float(np.std(d, ddof=1))
    z = d_hat / se if se > 0 else math.copysign(math.inf, d_hat) if d_hat else 0.0
    cov = k_d * np.cov(np.stack([f1_c, f1_p]))
    return _Look(
        n=int(sums[_BARS]),
        blocks=closes // L,
        block=L,
        f1_p=p_f1,
        f1_c=c_f1,
        econ_p=p_e,
        econ_c=c_e,
        z=z,
        var_c=float(cov[0, 0]),
        var_p=float(cov[1, 1]),
        cov=float(cov[0, 1]),
        econ_se=math.sqrt(k_e) * float(np.std(e_c - e_p, ddof=1)),
    )


def _gradient(sums: np.ndarray, prod_scores: bool, margin: float) -> np.ndarray:
    """d D / d (count totals), D = F1_chal - (1 + margin) F1_prod (or F1_chal - margin when
    production scores 0): a bar's share of D to first order is its counts times this."""
    out = np.zeros(_COLUMNS)
    w_p = -(1 + margin) if prod_scores else 0.0
    for tp, pr, w in ((_TP_C, _PR_C, 1.0), (_TP_P, _PR_P, w_p)):
        den = sums[pr] + sums[_TRUE]
        safe = np.where(den > 0, den, 1.0)
        g_tp = np.where(den > 0, 2 / safe, 0.0) / 3
        g_den = np.where(den > 0, -2 * sums[tp] / safe**2, 0.0) / 3
        out[tp] += w * g_tp
        out[pr] += w * g_den
        out[_TRUE] += w * g_den
    return out


def _cbb_variance(u: np.ndarray, block: int) -> float:
    """The circular block bootstrap's variance of ``sum(u)`` in closed form (what the resamples
    converge to for a linear statistic): ``T / block`` times the variance of the block sums."""
    T = len(u)
    wrapped = np.concatenate([[0.0], np.cumsum(np.concatenate([u, u[:block]]))])
    return T / block * float(np.var(wrapped[block : block + T] - wrapped[:T]))


def _inflation(u: np.ndarray, L: int) -> float:
    """Factor from the plain block-``L`` bootstrap variance to a bias-corrected one, computed
    on ``u``, each close's first-order share of the statistic.

    Two known biases of the block bootstrap, both downwards: the variance of the block sums
    is taken about their own mean, which loses ``block / T`` of it; and a lag-k correlation is
    weighted ``1 - k / L``, so overlapping labels (correlation fading over ``horizon`` closes)
    are under-counted by a fifth at ``L = horizon``. The fix: each estimate divided by
    ``1 - block / T``, then the flat-top combination ``2 V(2L) - V(L)`` (Politis & Romano),
    which weights every lag below L fully; never less than ``V(L)``."""
    T = len(u)
    raw = _cbb_variance(u, L)
    if raw <= 0 or 2 * L >= T:
        return 1.0 / (1 - L / T) if L < T else 1.0
    v1 = raw / (1 - L / T)
    v2 = _cbb_variance(u, 2 * L) / (1 - 2 * L / T)
    return max(v1, 2 * v2 - v1) / raw


def _fieller(lk: _Look, c: float) -> tuple[float, float]:
    """Relative improvements ``rho`` with ``|F1_c - (1 + rho) F1_p| <= c * se``: the test's
    own interval for ``F1_c / F1_p - 1`` (unbounded when production's F1 is not itself
    significantly above 0)."""
    a = lk.f1_p**2 - c * c * lk.var_p
    b = lk.f1_c * lk.f1_p - c * c * lk.cov
    q = lk.f1_c**2 - c * c * lk.var_c
    if a <= 0:
        return -math.inf, math.inf
    root = math.sqrt(max(b * b - a * q, 0.0))
    return (b - root) / a - 1, (b + root) / a - 1


# --- the decision --------------------------------------------------------------------------------
def _pct(v: float) -> str:
    return f"{v * 100:+.1f}%" if math.isfinite(v) else ("+inf" if v > 0 else "-inf")


def _bps(v: float) -> str:
    return f"{v * 1e4:+.1f}"


def _evidence(
    decision: Decision,
    reason: str,
    look: int,
    lk: _Look,
    c: float,
    cfg: EvidenceConfig,
    closes: _Closes,
    n_avail: int,
) -> PromotionEvidence:
    lo, hi = _fieller(lk, c) if math.isfinite(c) else (math.nan, math.nan)
    diff = lk.econ_c - lk.econ_p
    half = c * lk.econ_se
    return PromotionEvidence(
        decision=decision,
        reason=reason,
        look=look,
        looks=len(cfg.schedule),
        n=lk.n,
        n_available=n_avail,
        n_blocks=lk.blocks,
        block_closes=lk.block,
        n_symbols=closes.n_symbols,
        production_f1=lk.f1_p,
        challenger_f1=lk.f1_c,
        improvement=lk.f1_c / lk.f1_p - 1 if lk.f1_p > 0 else math.nan,
        improvement_low=lo,
        improvement_high=hi,
        production_econ=lk.econ_p,
        challenger_econ=lk.econ_c,
        econ_diff=diff,
        econ_diff_low=diff - half if math.isfinite(c) else math.nan,
        econ_diff_high=diff + half if math.isfinite(c) else math.nan,
        z=lk.z,
        critical=c,
        margin=cfg.margin,
        confidence=cfg.confidence,
    )


def _describe(lk: _Look, c: float, cfg: EvidenceConfig) -> tuple[str, str]:
    """('macro-F1 +6.1% [+2.4%, +9.9%] at 95%', 'earns +0.8 bps/bar more [-0.2, +1.9]')."""
    lo, hi = _fieller(lk, c)
    rel = lk.f1_c / lk.f1_p - 1 if lk.f1_p > 0 else math.nan
    f1 = (
        f"macro-F1 {_pct(rel)} [{_pct(lo)}, {_pct(hi)}] at {cfg.confidence:.0%}"
        if lk.f1_p > 0
        else f"macro-F1 {lk.f1_c:.3f} vs 0 at {cfg.confidence:.0%}"
    )
    diff = lk.econ_c - lk.econ_p
    econ = (
        f"earns {_bps(diff)} bps/bar {'more' if diff >= 0 else 'less'} "
        f"[{_bps(diff - c * lk.econ_se)}, {_bps(diff + c * lk.econ_se)}]"
    )
    return f1, econ


def judge(
    ts_ms: Sequence[int] | np.ndarray,
    symbol: Sequence[Any] | np.ndarray,
    y: Sequence[int] | np.ndarray,
    prod: Sequence[Any] | np.ndarray,
    chal: Sequence[Any] | np.ndarray,
    fwd: Sequence[float] | np.ndarray,
    cost: float | Sequence[float] | np.ndarray,
    config: EvidenceConfig | None = None,
    seed: int | str | None = None,
) -> PromotionEvidence:
    """The decision on all bars scored by both models so far (see the module docstring).

    One row per bar: close time (ms), symbol, realised label (``-1``: not yet, left out),
    production's and the challenger's class (ids or :class:`~schemas.signals.Action`),
    realised forward log return over the label horizon and round-trip cost (a fraction).
    Row order does not matter. Pass all bars whose label is realised, as of now: a look is
    taken on the first ``n_k`` bars by time, so bars that arrive late with an earlier time
    change the looks they fall in. ``seed`` (e.g. the cycle id and model) overrides
    ``config.seed``.
    """
    cfg = config or EvidenceConfig()
    if seed is not None:
        cfg = replace(cfg, seed=seed)
    closes = _fold(ts_ms, symbol, y, prod, chal, fwd, cost, cfg.bar_ms)
    n_avail = int(closes.cum_bars[-1]) if len(closes.cum_bars) else 0
    schedule = cfg.schedule
    first = 0  # the first look taken (1-based); its bounds cover it and every later look
    bounds: tuple[float, ...] = ()
    last: tuple[int, _Look, float] | None = None
    for i, n_k in enumerate(schedule, start=1):
        if n_avail < n_k:
            break
        m = int(np.searchsorted(closes.cum_bars, n_k)) + 1  # whole closes up to bar n_k
        if not first:
            if m // _block_length(m, cfg) < cfg.min_blocks:
                continue
            first = i
            bounds = spending_bounds(
                tuple(n / cfg.max_bars for n in schedule[i - 1 :]), cfg.alpha, cfg.spending
            )
        c_z = bounds[i - first]
        lk = _look(closes.counts[:m], cfg, i)
        c = t_quantile(_NORMAL.cdf(c_z), lk.blocks - 1) if _NORMAL.cdf(c_z) < 1 else math.inf
        f1, econ = _describe(lk, c, cfg)
        if lk.z > c and lk.econ_c >= lk.econ_p:
            return _evidence(
                Decision.PROMOTE, f"promoted: {f1}, {econ}", i, lk, c, cfg, closes, n_avail
            )
        if lk.z < -c:
            return _evidence(
                Decision.RETIRE_NOT_BETTER,
                f"not better: {f1}, not more than {_pct(cfg.margin)}",
                i,
                lk,
                c,
                cfg,
                closes,
                n_avail,
            )
        if n_k == cfg.max_bars:
            why = f"better but {econ}" if lk.z > c else f"not significant: {f1}"
            return _evidence(
                Decision.RETIRE_UNPROVEN,
                f"unproven after {lk.n} bars: {why}",
                i,
                lk,
                c,
                cfg,
                closes,
                n_avail,
            )
        last = (i, lk, c)
    if last is not None:
        i, lk, c = last
        f1, econ = _describe(lk, c, cfg)
        why = f"better but {econ}" if lk.z > c else f"not significant yet: {f1}"
        return _evidence(
            Decision.WAIT, f"{why}; next look at {schedule[i]} bars", i, lk, c, cfg, closes, n_avail
        )
    return _waiting(closes, n_avail, cfg)


def judge_challenger(
    rows: Mapping[str, np.ndarray],
    config: EvidenceConfig | None = None,
    seed: int | str | None = None,
) -> PromotionEvidence:
    """:func:`judge` on named columns ``ts_ms, symbol, y, prod, chal, fwd, cost``."""
    return judge(
        rows["ts_ms"],
        rows["symbol"],
        rows["y"],
        rows["prod"],
        rows["chal"],
        rows["fwd"],
        rows["cost"],
        config,
        seed,
    )


def _waiting(closes: _Closes, n_avail: int, cfg: EvidenceConfig) -> PromotionEvidence:
    """No look taken yet: point estimates over what there is, no intervals."""
    schedule = cfg.schedule
    total = closes.counts.sum(axis=0) if n_avail else np.zeros(_COLUMNS)
    p_f1, c_f1, p_e, c_e = (float(v) for v in _stats(total))
    L = _block_length(len(closes.counts), cfg) if n_avail else cfg.horizon
    blocks = len(closes.counts) // L
    lk = _Look(
        n=n_avail,
        blocks=blocks,
        block=L,
        f1_p=p_f1,
        f1_c=c_f1,
        econ_p=p_e,
        econ_c=c_e,
        z=math.nan,
        var_c=math.nan,
        var_p=math.nan,
        cov=math.nan,
        econ_se=math.nan,
    )
    if n_avail < cfg.min_bars:
        reason = f"waiting: {n_avail} of {cfg.min_bars} bars"
    else:
        reason = (
            f"waiting: {n_avail} bars make {blocks} blocks of {L} bar closes; a look "
            f"needs {cfg.min_blocks}"
        )
    if n_avail >= cfg.max_bars:
        return _evidence(
            Decision.RETIRE_UNPROVEN,
            f"unproven after {n_avail} bars: only {blocks} blocks of {L} bar "
            f"closes, a look needs {cfg.min_blocks}",
            len(schedule),
            lk,
            math.nan,
            cfg,
            closes,
            n_avail,
        )
    return _evidence(Decision.WAIT, reason, 0, lk, math.nan, cfg, closes, n_avail)


class ShadowEvidence:
    """The incremental form: feed bars as their labels realise, ask :meth:`result` any time.

    The answer is :func:`judge` over every bar fed so far, except that a final decision, once
    given, is kept (the shadow test is over).
    """

    def __init__(self, config: EvidenceConfig | None = None) -> None:
        self.config = config or EvidenceConfig()
        self._chunks: list[tuple[np.ndarray, ...]] = []
        self._result: PromotionEvidence | None = None

    def add(
        self,
        ts_ms: Sequence[int] | np.ndarray,
        symbol: Sequence[Any] | np.ndarray,
        y: Sequence[int] | np.ndarray,
        prod: Sequence[Any] | np.ndarray,
        chal: Sequence[Any] | np.ndarray,
        fwd: Sequence[float] | np.ndarray,
        cost: float | Sequence[float] | np.ndarray,
    ) -> None:
        """Append bars (same columns as :func:`judge`)."""
        ts = np.atleast_1d(np.asarray(ts_ms, dtype=np.int64))
        chunk = (
            ts,
            np.atleast_1d(np.asarray(symbol)),
            np.atleast_1d(np.asarray(y)),
            np.atleast_1d(np.asarray(prod)),
            np.atleast_1d(np.asarray(chal)),
            np.atleast_1d(np.asarray(fwd, dtype=np.float64)),
            np.broadcast_to(np.asarray(cost, dtype=np.float64), ts.shape),
        )
        if len({len(a) for a in chunk}) != 1:
            raise ValueError("every column of a chunk must have the same length")
        self._chunks.append(chunk)
        if self._result is not None and not self._result.decision.final:
            self._result = None

    def __len__(self) -> int:
        return sum(len(c[0]) for c in self._chunks)

    def result(self) -> PromotionEvidence:
        """The current decision (cached until more bars arrive; final decisions stay)."""
        if self._result is None:
            cols = (
                [np.concatenate(col) for col in zip(*self._chunks, strict=True)]
                if self._chunks
                else [np.zeros(0, dtype=np.int64)] * 7
            )
            ts_ms, symbol, y, prod, chal, fwd, cost = cols
            self._result = judge(ts_ms, symbol, y, prod, chal, fwd, cost, config=self.config)
        return self._result
