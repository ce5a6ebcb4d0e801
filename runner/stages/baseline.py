"""stage=baseline: recipe stage 2 - end-to-end skeleton, dumb baselines, sanity checks.

Fixed seed, no augmentation, no regularisation, no LR decay (conf/stage/baseline.yaml),
a small model, the whole validation set, and the checks that earn trust in the setup:
cheap checks on the untrained model first, then the real run, then the checks that need
it, then the evidence a person looks at (prediction dynamics, confusion, top losses).
Every check is switched and tuned under `checks.<name with '.' -> '_'>`.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import time
from typing import TYPE_CHECKING, Dict, List, Tuple

from runner import jobs
from runner.checks import Verdict, skip
from runner.report import Figure, Section, Table, Text
from runner.stages import train
from runner.stages.protocol import Context, Headline, StageResult, run_check

if TYPE_CHECKING:
    import torch

log = logging.getLogger("runner")

# builds on stage=train; its checks are tuned under checks.*, not stage.params
Params = train.Params
# the recipe's first trained model: the next training stage starts from its outcome, while
# it starts from scratch itself (the skeleton must stand on its own)
TRAINS = True
outcome = train.outcome


def headline(run_dir, own=()) -> Headline:
    """The model and its budget, then what it changed; its best val accuracy."""

    s = jobs.summary(run_dir)
    what = f"{s.get('model', '?')}, {s.get('epochs', '?')} epochs"
    more = train.changed(run_dir, s, own)
    return Headline(
        s.get("best_val_acc", s.get("val_acc")), what if more == what else f"{what} {more}"
    )


def run(cfg, ctx: Context) -> StageResult:
    from runner.checks.baselines import majority_accuracy
    from runner.stages.common import (
        build_data_for,
        build_model_for,
        loaders,
        result_of,
        setup_runtime,
        summary_of,
        train_run,
    )

    device = setup_runtime(cfg)
    data = build_data_for(cfg, ctx)
    model = build_model_for(cfg, data, ctx, device)
    train_loader, _ = loaders(cfg, data, device)
    x, y = first_examples(train_loader, _pool_size(cfg))
    _import_now()

    verdicts = checks_before_training(cfg, ctx, data, model, train_loader, x, y, device)
    log.info("train: the skeleton, end to end")
    res = train_run(
        cfg, ctx, data=data, model=model, keep_val_logits=cfg.checks.predictions.enabled
    )
    verdicts += checks_after_training(cfg, ctx, data, res, verdicts, device, (x, y))

    majority = majority_accuracy(data.train.labels, data.val.labels, data.num_classes)
    ii = next((v for v in verdicts if v.name == "baseline.input_independent"), None)
    baselines = {
        "majority_acc": majority,
        "zero_input_acc": ii.details.get("zero_input_acc") if ii else None,
        "human_baseline": cfg.human_baseline,
        "model_acc": res.history[-1]["val_acc"] if res.history else None,
    }
    sections = [Section("Baselines", [_baselines_table(baselines)])]
    seconds = {v.name: round(v.seconds, 3) for v in verdicts if v.seconds is not None}
    if cfg.checks.predictions.enabled and res.records:
        log.info("report: prediction dynamics, confusion matrix, top-loss validation examples")
        t0 = time.perf_counter()
        sections += predictions_sections(data, res, cfg.checks.predictions)
        seconds["predictions"] = round(time.perf_counter() - t0, 3)
    sections.append(Section("Check cost", [_cost_table(seconds)]))
    summary = summary_of(
        cfg, ctx, res, verdicts, {"baselines": baselines, "check_seconds": seconds}
    )
    return result_of(res, verdicts, summary, sections=sections)


def _import_now() -> None:
    """timm's optimisers and pyplot load in seconds; the run and the report need them anyway.
    Loading them before the checks keeps each check's `seconds` its own cost."""
    import timm.optim  # noqa: F401

    import runner.checks.figures  # noqa: F401  (pyplot, Agg)


def _pool_size(cfg) -> int:
    c = cfg.checks
    return int(
        max(
            c.init_loss.examples,
            c.input_stats.show,
            c.baseline_overfit_batch.examples,
            c.train_batch_independence.examples,
            cfg.trainer.batch_size,
        )
    )


def checks_before_training(cfg, ctx, data, model, train_loader, x, y, device) -> List[Verdict]:
    """The cheap checks on the untrained model and the first examples, in the recipe's order.

    init.bias changes `model` in place (final bias := log prior): the real run starts from it.
    """
    from runner.checks.baselines import overfit_batch
    from runner.checks.gradients import batch_independence, grads_flow
    from runner.checks.init import init_bias, init_loss
    from runner.checks.inputs import input_stats
    from runner.checks.training import seed_determinism
    from runner.models import build_model
    from runner.optim import build_optimizer

    c, out = cfg.checks, []
    batch = (x[: cfg.trainer.batch_size], y[: cfg.trainer.batch_size])
    prior = data.class_prior().to(device)
    n_init = int(c.init_loss.examples)

    # look at the exact tensors that go into model(x)
    log.info("check: input.stats (the first training batch, as model(x) sees it)")
    out.append(
        run_check(
            c,
            "input.stats",
            lambda s: input_stats(
                *batch,
                data.mean,
                data.std,
                data.class_names,
                max_abs_warn=float(s.max_abs_warn),
                max_abs_fail=float(s.max_abs_fail),
                show=int(s.show),
            ),
        )
    )
    # pretrained weights want the input statistics they were trained with
    log.info("check: input.pretrained_norm (mean/std/size vs the pretrained config)")
    out.append(
        run_check(c, "input.pretrained_norm", lambda s: _pretrained_norm(cfg, data, model, s))
    )
    # every split through one pipeline: val/test fed as train is, augmentation aside
    log.info("check: input.split_consistency (train vs val/test tensors as the loaders give them)")
    out.append(
        run_check(
            c,
            "input.split_consistency",
            lambda s: _split_consistency(cfg, data, x, device, s),
        )
    )
    # the augmentation's flips and rotations: does every image stay in its class?
    log.info("check: aug.label_preserving (the training flips/rotations vs a cheap reader)")
    out.append(run_check(c, "aug.label_preserving", lambda s: _label_preserving(cfg, data, s)))
    # the untrained model: loss at init, then init the final bias well
    log.info("check: init.loss (untrained model on %d examples vs log C)", min(n_init, len(y)))
    out.append(
        run_check(
            c,
            "init.loss",
            lambda s: init_loss(model, x[:n_init], y[:n_init], prior, tolerance=float(s.tolerance)),
        )
    )
    log.info("check: init.bias (final bias := log class prior, kept for the real run)")
    out.append(
        run_check(
            c,
            "init.bias",
            lambda s: init_bias(model, x[:n_init], y[:n_init], prior, tolerance=float(s.tolerance)),
        )
    )
    # backprop as a probe: every parameter learns, examples stay apart
    log.info(
        "check: train.grads_flow (%d optimiser steps on a copy of the model)",
        int(c.train_grads_flow.steps),
    )
    out.append(
        run_check(
            c,
            "train.grads_flow",
            lambda s: grads_flow(
                model,
                *batch,
                steps=int(s.steps),
                make_optimizer=lambda m: build_optimizer(cfg.optim, m),
            ),
        )
    )
    k = int(c.train_batch_independence.examples)
    log.info("check: train.batch_independence (backprop one example's output to %d inputs)", k)
    out.append(
        run_check(
            c,
            "train.batch_independence",
            lambda s: batch_independence(model, x[:k], examples=(0, k // 2, -1)),
        )
    )
    # overfit one small batch
    s = c.baseline_overfit_batch
    log.info(
        "check: baseline.overfit_batch (%d examples, up to %d steps)", int(s.examples), int(s.steps)
    )
    out.append(
        run_check(
            c,
            "baseline.overfit_batch",
            lambda s: overfit_batch(
                model,
                x[: int(s.examples)],
                y[: int(s.examples)],
                steps=int(s.steps),
                lr=float(s.lr),
                loss_below=float(s.loss_below),
            ),
        )
    )
    # fix the seed: two short runs give the same losses
    log.info("check: seed.determinism (two short runs from seed %d)", cfg.seed)
    out.append(
        run_check(
            c,
            "seed.determinism",
            lambda s: seed_determinism(
                lambda: build_model(
                    cfg.model, data.num_classes, data.in_chans, ctx.original_cwd
                ).to(device),
                lambda m: build_optimizer(cfg.optim, m),
                list(itertools.islice(train_loader.epoch(0), int(s.steps))),
                cfg.seed,
            ),
        )
    )
    return out


def checks_after_training(
    cfg, ctx, data, res, before: List[Verdict], device, examples=None
) -> List[Verdict]:
    """Checks that need the real run: finiteness, the dumb baselines, a falling loss.

    `examples`: (x, y) training examples as the loop feeds them (the pool drawn before it)."""
    from runner.checks.evaluation import eval_repeatable
    from runner.checks.training import loss_decreases, train_finite

    c, out = cfg.checks, []
    log.info("check: train.finite (no NaN/Inf loss in the real run)")
    out.append(run_check(c, "train.finite", lambda s: train_finite(res.nonfinite, res.state.step)))
    log.info("check: baseline.input_independent (the same model trained on zeroed inputs)")
    out.append(
        run_check(
            c,
            "baseline.input_independent",
            lambda s: _input_independent(cfg, ctx, data, device, res, s),
        )
    )
    log.info("check: eval.repeatable (the same val examples evaluated twice in eval mode)")
    out.append(
        run_check(
            c,
            "eval.repeatable",
            lambda s: eval_repeatable(
                res.model,
                data.val.get,
                range(min(int(s.examples), len(data.val))),
                res.device,
                batch_size=cfg.trainer.batch_size,
                atol=float(s.atol),
            ),
        )
    )
    log.info("check: eval.bn_stats (BatchNorm in train vs eval mode on the same training batches)")
    out.append(run_check(c, "eval.bn_stats", lambda s: _bn_stats(cfg, res, examples, s)))
    log.info("check: train.split_labels (val at chance while train is learned = a label mix-up)")
    out.append(run_check(c, "train.split_labels", lambda s: _split_labels(data, res, s)))
    log.info("check: eval.class_mapping (per-class confusion on val/test vs train recall)")
    out.append(run_check(c, "eval.class_mapping", lambda s: _class_mapping(cfg, data, res, s)))
    log.info("check: train.loss_decreases (training loss over the run, from the loss at init)")
    init = next((v for v in before if v.name == "init.bias" and v.status != "skip"), None) or next(
        (v for v in before if v.name == "init.loss" and v.status != "skip"), None
    )
    initial = init.value if init is not None and isinstance(init.value, float) else None
    out.append(
        run_check(
            c,
            "train.loss_decreases",
            lambda s: loss_decreases(
                [r["train_loss"] for r in res.history], initial=initial, min_drop=float(s.min_drop)
            ),
        )
    )
    return out


def _label_preserving(cfg, data, s) -> Verdict:
    """The geometric transforms of the training pipeline (aug=, the dataset's own transform,
    and what repeated draws of training examples show), judged on unaugmented images."""

    import torch

    from runner.checks.augment import (
        class_means_figure,
        drawn_transforms,
        label_preserving,
        pipeline_transforms,
    )
    from runner.data import train_transform

    tr, va = data.train, data.val
    aug_tf = train_transform(cfg.aug, data.image_size, data.mean, data.std, data.interpolation)
    applied = pipeline_transforms(aug_tf, f"aug={cfg.aug.name}")
    ds = getattr(tr, "dataset", None)
    own = pipeline_transforms(getattr(ds, "transform", None), f"{type(ds).__name__}.transform")
    # what the loop would be fed: the split streamed through aug= (as loaders() does)
    if aug_tf is not None and hasattr(tr, "as_stream"):
        stream = tr.as_stream(aug_tf)
    elif aug_tf is not None:
        stream = copy.copy(tr)
        stream.train_transform = aug_tf
    else:
        stream = tr
    n = len(tr)
    idx = sorted({int(i) for i in torch.linspace(0, n - 1, min(int(s.draws), n)).tolist()})
    seen = {}  # in memory, no augmentation: every draw is the stored image
    if hasattr(stream, "load"):
        # drawn from the run's seed, leaving the RNGs as they were: the run does not change
        # with this check on or off
        from runner.checkpoint import rng_state, set_rng_state
        from runner.stages.common import set_seed

        saved = rng_state()
        set_seed(cfg.seed)
        try:
            seen = drawn_transforms(lambda i: stream.load(i, train=True)[0], idx, int(s.repeats))
        finally:
            set_rng_state(saved)
    for found in (own, seen):
        applied.update({k: v for k, v in found.items() if k not in applied})
    by = f"aug={cfg.aug.name}; {len(idx)} training examples drawn {int(s.repeats)} times"
    if not applied:  # nothing to judge: no image needs loading
        return label_preserving([], [], [], [], {}, data.class_names, found_by=by)
    # the cheap reader learns from unaugmented images: in-memory train/val as stored, else
    # half the val split's (its eval transform) to learn from and half to score
    m = int(s.max_images)
    if hasattr(tr, "x") and hasattr(va, "x"):
        fit_x, fit_y = tr.x[:m].float() / 255.0, tr.y[:m]
        test_x, test_y = va.x[:m].float() / 255.0, va.y[:m]
    else:
        xs, ys = va.get(range(min(m, len(va))))
        fit_x, fit_y, test_x, test_y = xs[0::2], ys[0::2], xs[1::2], ys[1::2]
    v = label_preserving(
        fit_x,
        fit_y.numpy(),
        test_x,
        test_y.numpy(),
        applied,
        data.class_names,
        min_kept=float(s.min_kept),
        min_skill=float(s.min_skill),
        found_by=by,
    )
    if v.status == "warn":
        bad = [t for t, r in v.details["transforms"].items() if r["kept"] < float(s.min_kept)]
        v.figures["class_means"] = class_means_figure(
            test_x, test_y.numpy(), data.class_names, bad[:4]
        )
    return v


def _pretrained_norm(cfg, data, model, s) -> Verdict:
    """The configured input statistics against the model's pretrained config (timm)."""
    from runner.checks.pretrained import pretrained_norm

    pcfg = None
    if cfg.model.pretrained:
        from timm.data import resolve_model_data_config

        pcfg = resolve_model_data_config(model)
    return pretrained_norm(
        pcfg,
        data.mean,
        data.std,
        data.image_size,
        data.interpolation,
        pretrained=bool(cfg.model.pretrained),
        tolerance=float(s.tolerance),
        check_size=bool(s.check_size),
    )


def _bn_stats(cfg, res, examples, s) -> Verdict:
    """The trained model on a few training batches at the run's batch size."""
    from runner.checks.batchnorm import bn_stats

    if res.nonfinite or not res.history or examples is None:
        return skip("eval.bn_stats", "the real run did not finish: nothing to compare")
    x, y = examples
    bs = int(cfg.trainer.batch_size)
    n = min(len(y), max(int(s.examples), 2 * bs))
    return bn_stats(
        res.model,
        x[:n].to(res.device),
        y[:n].to(res.device),
        bs,
        max_tv=float(s.max_tv),
        warn_tv=float(s.warn_tv),
        max_mismatch=float(s.max_mismatch),
        max_batch_noise=float(s.max_batch_noise),
        small_batch_tv=float(s.small_batch_tv),
        min_steps=int(s.min_steps),
        min_values=int(s.min_values),
    )


def _class_mapping(cfg, data, res, s) -> Verdict:
    """The final model's confusion on val (its last evaluation) and test (the final scoring,
    when the data has one) against its own confusion on training examples."""
    import torch

    from runner.checks.evaluation import class_mapping
    from runner.checks.probes import preserved
    from runner.metrics import confusion_counts

    if res.nonfinite or not res.history or res.last is None:
        return skip("eval.class_mapping", "the real run did not finish: nothing to compare")
    C, train_cm, seen = data.num_classes, None, 0
    # evaluation batches: their size changes nothing in eval mode, only the cost
    bs = max(2 * int(cfg.trainer.batch_size), 128)
    loader = data.train.loader(bs, True, cfg.seed, res.device, train=False)
    with preserved(res.model), torch.no_grad():
        res.model.eval()
        for xb, yb in loader.epoch(0):
            pred = res.model(xb).argmax(1)
            counts = confusion_counts(yb, pred, C).cpu()
            train_cm = counts if train_cm is None else train_cm + counts
            seen += len(yb)
            if seen >= int(s.examples):
                break
    if train_cm is None:
        return skip("eval.class_mapping", "no training examples to score")
    splits = {"val": res.last.val_confusion}
    test = (res.final or {}).get("test")
    if test and test.get("confusion"):
        splits["test"] = torch.tensor(test["confusion"])
    return class_mapping(
        train_cm,
        splits,
        data.class_names,
        min_share=float(s.min_share),
        min_train_recall=float(s.min_train_recall),
        min_examples=int(s.min_examples),
    )


def _split_consistency(cfg, data, fed, device, s) -> Verdict:
    """Each split read by its own loader in evaluation mode (train through the eval transform,
    shuffled so that a class-sorted split is sampled evenly), and the batches the loop feeds."""
    from runner.checks.consistency import split_consistency

    n = int(s.examples)
    views = {
        name: _take(
            split.loader(max(int(cfg.trainer.batch_size), 64), True, cfg.seed, device, train=False),
            n,
        )
        for name, split in data.splits().items()
        if len(split)
    }
    return split_consistency(
        views,
        fed[:n],
        data.mean,
        data.std,
        max_shift=float(s.max_shift),
        max_std_ratio=float(s.max_std_ratio),
        max_sharpness_ratio=float(s.max_sharpness_ratio),
        fed_max_shift=float(s.fed_max_shift),
        fed_max_std_ratio=float(s.fed_max_std_ratio),
    )


def _take(loader, n: int):
    """The first n inputs a loader yields (None when it yields none)."""
    import torch

    xs, got = [], 0
    for xb, _ in loader.epoch(0):
        xs.append(xb)
        got += len(xb)
        if got >= n:
            break
    return torch.cat(xs)[:n] if xs else None


def _split_labels(data, res, s) -> Verdict:
    """Train accuracy learned but val at chance: the last evaluation's predictions name the
    mapping when they were kept (checks.predictions)."""
    from runner.checks.evaluation import split_labels

    last = res.history[-1] if res.history else {}
    if not last or last.get("val_acc") is None or res.nonfinite:
        return skip("train.split_labels", "the real run did not finish: nothing to compare")
    rec = next((r for r in reversed(res.records) if r.val_logits is not None), None)
    labels = rec.val_targets.tolist() if rec is not None else data.val.labels.tolist()
    preds = rec.val_logits.argmax(1).tolist() if rec is not None else None
    return split_labels(
        last["train_acc"],
        last["val_acc"],
        data.num_classes,
        labels,
        preds,
        min_train_acc=float(s.min_train_acc),
        margin=float(s.margin),
        min_share=float(s.min_share),
    )


def first_examples(loader, n: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The first n training examples exactly as the loop would feed them (epoch 0 order)."""
    import torch

    xs, ys, got = [], [], 0
    for xb, yb in loader.epoch(0):
        xs.append(xb)
        ys.append(yb)
        got += len(yb)
        if got >= n:
            break
    return torch.cat(xs)[:n], torch.cat(ys)[:n]


def _input_independent(cfg, ctx, data, device, res, s) -> Verdict:
    """Train the same model (same seed, same bias init) on zeroed inputs; compare on val."""
    from runner.checks.baselines import input_independent, majority_accuracy
    from runner.models import build_model
    from runner.stages.common import set_seed, train_run

    if res.nonfinite or not res.history:
        return skip("baseline.input_independent", "the real run did not finish: nothing to compare")
    zcfg = copy.deepcopy(cfg)
    if s.get("epochs"):
        zcfg.trainer.epochs = min(int(s.epochs), cfg.trainer.epochs)
    log.info("input_independent: %d epoch(s) on zeroed inputs", zcfg.trainer.epochs)
    set_seed(cfg.seed)
    zmodel = build_model(cfg.model, data.num_classes, data.in_chans, ctx.original_cwd).to(device)
    if cfg.checks.init_bias.enabled:
        _set_log_prior_bias(zmodel, data.class_prior())
    zres = train_run(
        zcfg,
        ctx,
        data=data,
        zero_inputs=True,
        save_checkpoints=False,
        model=zmodel,
        write_metrics=False,
    )
    zero = zres.history[-1] if zres.history else {"val_acc": math.nan, "val_loss": math.nan}
    last = res.history[-1]
    majority = majority_accuracy(data.train.labels, data.val.labels, data.num_classes)
    return input_independent(
        last["val_acc"],
        last["val_loss"],
        zero["val_acc"],
        zero["val_loss"],
        majority,
        cfg.human_baseline,
        margin=float(s.margin),
    )


def _set_log_prior_bias(model, prior) -> None:
    import torch

    from runner.models import final_linear

    head = final_linear(model)
    if head is not None and head.bias is not None and head.out_features == len(prior):
        with torch.no_grad():
            head.bias.copy_(prior.double().clamp_min(1e-8).log().to(head.bias))


def predictions_sections(data, res, s) -> List[Section]:
    """Prediction dynamics, confusion matrix and top-loss examples (figures as data)."""
    from runner.checks.predictions import (
        confusion,
        confusion_figure,
        fixed_examples,
        prediction_dynamics,
        top_loss_figure,
        top_losses,
    )

    recs = [r for r in res.records if r.val_logits is not None]
    if not recs:
        return []
    targets = recs[-1].val_targets
    logits = recs[-1].val_logits
    out = []
    idx = fixed_examples(targets, data.num_classes, int(s.examples))
    probs = [r.val_logits[idx].float().softmax(1) for r in recs]
    fig = prediction_dynamics([r.epoch for r in recs], probs, targets, idx, data.class_names)
    out.append(
        Section(
            "Prediction dynamics",
            [
                Figure(fig, "prediction_dynamics"),
                Text(
                    "Predicted probabilities of fixed validation examples after each epoch: they "
                    "should settle on the true class, not jitter or collapse.",
                    note=True,
                ),
            ],
        )
    )
    cm = confusion(logits, targets, data.num_classes)
    out.append(
        Section(
            "Confusion matrix", [Figure(confusion_figure(cm, data.class_names), "confusion_matrix")]
        )
    )
    top, losses = top_losses(logits, targets, int(s.top_losses))
    # the val loader is unshuffled, so row i is val example i (unless unreadable files were skipped)
    aligned = len(targets) == len(data.val) and bool(
        (data.val.labels.cpu()[top] == targets[top]).all()
    )
    if aligned and top:
        xs, _ = data.val.get(top)
        names = data.class_names
        fig = top_loss_figure(xs, data.mean, data.std, top, losses, logits, targets, names)
        rows = [
            {
                "val index": i,
                "file": data.val.name(i),
                "true": names[int(targets[i])],
                "predicted": names[int(logits[i].argmax())],
                "loss": loss,
            }
            for i, loss in zip(top, losses)
        ]
        out.append(
            Section("Top-loss validation examples", [Figure(fig, "top_losses"), Table(rows)])
        )
    else:
        why = "validation predictions do not line up with the split (unreadable files skipped?)"
        out.append(Section("Top-loss validation examples", [Text(f"{why}: no images", note=True)]))
    return out


def _baselines_table(b: Dict) -> Table:
    rows = [
        {
            "what": "majority class (always the most frequent training class)",
            "val acc": b["majority_acc"],
        },
        {"what": "same model, zeroed inputs", "val acc": b["zero_input_acc"]},
        {"what": "model", "val acc": b["model_acc"]},
        {"what": "human (human_baseline)", "val acc": b["human_baseline"]},
    ]
    return Table(rows)


def _cost_table(seconds: Dict[str, float]) -> Table:
    rows = [{"check": k, "seconds": v} for k, v in seconds.items()]
    return Table(rows + [{"check": "total", "seconds": sum(seconds.values())}])
