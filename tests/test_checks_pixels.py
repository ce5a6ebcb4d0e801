"""data.label_in_pixels (issue 25): a small region of the picture that gives the label away.

Planted: a class-coloured corner patch, a class-coloured border, a class-specific text tag at
a fixed place (on a label, or drawn straight on the image), and a marker on one class only,
on digits, photo tiles and generated photo-like images. Controls
that must pass: clean digits (a digit's own strokes carry some class information: the best
2x2 block, a 0's hole, reaches F1 0.94), a mark in the same place on every image (no label in it),
and photo-like classes that differ in colour everywhere (content, not a region).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from runner.checks import data as dc
from runner.checks.pixels import crop, label_in_pixels, outlined, regions
from runner.checks.registry import CHECKS

PALETTE = np.array(
    [
        [230, 30, 30],
        [30, 200, 30],
        [30, 30, 230],
        [230, 230, 30],
        [30, 220, 220],
        [220, 30, 220],
        [128, 128, 128],
        [250, 140, 0],
        [0, 120, 250],
        [120, 0, 250],
    ],
    np.uint8,
)


def features(images):
    """(cells, detail, border) of N same-size HxWx3 uint8 images (H, W multiples of 8), as
    stage=inspect measures them (runner/checks/data.py), for a batch at once."""
    x = images.astype(np.float32)
    n, h, w, _ = x.shape
    cells = x.reshape(n, 8, h // 8, 8, w // 8, 3).mean((2, 4)).round().astype(np.uint8)
    t = max(1, round(h / dc.BORDER))
    strips = (x[:, :t], x[:, h - t :], x[:, :, :t], x[:, :, w - t :])
    border = np.stack(
        [
            np.concatenate(
                [s.reshape(n, -1, 3).mean(1), dc._luma(s).reshape(n, -1).std(1)[:, None]], 1
            )
            for s in strips
        ],
        1,
    ).astype(np.float32)
    op_h, op_w = dc._match_operator(h), dc._match_operator(w)
    detail = np.clip(op_h @ dc._luma(x) @ op_w.T, 0, 255).round().astype(np.uint8)
    return cells, detail, border


def test_batched_features_are_the_stage_s(photos):
    x = photos[0][:4]
    cells, detail, border = features(x)
    for k, a in enumerate(x):
        c, b = dc.region_colours(a)
        assert np.abs(cells[k].astype(int) - c).max() <= 1
        assert np.allclose(border[k], b, atol=0.01)
        assert np.abs(detail[k].astype(int) - dc.match_image(dc._luma(a))).max() <= 1


@pytest.fixture(scope="module")
def digits():
    """sklearn's digits at 16 px (stage=inspect's data=digits size) as RGB, 80/20 split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.asarray(
        [
            np.asarray(Image.fromarray(np.uint8(im * 255 / 16)).resize((16, 16), Image.BILINEAR))
            for im in d.images
        ]
    )
    x = np.repeat(x[..., None], 3, -1)
    split = (np.random.default_rng(0).random(len(x)) < 0.2).astype(np.int8)
    return x, d.target, split


@pytest.fixture(scope="module")
def photos():
    """Photo-like 48 px RGB tiles (scikit-learn's two sample photos), dealt to 3 classes at
    random, 12 train + 12 val each."""
    from sklearn.datasets import load_sample_images

    tiles = []
    for photo in load_sample_images().images:
        for y in range(0, photo.shape[0] - 48 + 1, 48):
            for x in range(0, photo.shape[1] - 48 + 1, 48):
                t = photo[y : y + 48, x : x + 48]
                if t.mean(2).std() > 20:
                    tiles.append(t)
    rng = np.random.default_rng(0)
    x = np.stack([tiles[i] for i in rng.permutation(len(tiles))[:72]])
    y = np.repeat(np.arange(3), 24)
    split = np.tile(np.repeat([0, 1], 12), 3).astype(np.int8)
    return x, y, split


def planted(x, y, draw):
    x = x.copy()
    for i in range(len(x)):
        draw(x[i], int(y[i]))
    return x


def corner(a, c):
    a[:2, :2] = PALETTE[c]


def border(a, c):
    a[0], a[-1], a[:, 0], a[:, -1] = PALETTE[c], PALETTE[c], PALETTE[c], PALETTE[c]


def tag(a, c):
    """A small white label with the class written on it, bottom right (a hospital marker)."""
    im = Image.fromarray(a)
    d = ImageDraw.Draw(im)
    d.rectangle([34, 36, 46, 46], fill=(255, 255, 255))
    d.text((36, 35), "LRX"[c], fill=(0, 0, 0))
    a[:] = np.asarray(im)


def run(x, y, split):
    return label_in_pixels(*features(x), y, split, [str(c) for c in range(10)])


def test_registered_for_stage_inspect():
    c = CHECKS["data.label_in_pixels"]
    assert c.stage == "inspect" and c.where == "runner.checks.pixels:label_in_pixels"
    assert c.settings().min_f1 == 0.98 and c.settings().max_area == 0.15


def test_regions_are_cells_blocks_and_border_strips():
    rs = regions(8)
    assert [sum(r.kind == k for r in rs) for k in ("cell", "block", "border")] == [64, 49, 4]
    assert all(r.area <= 1 / 16 for r in rs)


def test_clean_digits_pass(digits):
    v = run(*digits)
    assert v.status == "pass", v.message
    # measured: a digit's best region (the 2x2 block in a 0's hole) reaches F1 0.92-0.94
    assert v.details["best_region_f1"] < 0.95
    assert v.seconds is None and v.details["regions"] == []


def test_a_mark_on_every_image_carries_no_label(digits):
    x, y, split = digits
    v = run(planted(x, y, lambda a, c: a.__setitem__((slice(0, 3), slice(0, 3)), 200)), y, split)
    assert v.status == "pass", v.message


@pytest.mark.parametrize(
    "draw, region", [(corner, "cell r0 c0"), (border, "border top")], ids=["corner", "border"]
)
def test_class_coloured_corner_or_border_on_digits_warns(digits, draw, region):
    x, y, split = digits
    v = run(planted(x, y, draw), y, split)
    assert v.status == "warn" and v.value == 10, v.message
    assert region in v.message and "remove or crop the mark" in v.message
    r = next(r for r in v.details["regions"] if r["region"] == region)
    assert len(r["classes"]) == 10 and set(r["examples"]) == set(r["classes"])


def test_marker_on_one_class_only_is_named(digits):
    x, y, split = digits
    v = run(planted(x, y, lambda a, c: corner(a, 0) if c == 3 else None), y, split)
    assert v.status == "warn" and v.value == 1
    assert "identifies class 3 alone" in v.message


def test_text_tag_on_photos_warns(photos):
    x, y, split = photos
    v = run(planted(x, y, tag), y, split)
    assert v.status == "warn" and v.value == 3, v.message
    top, _, left, _ = v.details["regions"][0]["box"]  # the tag's place: bottom right
    assert top >= 0.5 and left >= 0.5, v.details["regions"][0]


@pytest.fixture(scope="module")
def generated():
    """Generated photo-like 64 px images: random colour gradients plus noise, 3 classes of
    15 train + 15 val."""
    rng = np.random.default_rng(1)
    g = np.linspace(0, 1, 64)
    x = [
        (rng.random(3)[:, None, None] * g[None, :, None] + rng.random(3)[:, None, None] * g) * 180
        + rng.normal(0, 20, (3, 64, 64))
        for _ in range(90)
    ]
    x = np.clip(np.stack(x), 0, 255).transpose(0, 2, 3, 1).astype(np.uint8)
    return x, np.repeat(np.arange(3), 30), np.tile(np.repeat([0, 1], 15), 3).astype(np.int8)


def text(at, words, fill):
    def draw(a, c):
        im = Image.fromarray(a)
        ImageDraw.Draw(im).text(at, words[c], fill=fill)
        a[:] = np.asarray(im)

    return draw


@pytest.mark.parametrize(
    "draw",
    [text((44, 50), "LRX", (0, 0, 0)), text((20, 28), ["AB", "CD", "EF"], (255, 255, 255))],
    ids=["black-letter-bottom-right", "white-watermark-centre"],
)
def test_text_drawn_straight_on_generated_images_warns(generated, draw):
    x, y, split = generated
    assert run(x, y, split).status == "pass"
    v = run(planted(x, y, draw), y, split)
    assert v.status == "warn" and v.value == 3, v.message


def test_photo_controls_pass(photos):
    x, y, split = photos
    assert run(x, y, split).status == "pass"  # tiles dealt at random
    # classes that differ in colour everywhere: every cell tells (content, not a region)
    tinted = np.clip(x * 0.6 + PALETTE[y][:, None, None] * 0.4, 0, 255).astype(np.uint8)
    v = run(tinted, y, split)
    assert v.status == "pass", v.message
    assert v.details["best_region_f1"] >= 0.98  # a telling region, but not a small one


def test_too_few_examples_skip(photos):
    x, y, split = photos
    keep = np.flatnonzero(np.tile(np.arange(12) < 5, 6))
    assert run(x[keep], y[keep], split[keep]).status == "skip"


def test_evidence_helpers_outline_and_crop():
    a = np.zeros((16, 16, 1), np.uint8)
    box = (0.0, 0.125, 0.875, 1.0)
    o = outlined(a, box)
    assert o.shape == (16, 16, 3) and o[0, 14].tolist() == [255, 0, 0] and o[8, 8].sum() == 0
    assert crop(np.arange(256).reshape(16, 16, 1), box).shape == (2, 2, 1)
