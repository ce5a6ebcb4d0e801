"""data.label_issues: likely mislabeled training examples, found by confident learning.

Recipe stage 1 ("find ... bad labels"). A cheap model (logistic regression on standardised,
downsampled grey pixels) is cross-validated over the training split, so every example gets
predicted probabilities from a model that never saw it. Confident learning (Northcutt et
al., "Confident Learning", JAIR 2021; cleanlab's `find_label_issues` with
`filter_by="prune_by_noise_rate"` is the reference behaviour) turns them into a list:

- per-class threshold t_j = mean predicted probability of class j over examples labelled j;
- confident joint C[i][j]: examples labelled i whose most probable class among those above
  their threshold is j; calibrated so row i sums to the count of label i, then normalised
  into the joint Q of (given, true) labels; the noise rate is 1 - trace(Q);
- for each off-diagonal (i, j), the round(n * Q[i][j]) examples labelled i with the largest
  margin p_j - p_i are suspects, less those the model itself predicts as their given label.

Suspects are ranked by self-confidence (the probability of the given label, lowest first).
Pure: arrays in, a `LabelIssues` record and a Verdict out; `label_issues_figure` draws the
top suspects for the stage to save.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runner.checks import Verdict, skip

NAME = "data.label_issues"


@dataclass
class LabelIssue:
    index: int  # row in the features/labels given (the training split's index)
    given: int  # the label in the data
    suggested: int  # the class the out-of-sample model finds most probable
    score: float  # self-confidence: out-of-sample probability of the given label (low = suspect)


@dataclass
class LabelIssues:
    issues: list[LabelIssue]  # suspects, most suspect first
    noise_rate: float  # estimated fraction of examples whose given label is wrong (1 - trace Q)
    thresholds: list[float]  # per-class confident-learning thresholds t_j
    examples: int
    folds: int
    accuracy: float  # out-of-sample accuracy of the cheap model against the given labels
    seconds: float
    chance: float = 0.0  # accuracy of always predicting the most frequent given label
    joint: list[list[float]] = field(default_factory=list)  # estimated joint Q[given][true]

    @property
    def skill(self) -> float:
        """How far the model's accuracy is from the majority rate towards 1 (0 = no better)."""
        return (self.accuracy - self.chance) / (1.0 - self.chance) if self.chance < 1 else 0.0


# ----------------------------------------------------------------------------- features
def image_features(images, size: int = 16) -> np.ndarray:
    """(N, D) float32 features of images: grey, area-averaged down to at most size x size.

    `images`: a (N, C, H, W) or (N, H, W) tensor or array, uint8 (0..255) or float (any
    scale: the model standardises each feature). Small images (digits' 8x8) are kept as they
    are; a larger one is shrunk by an integer factor, so a 32x32 image gives 16x16 = 256
    features. Colour is averaged away: mislabels are about shape, and 3x the features would
    triple the time for little gain.
    """
    a = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4:
        raise ValueError(f"expected images of shape (N, C, H, W) or (N, H, W), got {a.shape}")
    n, _, h, w = a.shape
    g = a.astype(np.float32).mean(axis=1)
    fh, fw = max(1, -(-h // size)), max(1, -(-w // size))
    h2, w2 = h // fh * fh, w // fw * fw
    g = g[:, :h2, :w2].reshape(n, h2 // fh, fh, w2 // fw, fw).mean(axis=(2, 4))
    return g.reshape(n, -1)


# ----------------------------------------------------------------------------- the search
def out_of_sample_probs(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    folds: int = 5,
    seed: int = 0,
    max_dims: int = 64,
    c: float = 0.1,
) -> np.ndarray:
    """(N, num_classes) predicted probabilities, each from a model that did not see the row.

    Standardise, PCA to at most `max_dims` dimensions (fitted without labels, so no leak),
    then multinomial logistic regression with strong L2 (C=`c`): a model that cannot
    memorise the flipped labels it trains on. Linear in N.
    """
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    x = StandardScaler().fit_transform(np.asarray(features, dtype=np.float64))
    dims = min(max_dims, x.shape[0] - 1)  # PCA needs fewer components than rows
    if x.shape[1] > dims >= 1:
        x = PCA(dims, svd_solver="randomized", random_state=seed).fit_transform(x)
    probs = np.zeros((len(labels), num_classes))
    split = StratifiedKFold(folds, shuffle=True, random_state=seed)
    for tr, te in split.split(x, labels):
        model = LogisticRegression(C=c, max_iter=300)
        model.fit(x[tr], labels[tr])
        probs[np.ix_(te, model.classes_)] = model.predict_proba(x[te])
    return probs


def confident_learning(probs: np.ndarray, labels: np.ndarray, num_classes: int):
    """(suspect mask, noise rate, thresholds, joint Q) from out-of-sample probabilities."""
    n, k = len(labels), num_classes
    counts = np.bincount(labels, minlength=k)
    thresholds = np.array([probs[labels == j, j].mean() if counts[j] else np.inf for j in range(k)])
    # the 1e-6 slack is cleanlab's: a threshold equal to a probability counts as reached
    above = probs >= thresholds - 1e-6
    confident = above.any(axis=1)
    true_class = np.where(above, probs, -1.0).argmax(axis=1)
    joint = np.zeros((k, k))
    np.add.at(joint, (labels[confident], true_class[confident]), 1.0)
    rows = joint.sum(axis=1, keepdims=True)
    # calibrate: row i sums to the count of label i (a class with no confident row keeps
    # its examples on the diagonal: no evidence of noise)
    joint = np.where(
        rows > 0, joint / np.maximum(rows, 1) * counts[:, None], np.diag(counts.astype(float))
    )
    q = joint / max(joint.sum(), 1.0)
    noise_rate = float(1.0 - np.trace(q))
    prune = np.round(q * n).astype(int)
    suspect = np.zeros(n, bool)
    for i in range(k):
        members = np.flatnonzero(labels == i)
        for j in range(k):
            if i == j or prune[i, j] == 0 or len(members) == 0:
                continue
            margin = probs[members, j] - probs[members, i]
            suspect[members[np.argsort(-margin, kind="stable")[: prune[i, j]]]] = True
    # cleanlab's last step: the model agreeing with the given label is no evidence against it
    suspect &= probs.argmax(axis=1) != labels
    return suspect, noise_rate, thresholds, q


def find_label_issues(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    folds: int = 5,
    seed: int = 0,
    max_dims: int = 64,
) -> LabelIssues:
    """Likely mislabeled rows of (features, labels), most suspect first, and the noise rate.

    `features`: (N, D) floats, e.g. `image_features(images)`; `labels`: (N,) ints in
    [0, num_classes). `folds` is lowered to the smallest class count when a class is
    rarer (a class with one example cannot be held out and still be learned).
    """
    t0 = time.perf_counter()
    labels = np.asarray(labels).astype(np.int64).ravel()
    features = np.asarray(features).reshape(len(labels), -1)
    present = np.bincount(labels, minlength=num_classes)
    folds = int(max(2, min(folds, present[present > 0].min())))
    probs = out_of_sample_probs(features, labels, num_classes, folds, seed, max_dims)
    suspect, noise_rate, thresholds, q = confident_learning(probs, labels, num_classes)
    idx = np.flatnonzero(suspect)
    self_conf = probs[idx, labels[idx]]
    order = idx[np.argsort(self_conf, kind="stable")]
    suggested = probs.argmax(axis=1)
    issues = [
        LabelIssue(int(i), int(labels[i]), int(suggested[i]), float(probs[i, labels[i]]))
        for i in order
    ]
    return LabelIssues(
        issues=issues,
        noise_rate=noise_rate,
        thresholds=[float(t) for t in thresholds],
        examples=len(labels),
        folds=folds,
        accuracy=float((suggested == labels).mean()),
        chance=float(present.max() / max(len(labels), 1)),
        seconds=time.perf_counter() - t0,
        joint=q.round(5).tolist(),
    )


# ----------------------------------------------------------------------------- the verdict
def _class(c: int, class_names: Sequence[str] | None) -> str:
    return str(class_names[c]) if class_names and 0 <= c < len(class_names) else str(c)


def label_issues_verdict(
    result: LabelIssues | None,
    max_noise_rate: float = 0.05,
    max_listed: int = 50,
    class_names: Sequence[str] | None = None,
    example_names: Sequence[str] | None = None,
    min_skill: float = 0.5,
) -> Verdict:
    """data.label_issues: warn when the estimated noise rate is above `max_noise_rate`.
    Skip when the cheap model's skill (its accuracy's share of the way from the majority rate
    to 1) is below `min_skill`: then it disagrees with labels it merely cannot learn.

    value = the estimated fraction of wrong labels; details list the `max_listed` most
    suspect examples (index, name, given, suggested, score) and the model's numbers. None
    (nothing to learn from) is a skip.
    """
    if result is None or result.examples == 0:
        return skip(NAME, "no training examples to look for label issues in")
    if result.skill < min_skill:
        # a model that cannot learn the labels from pixels disagrees with most of them: its
        # disagreement says nothing about any one label
        return skip(
            NAME,
            f"the cheap model learns too little from pixels to judge single labels "
            f"(out-of-sample accuracy {result.accuracy:.3f} vs {result.chance:.3f} "
            f"by majority: skill {result.skill:.2f} < {min_skill:g})",
        )
    expected = f"estimated label noise <= {max_noise_rate:.1%}"
    rows: list[dict[str, Any]] = []
    for it in result.issues[:max_listed]:
        row = {
            "index": it.index,
            "given": _class(it.given, class_names),
            "suggested": _class(it.suggested, class_names),
            "score": round(it.score, 4),
        }
        if example_names is not None:
            row["name"] = str(example_names[it.index])
        rows.append(row)
    details = {
        "suspects": len(result.issues),
        "listed": rows,
        "examples": result.examples,
        "noise_rate": round(result.noise_rate, 5),
        "folds": result.folds,
        "model_accuracy": round(result.accuracy, 4),
        "thresholds": [round(t, 4) for t in result.thresholds],
    }
    n = len(result.issues)
    found = (
        f"{n} of {result.examples} training labels look wrong to a {result.folds}-fold "
        f"cross-validated linear model (estimated noise {result.noise_rate:.1%})"
    )
    if result.noise_rate > max_noise_rate:
        top = ", ".join(
            f"{r.get('name', '#' + str(r['index']))} ({r['given']} -> {r['suggested']})"
            for r in rows[:5]
        )
        return Verdict(
            NAME,
            "warn",
            value=result.noise_rate,
            expected=expected,
            message=f"{found}; look at the grid of suspects, e.g. {top}, and fix "
            "or drop the wrong ones before tuning a model on them",
            details=details,
            seconds=result.seconds,
        )
    return Verdict(
        NAME,
        "pass",
        value=result.noise_rate,
        expected=expected,
        message=found + (": few enough to leave, but look at them" if n else ""),
        details=details,
        seconds=result.seconds,
    )


def label_issues_figure(
    images, issues: Sequence[LabelIssue], class_names: Sequence[str] | None = None, ncol: int = 8
):
    """A grid of the suspects' images (in [0, 1] or uint8), captioned "given -> suggested"."""
    import torch

    from runner.checks.figures import image_grid

    x = images if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if x.ndim == 3:
        x = x[:, None]
    lo, hi = x.amin(dim=(1, 2, 3), keepdim=True), x.amax(dim=(1, 2, 3), keepdim=True)
    if float(x.min()) < 0 or float(x.max()) > 1:  # normalised tensors: stretch each to [0, 1]
        x = (x - lo) / (hi - lo).clamp_min(1e-8)
    titles = [
        f"#{it.index}: {_class(it.given, class_names)} -> "
        f"{_class(it.suggested, class_names)}\np={it.score:.2f}"
        for it in issues
    ]
    return image_grid(
        x[: len(titles)],
        titles,
        "likely label issues (given -> suggested, p = given label's prob.)",
        ncol,
    )
