"""datacurve.more_data: would more data help? A saturating power law fitted to a learning curve
(runner/stages/datacurve.py trains its points), its prediction at twice the training data with
a residual-bootstrap interval, the verdict and the plot. Pure: numbers in, a Verdict out."""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import numpy as np

from runner.checks import Verdict

NAME = "datacurve.more_data"


# ----------------------------------------------------------------------------- the fit
def power_law(n, a, b, c):
    return a * np.power(n, -b) + c


def fit(n: np.ndarray, err: np.ndarray) -> Optional[np.ndarray]:
    """(a, b, c) of error(n) = a n^-b + c, least squares; None when it does not converge."""
    from scipy.optimize import curve_fit

    n, err = np.asarray(n, float), np.asarray(err, float)
    lo_c = 0.0
    hi_c = max(float(err.min()), 1e-9)
    n0 = float(n.min())
    p0 = [max(float(err.max()) - float(err.min()), 1e-3) * n0**0.5, 0.5, 0.5 * hi_c]
    try:
        p, _ = curve_fit(
            power_law,
            n,
            err,
            p0=p0,
            bounds=([0.0, 1e-3, lo_c], [np.inf, 3.0, hi_c]),
            maxfev=5000,
        )
    except (RuntimeError, ValueError):
        return None
    return p


def predict(
    n: np.ndarray, err: np.ndarray, n_full: float, refits: int, seed: int = 0
) -> Dict[str, Any]:
    """The fit, and the accuracy gain at 2 x n_full with a residual-bootstrap interval."""
    p = fit(n, err)
    if p is None:
        return {}
    gain = float(power_law(n_full, *p) - power_law(2 * n_full, *p))
    rng = np.random.default_rng(seed)
    resid = err - power_law(n, *p)
    grid = np.geomspace(float(n.min()), 2 * n_full, 50)
    curves, gains = [], []
    for _ in range(refits):
        q = fit(n, np.clip(power_law(n, *p) + rng.choice(resid, len(resid)), 0, 1))
        if q is None:
            continue
        gains.append(power_law(n_full, *q) - power_law(2 * n_full, *q))
        curves.append(power_law(grid, *q))
    out = {
        "a": float(p[0]),
        "b": float(p[1]),
        "c": float(p[2]),
        "gain_2x": gain,
        "acc_full": float(1 - power_law(n_full, *p)),
        "acc_2x": float(1 - power_law(2 * n_full, *p)),
        "grid": grid.tolist(),
        "fit": (1 - power_law(grid, *p)).tolist(),
    }
    if gains:
        out["gain_2x_interval"] = [
            float(np.percentile(gains, 2.5)),
            float(np.percentile(gains, 97.5)),
        ]
        band = 1 - np.array(curves)
        out["band"] = [
            np.percentile(band, 2.5, axis=0).tolist(),
            np.percentile(band, 97.5, axis=0).tolist(),
        ]
    return out


def more_data_verdict(
    rows: Sequence[Dict[str, Any]], pred: Dict[str, Any], min_gain: float = 0.5
) -> Verdict:
    """`rows`: the curve's points ({"n_train", "val_error", "val_acc"}); `pred`: predict()'s
    result ({} when there was nothing to fit)."""
    sizes = sorted({r["n_train"] for r in rows if r["val_error"] is not None})
    expected = f"a gain of more than {min_gain:g} points at 2x the training data"
    if len(sizes) < 3 or not pred:
        return Verdict(
            NAME,
            "skip",
            expected=expected,
            message=f"{len(sizes)} distinct training size(s) with a result"
            + ("" if len(sizes) < 3 else ": the power law did not converge")
            + "; a curve needs 3 or more (stage.params.fractions)",
        )
    g = 100 * pred["gain_2x"]
    lo, hi = (100 * x for x in pred.get("gain_2x_interval", [pred["gain_2x"]] * 2))
    n_full = sizes[-1]
    details = {k: v for k, v in pred.items() if k not in ("grid", "fit", "band")}
    details["sizes"] = sizes
    where = (
        f"at {n_full} training images, val accuracy {100 * pred['acc_full']:.1f}%; at "
        f"{2 * n_full} (2x) the fit predicts {100 * pred['acc_2x']:.1f}%"
    )
    if lo > min_gain:
        return Verdict(
            NAME,
            "pass",
            value=round(g, 3),
            expected=expected,
            message=f"more data would help: about +{g:.1f} points at 2x the data (95% interval "
            f"+{lo:.1f} to +{hi:.1f}; {where}): collecting more labelled images is the best "
            "regulariser here",
            details=details,
        )
    return Verdict(
        NAME,
        "warn",
        value=round(g, 3),
        expected=expected,
        message=f"the curve is flat: +{g:.1f} points at 2x the data (95% interval {lo:+.1f} to "
        f"{hi:+.1f}; {where}): more of the same data would not help much; look at the model "
        "(capacity, input size, pretrained weights) or the labels (stage=inspect's "
        "data.label_issues)",
        details=details,
    )


def figure(rows: Sequence[Dict[str, Any]], pred: Dict[str, Any]):
    import matplotlib.pyplot as plt

    from runner.plots import laid_out

    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    ok = [r for r in rows if r["val_acc"] is not None]
    ax.scatter(
        [r["n_train"] for r in ok],
        [r["val_acc"] for r in ok],
        s=18,
        c="C0",
        label="points (each seed)",
        zorder=3,
    )
    if pred.get("grid"):
        ax.plot(pred["grid"], pred["fit"], "C1-", label="fit: 1 - (a n^-b + c)")
        if pred.get("band"):
            ax.fill_between(
                pred["grid"],
                pred["band"][0],
                pred["band"][1],
                color="C1",
                alpha=0.2,
                label="95% band (bootstrap)",
            )
        n2 = pred["grid"][-1]
        ax.scatter(
            [n2],
            [pred["acc_2x"]],
            marker="*",
            s=120,
            c="C3",
            zorder=4,
            label=f"2x the data: {100 * pred['acc_2x']:.1f}%",
        )
    ax.set_xscale("log")
    ax.set_xlabel("training images")
    ax.set_ylabel("val accuracy")
    ax.set_title("learning curve")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return laid_out(fig)
