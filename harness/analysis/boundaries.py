"""Group-sequential boundaries: how much error each look may spend, and where a standardised
statistic must reach to spend it (docs/analysis.md, "Sequential studies").

    boundaries(looks, alpha, cap=200) -> array of |Z| boundaries, one a look
    crossings(bounds, looks, drift=0.0) -> (upper, lower) chances of crossing first at each look

The law: a statistic observed at looks with information n_1 < ... < n_K (trials a variant)
behaves, asymptotically, as Z_k = B(n_k) / sqrt(n_k) for a Brownian motion B with drift
(canonical joint distribution, Jennison & Turnbull 2000, section 3.1), so only the ratios
of the n_k matter. The chance of first crossing at each look is carried from look to look
as the density of B on the continuation region (Armitage, McPherson & Rowe 1969),
integrated with Simpson's rule on a grid of GRID points (Jennison & Turnbull 2000,
chapter 19). Accuracy: published constants are met to 5e-4 (tests/test_sequential.py).

Spending (Lan & DeMets 1983): look k may spend what the spending function allows at its
information fraction n_k / cap_k, less what earlier looks spent. `cap` may differ from look to
look (the cap in force when each look was judged: a cap raised between looks leaves the
earlier looks' boundaries as they were, since those depend on earlier looks only, and the
later looks spend only what is left; a look at its cap spends all of it).
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import optimize, stats

GAMMA = -2.0  # the spending function's shape (docs/analysis.md: chosen by simulation on the reference study)
GRID = 1001  # points of Simpson's rule over one look's continuation region (odd)
SPAN = 9.0  # the carried density is kept within this many standard deviations of its mean
LARGEST = 40.0  # a boundary that spends (next to) nothing: never crossed
NOTHING = 1e-12  # error below this is not worth a boundary


def spent(t, alpha: float, gamma: float = GAMMA):
    """The error rate spent by information fraction t (0 at t = 0, alpha at t = 1): the
    spending family of Hwang, Shih & DeCani (1990), alpha (1 - e^{-gamma t}) / (1 - e^{-gamma}).
    gamma = -2 spends little early (boundaries near 3.1-3.3 in the first quarter of the cap),
    so a large difference stops a study early while the last look keeps most of its power."""
    t = np.minimum(np.asarray(t, dtype=float), 1.0)
    return alpha * (1 - np.exp(-gamma * t)) / (1 - np.exp(-gamma))


def _simpson(points: np.ndarray) -> np.ndarray:
    weights = np.ones(len(points))
    weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0
    return weights * (points[1] - points[0]) / 3


class _Carried:
    """The density of B on the continuation region, carried look by look; information t
    (any scale), drift theta per unit of information."""

    def __init__(self, drift: float = 0.0):
        self.drift, self.t = float(drift), 0.0
        self.points = self.mass = None  # grid and density times Simpson weight

    def _moved(self, t):
        """The mean and deviation of B's increment from the last look to information t."""
        step = t - self.t
        return self.drift * step, np.sqrt(step)

    def cross(self, c: float, t: float) -> tuple[float, float]:
        """Chances of first crossing above +c and below -c (in Z units) at information t."""
        edge = c * np.sqrt(t)
        if self.points is None:
            sd, mean = np.sqrt(t), self.drift * t
            return float(stats.norm.sf((edge - mean) / sd)), float(stats.norm.cdf((-edge - mean) / sd))
        mean, sd = self._moved(t)
        upper = float(self.mass @ stats.norm.sf((edge - self.points - mean) / sd))
        lower = float(self.mass @ stats.norm.cdf((-edge - self.points - mean) / sd))
        return upper, lower

    def advance(self, c: float, t: float) -> None:
        """Go on past the look at information t, whose boundary is c."""
        edge, centre, reach = c * np.sqrt(t), self.drift * t, SPAN * np.sqrt(t)
        low, high = max(-edge, centre - reach), min(edge, centre + reach)
        if high <= low:  # nothing left inside: every path has crossed
            self.points, self.mass = np.array([0.0, 0.0, 0.0]), np.zeros(3)
            self.t = t
            return
        points = np.linspace(low, high, GRID)
        if self.points is None:
            density = stats.norm.pdf(points, loc=centre, scale=np.sqrt(t))
        else:
            mean, sd = self._moved(t)
            density = stats.norm.pdf((points[:, None] - self.points[None, :] - mean) / sd) @ self.mass / sd
        self.points, self.mass, self.t = points, density * _simpson(points), t


def crossings(bounds, looks, drift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(upper, lower): the chance that Z first reaches +bounds[k] (upper) or -bounds[k]
    (lower) at look k, for Z_k = (B(n_k) + drift n_k) / sqrt(n_k) observed at the looks'
    information `looks` (increasing; any scale)."""
    carried, upper, lower = _Carried(drift), [], []
    for c, n in zip(bounds, np.asarray(looks, dtype=float)):
        up, down = carried.cross(float(c), float(n))
        upper.append(up)
        lower.append(down)
        carried.advance(float(c), float(n))
    return np.array(upper), np.array(lower)


def _caps(looks: np.ndarray, cap) -> np.ndarray:
    caps = np.broadcast_to(np.asarray(looks[-1] if cap is None else cap, dtype=float), looks.shape).copy()
    if np.any(looks > caps * (1 + 1e-12)):
        raise ValueError(f"every look must be at most the cap in force at it: looks {looks}, caps {caps}")
    return caps


def _solve(looks, caps, allowed) -> np.ndarray:
    """Each look's boundary: look k spends allowed(n_k, cap_k) (cumulative) less what the
    looks before it spent; nothing once earlier looks spent it all."""
    carried, found, used = _Carried(), [], 0.0
    for n, cap in zip(looks, caps):
        rate = allowed(n, cap) - used

        def crossing(c, n=n):
            return sum(carried.cross(c, n))
        c = LARGEST
        if rate > NOTHING and rate > crossing(LARGEST):
            c = optimize.brentq(lambda c: crossing(c) - rate, 1e-6, LARGEST, xtol=1e-10)
        used += crossing(c)
        carried.advance(c, n)
        found.append(c)
    return np.array(found)


@functools.lru_cache(maxsize=512)
def _boundaries(looks: tuple, caps: tuple, alpha: float, gamma: float) -> np.ndarray:
    result = _solve(looks, caps, lambda n, cap: alpha if n >= cap else float(spent(n / cap, alpha, gamma)))
    result.flags.writeable = False
    return result


def boundaries(looks, alpha: float, cap=None, spending=None, gamma: float = GAMMA) -> np.ndarray:
    """Two-sided boundaries c_k of |Z| at the looks (information n_1 < ... < n_K, e.g. trials a
    variant): under no difference P(|Z_j| < c_j for j < k, |Z_k| >= c_k) is what look k may
    spend, so that the chance of ever crossing is alpha once a look reaches its cap.

    cap: the information at which all of alpha is spent, one number or one a look (the cap
    in force when that look was judged); default: the last look. spending(t, alpha): the
    spending function (default: `spent` with this gamma)."""
    looks = np.asarray(looks, dtype=float)
    if not len(looks) or looks[0] <= 0 or np.any(np.diff(looks) <= 0):
        raise ValueError(f"looks must be positive and increase: {looks}")
    caps = _caps(looks, cap)
    if spending is None:
        return _boundaries(tuple(looks), tuple(caps), float(alpha), float(gamma))
    return _solve(looks, caps, lambda n, cap: float(spending(min(n / cap, 1.0), alpha)))


def spent_by(bounds, looks) -> np.ndarray:
    """The error spent up to each look by these boundaries under no difference (cumulative)."""
    upper, lower = crossings(bounds, looks)
    return np.cumsum(upper + lower)
