"""Data builders: every `data.kind` becomes a DataBundle of two Splits and their facts.

Two kinds of split, one interface (`Split`):
- TensorSplit: small datasets held as one uint8 tensor [N, C, S, S] at the net's input size;
  batches are made by indexing, normalised in one tensor op (no per-item Python).
- StreamSplit: map-style datasets of files/PIL images/tensors, read through a DataLoader with
  workers; images pass through timm's transforms. Undecodable files are skipped with a
  logged warning (never a crash).

Loaders yield (x, y) already normalised; shuffling is seeded by (seed, epoch) so a resumed
run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import logging
import math
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from runner.errors import ConfigError, UnreadableFiles

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- loaders
def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed * 100_003 + epoch)
    return g


def batch_indices(
    n: int,
    batch_size: int,
    shuffle: bool,
    seed: int,
    epoch: int,
    drop_last: bool = False,
    rank: int = 0,
    world: int = 1,
    even: bool = True,
    weights: Optional[torch.Tensor] = None,
) -> List[torch.Tensor]:
    """This process's share of each *global* batch of an epoch.

    The order depends only on (seed, epoch), so a resumed run, or a run on `world`
    processes, sees exactly the batches of a single uninterrupted run: global batch i is
    split across ranks (rank r takes every world-th example of it). `even` (training):
    every rank gets the same number of non-empty batches, as DDP needs; otherwise
    (evaluation) every example is in exactly one rank's share, some shares maybe empty.
    """
    # `weights` (shuffled training only; trainer.imbalance=balanced_sampler): the epoch draws
    # n examples with replacement, each with probability proportional to its weight
    if shuffle and weights is not None:
        g = _epoch_generator(seed, epoch)
        order = torch.multinomial(weights.double(), n, replacement=True, generator=g)
    elif shuffle:
        order = torch.randperm(n, generator=_epoch_generator(seed, epoch))
    else:
        order = torch.arange(n)
    n_batches = n // batch_size if drop_last else math.ceil(n / batch_size)
    out = []
    for i in range(n_batches):
        idx = order[i * batch_size : (i + 1) * batch_size]
        if world > 1:
            if len(idx) < world and even:  # too small to give every rank an example
                break
            idx = idx[rank::world]
            if len(idx) == 0:
                continue
        out.append(idx)
    return out


class _GlobalBatches:
    """Shared by both loaders: this rank's share of each epoch's global batches."""

    split: object
    batch_size: int
    shuffle: bool
    seed: int
    drop_last: bool
    rank: int
    world: int
    train: bool
    # per-example draw weights of a balanced sampler (runner/imbalance.py); None: a shuffle
    sample_weights: Optional[torch.Tensor] = None

    def _batches(self, epoch: int) -> List[torch.Tensor]:
        return batch_indices(
            len(self.split),
            self.batch_size,
            self.shuffle,
            self.seed,
            epoch,
            self.drop_last,
            self.rank,
            self.world,
            even=self.train,
            weights=self.sample_weights if self.train else None,
        )

    def __len__(self) -> int:
        return len(self._batches(0))


class TensorLoader(_GlobalBatches):
    """Batches of an in-memory uint8 tensor, normalised on the fly on the target device.

    Keyword-only, with StreamLoader's names (`num_workers` is accepted and unused: batches
    of an in-memory tensor are made by indexing, no worker decodes anything)."""

    def __init__(
        self,
        *,
        split: "TensorSplit",
        batch_size: int,
        shuffle: bool,
        seed: int,
        device: torch.device,
        train: bool = True,
        num_workers: int = 0,
        drop_last: bool = False,
        zero_inputs: bool = False,
        rank: int = 0,
        world: int = 1,
    ):
        self.split, self.batch_size, self.shuffle, self.seed = split, batch_size, shuffle, seed
        self.train, self.num_workers = train, num_workers
        self.drop_last, self.device, self.zero_inputs = drop_last, device, zero_inputs
        self.rank, self.world = rank, world
        # data moved once, as uint8 (a quarter of float32's bytes), from pinned memory on CUDA;
        # a few MB for the datasets this path is used for. Batches are normalised on the device.
        pin = device.type == "cuda"
        self._x = (split.x.pin_memory() if pin else split.x).to(device, non_blocking=pin)
        self._y = (split.y.pin_memory() if pin else split.y).to(device, non_blocking=pin)
        self._mean = torch.tensor(split.mean, device=device).view(1, -1, 1, 1)
        self._std = torch.tensor(split.std, device=device).view(1, -1, 1, 1)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """Batches of `epoch`, from batch number `start` on (to continue a half-done epoch)."""
        batches = self._batches(epoch)[start:]
        if not batches:
            return
        # the epoch's indices travel to the device in one copy: a copy per batch from pageable
        # memory waits for the device, which then idles while the next step is queued (on an
        # H200, resnet18 bf16: 0.91x a hand loop with it, see benchmarks/gpu_results.md)
        flat = torch.cat(batches)
        if self.device.type == "cuda":
            flat = flat.pin_memory().to(self.device, non_blocking=True)
        for idx in flat.split([len(b) for b in batches]):
            x = (self._x[idx].float().div_(255.0) - self._mean) / self._std
            if self.zero_inputs:
                x = torch.zeros_like(x)
            yield x, self._y[idx]


@dataclass
class Unreadable:
    """What _Transformed returns for a file it cannot read: the item is left out of its
    batch (never replaced by another), and the loader records the name for the summary."""

    name: str
    error: str


def _normalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 images -> the float tensors the net sees (as ToTensor + Normalize compute them)."""
    return (x.float().div_(255.0) - mean) / std


def _collate_skip_bad(items, mean=None, std=None):
    """(x, y, unreadable items) of a batch; x and y are None when no item was readable.

    x is uint8 (normalised later, on the device) when every item is, else normalised float."""
    good = [it for it in items if not isinstance(it, Unreadable)]
    bad = [it for it in items if isinstance(it, Unreadable)]
    if not good:
        return None, None, bad
    xs = [g[0] for g in good]
    if len({x.dtype for x in xs}) > 1:  # a split of both kinds: normalise here
        xs = [
            _normalise(x, mean.view(-1, 1, 1), std.view(-1, 1, 1)) if x.dtype == torch.uint8 else x
            for x in xs
        ]
    return torch.stack(xs), torch.tensor([int(g[1]) for g in good]), bad


class StreamLoader(_GlobalBatches):
    """A DataLoader over a StreamSplit, with the same global batches as TensorLoader (and its
    keyword-only arguments).

    Undecodable files come back as Unreadable and are left out of their batch (logged, and
    recorded in the split's `unreadable`); with data.on_unreadable=fail the run stops instead.
    """

    def __init__(
        self,
        *,
        split: "StreamSplit",
        batch_size: int,
        shuffle: bool,
        seed: int,
        device: torch.device,
        train: bool = True,
        num_workers: int = 0,
        drop_last: bool = False,
        zero_inputs: bool = False,
        rank: int = 0,
        world: int = 1,
    ):
        self.split, self.seed, self.device, self.zero_inputs = split, seed, device, zero_inputs
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.rank, self.world, self.num_workers, self.train = rank, world, num_workers, train
        self._dataset = _Transformed(split, train)
        self._mean = torch.tensor(split.mean).view(1, -1, 1, 1)
        self._std = torch.tensor(split.std).view(1, -1, 1, 1)
        self._mean_d, self._std_d = self._mean.to(device), self._std.to(device)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        batches = [b.tolist() for b in self._batches(epoch)[start:]]
        if not batches:
            return
        # worker seeds (random augmentation) depend on (seed, epoch, start) only
        g = _epoch_generator(self.seed + 7919 * start, epoch)
        loader = DataLoader(
            self._dataset,
            batch_sampler=batches,
            num_workers=self.num_workers,
            collate_fn=partial(_collate_skip_bad, mean=self._mean[0], std=self._std[0]),
            generator=g,
            pin_memory=self.device.type == "cuda",
        )
        for x, y, bad in loader:
            if bad:
                self.split.unreadable.update((b.name, b.error) for b in bad)
                if self.split.on_unreadable == "fail":
                    raise UnreadableFiles(bad)
            if x is None:
                continue
            x = x.to(self.device, non_blocking=True)  # from pinned memory on CUDA
            if x.dtype == torch.uint8:
                x = _normalise(x, self._mean_d, self._std_d)
            if self.zero_inputs:
                x = torch.zeros_like(x)
            yield x, y.to(self.device, non_blocking=True)


def default_workers(device: Optional[torch.device], training: bool = True) -> int:
    """DataLoader workers when data.num_workers is null. Training on a CPU: none (the training
    threads use every core; a worker decoding there slows every one of their ops more than
    it saves: measured on 2 cores, see config.DataConfig). On CUDA, min(8, cores - 1): the
    main process mostly waits for the GPU, so decoding in parallel is what keeps it fed.
    Reading without training (stage=inspect): one per core up to 8, none on one core."""
    cores = os.cpu_count() or 1
    if not training:
        return min(8, cores) if cores > 1 else 0
    if device is None or device.type == "cpu":
        return 0
    return max(1, min(8, cores - 1))


# ----------------------------------------------------------------------------- splits
class TensorSplit:
    """uint8 images [N, C, S, S] and int64 labels, held in memory."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        names: Optional[List[str]] = None,
    ):
        self.x, self.y = x.contiguous(), y.long()
        self.mean, self.std = tuple(mean), tuple(std)
        self.names = names

    def __len__(self) -> int:
        return len(self.y)

    @property
    def labels(self) -> torch.Tensor:
        return self.y

    def get(self, indices: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (self.x[idx].float() / 255.0 - mean) / std, self.y[idx]

    def name(self, i: int) -> str:
        return self.names[i] if self.names else f"#{i}"

    def loader(
        self,
        batch_size,
        shuffle,
        seed,
        device,
        train=False,
        num_workers=0,
        drop_last=False,
        zero_inputs=False,
        aug_transform=None,
        rank=0,
        world=1,
    ):
        kw = dict(
            batch_size=batch_size,
            shuffle=shuffle,
            seed=seed,
            device=device,
            train=train,
            num_workers=num_workers,
            drop_last=drop_last,
            zero_inputs=zero_inputs,
            rank=rank,
            world=world,
        )
        if aug_transform is not None and train:
            # augmentation works per image (timm transforms on PIL): stream this split instead
            return StreamLoader(split=self.as_stream(aug_transform), **kw)
        return TensorLoader(split=self, **kw)

    def as_stream(self, train_transform) -> "StreamSplit":
        return StreamSplit(
            _TensorImages(self.x, self.y), self.y, train_transform, None, self.mean, self.std
        )


class _TensorImages(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        from torchvision.transforms.functional import to_pil_image

        return to_pil_image(self.x[i]), int(self.y[i])


class StreamSplit:
    """A map-style dataset of (image, label); image a PIL image, a file-opened sample, or a tensor."""

    def __init__(
        self,
        dataset: Dataset,
        labels: Optional[torch.Tensor],
        train_transform,
        eval_transform,
        mean,
        std,
        filename_fn=None,
        image_size: Optional[int] = None,
        interpolation: str = "bilinear",
    ):
        self.dataset = dataset
        self._labels = labels
        self.train_transform, self.eval_transform = train_transform, eval_transform
        self.mean, self.std = tuple(mean), tuple(std)
        self.filename_fn = filename_fn
        self.image_size, self.interpolation = image_size, interpolation
        # files that could not be read while iterating (name -> error), shared by the loaders
        # of this split; `skip` leaves them out of the epoch, `fail` stops the run
        self.unreadable: dict[str, str] = {}
        self.on_unreadable = "skip"

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def labels(self) -> torch.Tensor:
        if self._labels is None:  # only for datasets that expose no targets: one pass over them
            self._labels = torch.tensor([int(self.dataset[i][1]) for i in range(len(self.dataset))])
        return self._labels

    def name(self, i: int) -> str:
        return str(self.filename_fn(i)) if self.filename_fn else f"#{i}"

    def load(self, i: int, train: bool = False):
        """Item i as (normalised float tensor, label); raises on an undecodable file."""
        img, label = self.dataset[i]
        return self.apply(img, train), int(label)

    def apply(self, img, train: bool = False) -> torch.Tensor:
        """One image (PIL or tensor) through the split's transform: a normalised float tensor."""
        if train and self.train_transform is not None:
            if isinstance(img, torch.Tensor):  # timm's training transforms work on PIL images
                from torchvision.transforms.functional import to_pil_image

                img = to_pil_image(img if img.dtype == torch.uint8 else img.clamp(0, 1))
            return self.train_transform(img)
        if isinstance(img, torch.Tensor):
            return _tensor_item(img, self.mean, self.std, self.image_size, self.interpolation)
        return self.eval_transform(img)

    def get(self, indices: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
        items = [self.load(i) for i in indices]
        return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])

    def loader(
        self,
        batch_size,
        shuffle,
        seed,
        device,
        train=False,
        num_workers=0,
        drop_last=False,
        zero_inputs=False,
        aug_transform=None,
        rank=0,
        world=1,
    ):
        split = self
        if aug_transform is not None and train:
            split = StreamSplit(
                self.dataset,
                self._labels,
                aug_transform,
                self.eval_transform,
                self.mean,
                self.std,
                self.filename_fn,
                self.image_size,
                self.interpolation,
            )
            split.unreadable, split.on_unreadable = self.unreadable, self.on_unreadable
        return StreamLoader(
            split=split,
            batch_size=batch_size,
            shuffle=shuffle,
            seed=seed,
            device=device,
            train=train,
            num_workers=num_workers,
            drop_last=drop_last,
            zero_inputs=zero_inputs,
            rank=rank,
            world=world,
        )


def _tensor_item(
    img: torch.Tensor, mean, std, image_size, interpolation="bilinear"
) -> torch.Tensor:
    """A CxHxW (or HxW) uint8/float image tensor -> resized, normalised float tensor."""
    x = img.float() / 255.0 if img.dtype == torch.uint8 else img.float()
    if x.dim() == 2:
        x = x.unsqueeze(0)
    if image_size and tuple(x.shape[-2:]) != (image_size, image_size):
        x = _resize_float(x[None], image_size, interpolation)[0]
    return (x - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)


class _Transformed(Dataset):
    """Applies the split's transform per item; an undecodable file becomes Unreadable.

    A PIL image whose transform ends in ToTensor + Normalize (with the split's mean/std) comes
    back as uint8 [C, H, W], before those two steps: it travels to the device at a quarter of
    the bytes and is normalised there (StreamLoader), to the same values. Others come back
    normalised (float)."""

    def __init__(self, split: StreamSplit, train: bool):
        self.split, self.train = split, train
        tf = (
            split.train_transform
            if train and split.train_transform is not None
            else split.eval_transform
        )
        self._uint8 = _before_to_tensor(tf, split.mean, split.std)

    def __len__(self):
        return len(self.split)

    def __getitem__(self, i):
        try:
            img, label = self.split.dataset[i]
            if self._uint8 is not None and _is_8bit_pil(img):
                from torchvision.transforms.functional import pil_to_tensor

                return pil_to_tensor(self._uint8(img)), int(label)
            return self.split.apply(img, self.train), int(label)
        except (OSError, ValueError, SyntaxError, _bomb_error()) as e:  # PIL's, for bad files
            log.warning("unreadable image %s: %s", self.split.name(i), e)
            return Unreadable(self.split.name(i), f"{type(e).__name__}: {e}")


def _is_8bit_pil(img) -> bool:
    return getattr(img, "mode", None) in ("L", "RGB")


def _before_to_tensor(tf, mean, std):
    """The steps of `tf` before a final ToTensor + Normalize(mean, std), or None when it does
    not end so (e.g. random erasing after them, or another mean/std)."""
    from torchvision import transforms as T

    steps = getattr(tf, "transforms", None)
    if not isinstance(tf, T.Compose) or not steps or len(steps) < 2:
        return None
    to_tensor, norm = steps[-2], steps[-1]
    if type(to_tensor).__name__ not in ("ToTensor", "MaybeToTensor") or not isinstance(
        norm, T.Normalize
    ):
        return None

    def same(a, b) -> bool:
        return torch.equal(
            torch.as_tensor(a, dtype=torch.float32).flatten(),
            torch.as_tensor(b, dtype=torch.float32).flatten(),
        )

    if not (same(norm.mean, mean) and same(norm.std, std)):
        return None
    return T.Compose(steps[:-2])


class _Files(Dataset):
    """(PIL image, label) of a timm ImageDataset's files, opened here rather than through its
    __getitem__, which answers an unreadable file with the *next* one (that neighbour is then
    trained on twice and the epoch's count is wrong); here the error reaches _Transformed.
    A file over the decoding limits (data.max_image_pixels, max_image_bytes) is unreadable."""

    def __init__(self, ds, mode: str, max_pixels: int = 0, max_bytes: int = 0):
        self.ds, self.mode = ds, mode
        self.max_pixels, self.max_bytes = max_pixels, max_bytes

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        path, target = self.ds.reader.samples[i]
        with open_image(path, self.max_pixels, self.max_bytes) as im:
            return im.convert(self.mode), target  # convert decodes: a truncated file raises here


class ImageTooLarge(ValueError):
    """An image over a decoding limit: unreadable, like a corrupt file."""


def _bomb_error():
    from PIL import Image

    return Image.DecompressionBombError


def open_image(path, max_pixels: int = 0, max_bytes: int = 0):
    """A file (a path, or its bytes in a BytesIO) opened by PIL (its header read, nothing decoded yet), or ImageTooLarge when its
    size on disk, its pixel count or PIL's decompression-bomb check says no; 0: no limit."""
    from PIL import Image

    nbytes = path.getbuffer().nbytes if isinstance(path, io.BytesIO) else os.path.getsize(path)
    if max_bytes and nbytes > max_bytes:
        raise ImageTooLarge(f"{nbytes:,} bytes, over data.max_image_bytes={max_bytes:,}")
    try:
        im = Image.open(path)
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(f"a decompression bomb: {e}") from None
    w, h = im.size
    if max_pixels and w * h > max_pixels:
        im.close()
        raise ImageTooLarge(
            f"{w}x{h} = {w * h:,} pixels, over data.max_image_pixels={max_pixels:,}"
        )
    return im


# ----------------------------------------------------------------------------- bundle
@dataclass
class DataBundle:
    train: object
    val: object
    num_classes: int
    in_chans: int
    image_size: int
    class_names: List[str]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    fingerprint: str
    kind: str
    notes: List[str] = field(default_factory=list)
    # where mean/std came from, for the summary's data section: "config", "pretrained config
    # of <model>", "measured on the training set", "ImageNet defaults", ...
    norm_from: str = ""
    # the resize filter (data.interpolation, resolved)
    interpolation: str = "bilinear"
    # the test split (None: the data has none): scored once, on the final model, after
    # training; never read by a selection (runner/stages/common.py final_evaluation)
    test: object = None

    def splits(self) -> Dict[str, object]:
        """{"train", "val"[, "test"]} -> the split, those the data has."""
        out = {"train": self.train, "val": self.val}
        if self.test is not None:
            out["test"] = self.test
        return out

    def unreadable_files(self) -> dict[str, str]:
        """Files left out so far because they could not be read (name -> error), every
        split; for the summary's `unreadable_files` and the report."""
        out: dict[str, str] = {}
        for split in self.splits().values():
            out.update(getattr(split, "unreadable", {}))
        return dict(sorted(out.items()))

    def class_prior(self) -> torch.Tensor:
        counts = torch.bincount(self.train.labels, minlength=self.num_classes).float()
        return counts / counts.sum()


def build_data(cfg, original_cwd: Optional[str] = None, model=None) -> DataBundle:
    """cfg is the `data` node. Returns train/val splits and the facts the model needs.

    `model`: the `model` node, when known. A pretrained timm model with data.mean/std null
    gets the mean/std its weights were trained with (recipe stage 4: pretrained weights
    expect their own input statistics), not the training set's."""
    if cfg.kind not in DATA_KINDS:
        raise ConfigError(
            f"data.kind={cfg.kind!r} is not a data kind; expected one of {sorted(DATA_KINDS)}"
        )
    base = Path(original_cwd) if original_cwd else Path.cwd()
    norm = pretrained_mean_std(model) if cfg.mean is None or cfg.std is None else None
    bundle = DATA_KINDS[cfg.kind].make(cfg, base, norm)
    bundle.interpolation = str(cfg.interpolation)
    log.info(
        "data: mean %s, std %s (%s)",
        _fmt_floats(bundle.mean),
        _fmt_floats(bundle.std),
        bundle.norm_from,
    )
    if bundle.num_classes < 2:
        raise ConfigError(
            f"data ({_source(cfg)}) has {bundle.num_classes} class(es): "
            f"{bundle.class_names}; a classifier needs at least 2 (with one class "
            "the loss is 0 from the start and nothing is learned)"
        )
    for split in bundle.splits().values():
        if isinstance(split, StreamSplit):
            split.on_unreadable = cfg.get("on_unreadable", "skip")
    fraction = float(cfg.get("train_fraction") or 1.0)
    if fraction < 1.0:
        keep = nested_subset(bundle.train.labels.numpy(), fraction, int(cfg.split_seed))
        log.info(
            "data: data.train_fraction=%g: %d of %d training images (stratified)",
            fraction,
            len(keep),
            len(bundle.train),
        )
        bundle.notes.append(
            f"data.train_fraction={fraction:g}: {len(keep)} of {len(bundle.train)} training "
            "images (a stratified subset; smaller fractions are subsets of larger ones)"
        )
        bundle.train = subset_split(bundle.train, keep)
        bundle.fingerprint = _fingerprint(bundle.fingerprint, "train", keep.tobytes())
    return bundle


def nested_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a stratified `fraction` of `labels` (at least one per class). Each
    class is taken in one seeded order, so a smaller fraction's subset is inside a larger one's
    (the points of a learning curve add data, they do not swap it)."""
    rng = np.random.default_rng([seed, 104729])
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        order = idx[rng.permutation(len(idx))]
        keep.extend(order[: max(1, int(round(fraction * len(idx))))])
    return np.sort(np.array(keep, dtype=np.int64))


def subset_split(split, idx: np.ndarray):
    """The examples `idx` of a split (in memory or streamed), with their names."""
    from torch.utils.data import Subset

    t = torch.from_numpy(idx)
    if isinstance(split, TensorSplit):
        names = [split.names[i] for i in idx] if split.names else None
        return TensorSplit(split.x[t], split.y[t], split.mean, split.std, names)
    out = StreamSplit(
        Subset(split.dataset, idx.tolist()),
        split.labels[t],
        split.train_transform,
        split.eval_transform,
        split.mean,
        split.std,
        lambda i, s=split, k=idx: s.name(int(k[i])),
        split.image_size,
        split.interpolation,
    )
    out.on_unreadable = split.on_unreadable
    return out


def pretrained_mean_std(model) -> Optional[Tuple[Tuple[float, ...], Tuple[float, ...], str]]:
    """(mean, std, "pretrained config of <name>") of a pretrained timm `model` node, else
    None (not pretrained, a custom model, or no config)."""
    from runner.models import pretrained_data_config

    dc = pretrained_data_config(model)
    if not dc or not dc.get("mean") or not dc.get("std"):
        return None
    return tuple(dc["mean"]), tuple(dc["std"]), f"pretrained config of {model.name}"


def _per_channel(values: Sequence[float], channels: int) -> Tuple[float, ...]:
    """`values` for `channels` channels: as given, repeated (one value), or their average
    (a grey pipeline fed by RGB statistics, as timm adapts the first conv by summing)."""
    values = tuple(float(v) for v in values)
    if len(values) == channels:
        return values
    if channels % len(values) == 0:
        return values * (channels // len(values))
    return (sum(values) / len(values),) * channels


def _fmt_floats(xs) -> str:
    return "[" + ", ".join(f"{float(x):.4g}" for x in xs) + "]"


def _source(cfg) -> str:
    """Where the data comes from, in the user's keys, for messages."""
    where = {"imagefolder": "root", "hf": "root", "torchvision": "name", "custom": "_target_"}.get(
        cfg.kind
    )
    return f"data={cfg.kind}" + (f" data.{where}={cfg[where]!r}" if where else "")


def _tensor_mean_std(x: torch.Tensor):
    xf = x.float() / 255.0
    mean = xf.mean(dim=(0, 2, 3))
    std = xf.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


# data.interpolation (timm's names, as create_transform takes them for PIL images) -> the
# closest torch.nn.functional.interpolate mode, for images that are tensors: torch has no
# hamming or lanczos filter, so those resize bicubic (antialiased when shrinking)
TENSOR_MODES = {
    "nearest": "nearest",
    "bilinear": "bilinear",
    "bicubic": "bicubic",
    "box": "area",
    "hamming": "bicubic",
    "lanczos": "bicubic",
}


def _resize_float(x: torch.Tensor, size: int, interpolation: str = "bilinear") -> torch.Tensor:
    """[N, C, H, W] float -> [N, C, size, size] with data.interpolation's filter."""
    mode = TENSOR_MODES.get(interpolation, "bilinear")
    if mode in ("nearest", "area"):
        return F.interpolate(x, size=(size, size), mode=mode)
    return F.interpolate(
        x, size=(size, size), mode=mode, align_corners=False, antialias=size < x.shape[-1]
    )


def _resize_uint8(x: torch.Tensor, size: int, interpolation: str = "bilinear") -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    xf = _resize_float(x.float(), size, interpolation)
    return xf.round().clamp(0, 255).to(torch.uint8)


def _random_split(n: int, val_fraction: float, seed: int, labels: Optional[np.ndarray] = None):
    """Stratified when labels are known, so every class is in both splits."""
    rng = np.random.default_rng(seed)
    if labels is None:
        perm = rng.permutation(n)
        n_val = max(1, int(round(n * val_fraction)))
        return np.sort(perm[n_val:]), np.sort(perm[:n_val])
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(len(idx) * val_fraction)) if len(idx) > 1 else 0
        val.extend(idx[:k])
        train.extend(idx[k:])
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(val, dtype=np.int64))


def _fingerprint(*parts) -> str:
    h = hashlib.sha1()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
    return h.hexdigest()[:16]


def _tensor_bundle(
    cfg, kind, x, y, tr, va, class_names, notes=(), norm=None, te=None
) -> DataBundle:
    """A DataBundle of in-memory images `x` [N, C, H, W] uint8 and labels `y`, split by the
    index arrays tr, va (and te, the test split; None or empty: none)."""
    x = _resize_uint8(x, cfg.image_size, cfg.interpolation)
    xtr, ytr, xva, yva = x[tr], y[tr], x[va], y[va]
    if norm is not None:
        mean, std = list(_per_channel(norm[0], x.shape[1])), list(_per_channel(norm[1], x.shape[1]))
        source = norm[2]
    else:
        mean, std = _tensor_mean_std(xtr)
        source = "measured on the training set"
    if cfg.mean is not None:
        mean = list(cfg.mean) * (x.shape[1] // len(cfg.mean))
    if cfg.std is not None:
        std = list(cfg.std) * (x.shape[1] // len(cfg.std))
    source = _norm_from(cfg, source)
    return DataBundle(
        train=TensorSplit(xtr, ytr, mean, std, names=[f"#{int(i)}" for i in tr]),
        val=TensorSplit(xva, yva, mean, std, names=[f"#{int(i)}" for i in va]),
        num_classes=len(class_names),
        in_chans=x.shape[1],
        image_size=cfg.image_size,
        class_names=class_names,
        mean=tuple(mean),
        std=tuple(std),
        fingerprint=_fingerprint(kind, x.numpy().tobytes(), y.numpy().tobytes(), tr.tobytes()),
        kind=kind,
        notes=list(notes),
        norm_from=source,
        test=TensorSplit(x[te], y[te], mean, std, names=[f"#{int(i)}" for i in te])
        if te is not None and len(te)
        else None,
    )


def _norm_from(cfg, default: str) -> str:
    """Where mean/std came from, given where the unset ones came from (`default`)."""
    if cfg.mean is not None and cfg.std is not None:
        return "config"
    if cfg.mean is not None or cfg.std is not None:
        return f"config ({'mean' if cfg.mean is not None else 'std'}), {default}"
    return default


def digits_arrays() -> Tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits: (1797 8x8 images with grey levels 0..16, labels).

    Read from the file inside scikit-learn's package, as load_digits reads it, without
    importing scikit-learn: that import costs ~1 s of every stage process on 2 cores."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            table = np.loadtxt(path, delimiter=",")
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits  # another layout: ask scikit-learn

    d = load_digits()
    return d.images, d.target.astype(np.int64)


def _digits(cfg, base, norm=None) -> DataBundle:
    images, target = digits_arrays()
    # 8x8 grey levels 0..16 -> uint8 0..255, one channel
    x = torch.from_numpy(np.round(images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    y = torch.from_numpy(target)
    tr, va, te = split_indices(target, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
    return _tensor_bundle(
        cfg,
        "digits",
        x,
        y,
        tr,
        va,
        [str(c) for c in range(10)],
        notes=["scikit-learn's bundled digits: 1,797 real 8x8 images, upsampled"],
        norm=norm,
        te=te,
    )


def synthetic_images(
    num: int, num_classes: int, size: int, channels: int, noise: float, seed: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Class k = a bright square in cell k of a 4x4 grid, on a noisy background."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(num) % num_classes
    y = y[torch.randperm(num, generator=g)]
    img = 0.3 + noise * 0.5 * torch.randn(num, channels, size, size, generator=g)
    cell = max(1, size // 4)
    for k in range(num_classes):
        r, c = divmod(k, 4)
        sel = y == k
        img[sel, :, r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] += 0.6
    return (img.clamp(0, 1) * 255).round().to(torch.uint8), y


def _synthetic(cfg, base, norm=None) -> DataBundle:
    n_test = int(cfg.get("num_test") or 0)
    n = cfg.num_train + cfg.num_val + n_test
    x, y = synthetic_images(
        n, cfg.num_classes, cfg.image_size, cfg.channels, cfg.noise, cfg.split_seed
    )
    tr = np.arange(cfg.num_train)
    va = np.arange(cfg.num_train, cfg.num_train + cfg.num_val)
    te = np.arange(cfg.num_train + cfg.num_val, n)
    names = [f"c{k}" for k in range(cfg.num_classes)]
    return _tensor_bundle(cfg, "synthetic", x, y, tr, va, names, norm=norm, te=te)


def _default_mean_std(cfg, channels, norm=None):
    """(mean, std, where they came from) of a streamed kind: the config's, else the
    pretrained model's (`norm`), else ImageNet's for RGB (streamed files are not measured:
    that would read the whole set once more) or 0.5 for other channel counts."""
    if cfg.mean is not None and cfg.std is not None:
        return (
            tuple(cfg.mean) * (channels // len(cfg.mean)),
            tuple(cfg.std) * (channels // len(cfg.std)),
            "config",
        )
    if norm is not None:
        mean, std = _per_channel(norm[0], channels), _per_channel(norm[1], channels)
        source = norm[2]
    elif channels == 3:
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        mean, std, source = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, "ImageNet defaults"
    else:
        mean, std, source = (0.5,), (0.5,), "0.5 (not measured)"
    mean = tuple(cfg.mean) * (channels // len(cfg.mean)) if cfg.mean is not None else mean
    std = tuple(cfg.std) * (channels // len(cfg.std)) if cfg.std is not None else std
    return mean, std, _norm_from(cfg, source)


def eval_transform(image_size: int, mean, std, interpolation: str = "bilinear"):
    from timm.data import create_transform

    return create_transform(
        input_size=image_size,
        is_training=False,
        crop_pct=1.0,
        interpolation=interpolation,
        mean=mean,
        std=std,
    )


def train_transform(aug, image_size: int, mean, std, interpolation: str = "bilinear"):
    """timm's training transform for an aug preset; None when aug is off (recipe: start simple)."""
    if aug.name == "none":
        return None
    from timm.data import create_transform

    return create_transform(
        input_size=image_size,
        is_training=True,
        scale=tuple(aug.scale),
        ratio=tuple(aug.ratio),
        hflip=aug.hflip,
        vflip=aug.vflip,
        color_jitter=aug.color_jitter or 0.0,
        auto_augment=aug.auto_augment,
        re_prob=aug.re_prob,
        interpolation=interpolation,
        mean=mean,
        std=std,
    )


def image_extensions() -> set[str]:
    """The file extensions (lower case) an image folder is read with: timm's, since its
    ImageDataset reads the folders for training; files of any other extension are ignored."""
    from timm.data.readers.img_extensions import get_img_extensions

    return get_img_extensions(as_set=True)


def list_class_folders(root: Path) -> List[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _has_images(folder: Path) -> bool:
    exts = image_extensions()
    return any(f.suffix.lower() in exts for f in folder.rglob("*") if f.is_file())


def walk_image_folder(top: Path) -> Tuple[List[Tuple[str, str]], List[str], int]:
    """An image folder as training reads it (timm's folder walk and extensions): its
    (path, class name) pairs in timm's order, the names of its class folders (with images or
    not), and how many files it ignores (not of `image_extensions()`)."""
    import os

    from timm.data.readers.reader_image_folder import find_images_and_targets

    exts = image_extensions()
    samples, class_to_idx = find_images_and_targets(str(top))
    idx_to_class = {v: k for k, v in class_to_idx.items()}
    classes = sorted(set(class_to_idx) | {c.name for c in list_class_folders(top)})
    ignored = sum(
        1 for _, _, fs in os.walk(top) for f in fs if os.path.splitext(f)[1].lower() not in exts
    )
    return [(p, idx_to_class[t]) for p, t in samples], classes, ignored


# split folder names of an image folder (never class names): what each one is
SPLIT_FOLDERS = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}


def folder_layout(root: Path) -> Dict[str, Optional[Path]]:
    """{"train", "val", "test"} -> the folder of that split under data.root, or None (carved
    from train). root/train/ (+ val/, valid/ or validation/, + test/) is a split layout; a root
    without split folders is one folder of class folders: train, with val (and test with
    data.test_fraction) carved from it."""
    found: Dict[str, List[Path]] = {}
    for name, split in SPLIT_FOLDERS.items():
        if (root / name).is_dir():
            found.setdefault(split, []).append(root / name)
    if not found:
        return {"train": root, "val": None, "test": None}
    problems = []
    if "train" not in found:
        problems.append(
            f"data.root: {root} has {', '.join(p.name + '/' for v in found.values() for p in v)} "
            "but no train/; split folders (train, val/valid/validation, test) are never "
            "classes: add train/ beside them, or put the class folders directly in data.root"
        )
    if len(found.get("val", ())) > 1:
        problems.append(
            f"data.root: {root} has {' and '.join(p.name + '/' for p in found['val'])}: "
            "which one is the validation split? keep one"
        )
    if problems:
        raise ConfigError(problems)
    return {s: (found[s][0] if s in found else None) for s in ("train", "val", "test")}


def _class_folder_problems(layout: Dict[str, Optional[Path]]) -> List[str]:
    problems = []
    for split, t in layout.items():
        if t is None:
            continue
        classes = list_class_folders(t)
        if not classes:
            problems.append(f"data.root: {t} has no class folders; expected one folder per class")
        elif len(classes) == 1 and split == "train":  # val may hold fewer classes
            problems.append(
                f"data.root: {t} has one class folder ({classes[0].name}); a "
                "classifier needs at least 2 (one folder per class)"
            )
        for c in classes:
            if not _has_images(c):
                problems.append(
                    f"data.root: class folder {c} has no images "
                    f"(expected {', '.join(sorted(image_extensions()))})"
                )
    train = {c.name for c in list_class_folders(layout["train"])}
    if layout["val"] is not None:
        extra = sorted({c.name for c in list_class_folders(layout["val"])} - train)
        if extra:
            problems.append(f"data.root: {layout['val']} has classes not in train/: {extra}")
    if layout["test"] is not None:
        test = {c.name for c in list_class_folders(layout["test"])}
        if test != train:
            problems.append(
                f"data.root: {layout['test']} has other classes than {layout['train']}: "
                f"not in train/: {sorted(test - train)}, missing from test/: "
                f"{sorted(train - test)}; the test split must hold the classes the model learns"
            )
    return problems


def _refuse_test_copies(layout, train_samples, test_samples) -> None:
    """A file of test/ that is also in train/ (the same class folder, file name and size: a
    copy) makes the test figure measure memory: refused, naming the files. Near copies under
    other names are what stage=inspect's data.leakage finds (it reads every image)."""

    def key(p: str) -> tuple:
        return (Path(p).parent.name, Path(p).name, os.path.getsize(p))

    train = {key(p) for p, _ in train_samples}
    copies = [p for p, _ in test_samples if key(p) in train]
    if copies:
        shown = ", ".join(str(Path(p).relative_to(layout["test"])) for p in copies[:5])
        raise ConfigError(
            f"data.root: {len(copies)} file(s) of {layout['test']} are also in "
            f"{layout['train']} (same class, name and size), e.g. {shown}; a test split must "
            "hold images training never saw: remove them from one of the two"
        )


def split_indices(
    labels: np.ndarray,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    carve_val: bool = True,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) indices of one pool of images, each stratified by label and seeded.

    val is what `_random_split` has always carved (the same images whether or not a test split
    is asked for: turning data.test_fraction on does not move validation); the test split
    (test_fraction of the pool) is then carved from the rest, with its own seed."""
    n = len(labels)
    if carve_val:
        tr, va = _random_split(n, val_fraction, seed, labels)
    else:
        tr, va = np.arange(n, dtype=np.int64), np.zeros(0, np.int64)
    if test_fraction <= 0 or len(tr) == 0:
        return tr, va, np.zeros(0, np.int64)
    rel = min(0.99, test_fraction * n / len(tr))
    keep, te = _random_split(len(tr), rel, seed + 1, labels[tr])
    return tr[keep], va, tr[te]


def _imagefolder(cfg, base, norm=None) -> DataBundle:
    from timm.data import ImageDataset
    from torch.utils.data import Subset

    root = (base / cfg.root).expanduser()
    layout = folder_layout(root)
    problems = _class_folder_problems(layout)
    test_fraction = float(cfg.get("test_fraction") or 0.0)
    if layout["test"] is not None and test_fraction > 0:
        problems.append(
            f"data.test_fraction={test_fraction:g} but {layout['test']} is the test split; "
            "remove data.test_fraction (or the test/ folder)"
        )
    if problems:
        raise ConfigError(problems)
    mode = "L" if cfg.channels == 1 else "RGB"
    limits = (int(cfg.get("max_image_pixels") or 0), int(cfg.get("max_image_bytes") or 0))
    mean, std, source = _default_mean_std(cfg, cfg.channels, norm)
    tf = eval_transform(cfg.image_size, mean, std, cfg.interpolation)

    def stream(ds, idx=None) -> StreamSplit:
        """A split of the folder ImageDataset `ds`: all of it, or its items `idx`."""
        labels = np.array([t for _, t in ds.reader.samples], dtype=np.int64)
        files = _Files(ds, mode, *limits)
        if idx is None:
            return StreamSplit(
                files,
                torch.from_numpy(labels),
                None,
                tf,
                mean,
                std,
                lambda i, d=ds: d.filename(i, absolute=True),
                cfg.image_size,
                cfg.interpolation,
            )
        return StreamSplit(
            Subset(files, idx.tolist()),
            torch.from_numpy(labels[idx]),
            None,
            tf,
            mean,
            std,
            lambda i, d=ds, t=idx: d.filename(int(t[i]), absolute=True),
            cfg.image_size,
            cfg.interpolation,
        )

    tr_ds = ImageDataset(str(layout["train"]), input_img_mode=mode)
    class_to_idx = tr_ds.reader.class_to_idx
    folders = {
        s: ImageDataset(str(layout[s]), input_img_mode=mode, class_map=dict(class_to_idx))
        for s in ("val", "test")
        if layout[s] is not None
    }
    labels = np.array([t for _, t in tr_ds.reader.samples], dtype=np.int64)
    tr, va, te = split_indices(
        labels,
        cfg.val_fraction,
        test_fraction,
        cfg.split_seed,
        carve_val="val" not in folders,
    )
    whole = "val" in folders and not len(te)  # train/ is the train split as it is
    train = stream(tr_ds, None if whole else tr)
    val = stream(folders["val"]) if "val" in folders else stream(tr_ds, va)
    test = (
        stream(folders["test"]) if "test" in folders else (stream(tr_ds, te) if len(te) else None)
    )
    samples = tr_ds.reader.samples + [x for d in folders.values() for x in d.reader.samples]
    names = [c for c, _ in sorted(class_to_idx.items(), key=lambda kv: kv[1])]
    if "test" in folders:
        _refuse_test_copies(layout, tr_ds.reader.samples, folders["test"].reader.samples)
    split = np.zeros(len(samples), np.int8)
    if "val" in folders:
        split[len(labels) : len(labels) + len(folders["val"])] = 1
    else:
        split[va] = 1
    split[te] = 2
    if "test" in folders:
        split[len(samples) - len(folders["test"]) :] = 2
    from runner.sources import content_fingerprint, file_digest

    fp = content_fingerprint(
        split,
        np.array([t for _, t in samples]),
        names,
        [file_digest(p) for p, _ in samples],
    )
    return DataBundle(
        train,
        val,
        len(names),
        cfg.channels,
        cfg.image_size,
        names,
        tuple(mean),
        tuple(std),
        fp,
        "imagefolder",
        norm_from=source,
        test=test,
    )


def _targets_of(ds) -> Optional[torch.Tensor]:
    for attr in ("targets", "labels"):
        t = getattr(ds, attr, None)
        if t is not None:
            return torch.as_tensor(np.asarray(t)).long()
    return None


def _torchvision(cfg, base, norm=None) -> DataBundle:
    import torchvision.datasets as tvd

    cls = getattr(tvd, cfg.name, None)
    if cls is None or not isinstance(cls, type):
        names = [n for n in dir(tvd) if n[0].isupper()]
        import difflib

        near = difflib.get_close_matches(cfg.name, names, n=3)
        raise ConfigError(
            f"data.name={cfg.name!r} is not a torchvision dataset"
            + (f"; did you mean {', '.join(map(repr, near))}?" if near else "")
        )
    params = inspect.signature(cls).parameters
    kw = dict(cfg.kwargs)
    if "root" in params:
        kw["root"] = str((base / cfg.root).expanduser())
    if "download" in params:
        kw["download"] = cfg.download

    def make(split_name):
        k = dict(kw)
        if "train" in params:
            k["train"] = split_name == "train"
        elif "split" in params:
            k["split"] = split_name
        try:
            return cls(**k)
        except RuntimeError as e:  # torchvision: "Dataset not found. You can use download=True"
            raise ConfigError(
                f"data.root={cfg.root!r}: torchvision {cfg.name} could not load ({e}); "
                "set data.download=true on a machine with internet"
            ) from e

    mean, std, source = _default_mean_std(cfg, cfg.channels, norm)
    tf = _channel_fix(eval_transform(cfg.image_size, mean, std, cfg.interpolation), cfg.channels)
    from torch.utils.data import Subset

    # the dataset's official test split is the test split, scored once on the final model;
    # validation, which every selection reads, is carved from its train split (stratified,
    # data.split_seed): selecting on the benchmark's test set would leave no honest number
    official = "train" in params or "split" in params
    ds = make("train")
    labels = _targets_of(ds)
    if labels is None:
        labels = torch.tensor([int(ds[i][1]) for i in range(len(ds))])
    tr, va, te = split_indices(
        labels.numpy(),
        cfg.val_fraction,
        0.0 if official else float(cfg.get("test_fraction") or 0.0),
        cfg.split_seed,
    )

    def stream(d, lab):
        return StreamSplit(
            d, lab, None, tf, mean, std, image_size=cfg.image_size, interpolation=cfg.interpolation
        )

    train = stream(Subset(ds, tr.tolist()), labels[tr])
    val = stream(Subset(ds, va.tolist()), labels[va])
    if official:
        te_ds = make("test")
        test = stream(te_ds, _targets_of(te_ds))
    else:
        test = stream(Subset(ds, te.tolist()), labels[te]) if len(te) else None
    classes = getattr(ds, "classes", None)
    n_cls = len(classes) if classes else int(labels.max()) + 1
    names = [str(c) for c in classes] if classes else [str(i) for i in range(n_cls)]
    fp = _fingerprint(
        "torchvision",
        cfg.name,
        len(train),
        len(val),
        train.labels.numpy().tobytes(),
        *(["test", len(test)] if test is not None else []),
    )
    return DataBundle(
        train,
        val,
        n_cls,
        cfg.channels,
        cfg.image_size,
        names,
        tuple(mean),
        tuple(std),
        fp,
        "torchvision",
        norm_from=source,
        test=test,
    )


def _channel_fix(transform, channels: int):
    """PIL images of any mode -> the configured channel count, before timm's transform."""
    from torchvision import transforms as T

    mode = "L" if channels == 1 else "RGB"
    return T.Compose(
        [T.Lambda(lambda im: im.convert(mode) if hasattr(im, "convert") else im), transform]
    )


def _custom(cfg, base, norm=None) -> DataBundle:
    from runner.targets import resolve_target

    fn = resolve_target(cfg._target_, "data._target_")
    out = fn(**dict(cfg.kwargs))
    if not (isinstance(out, (tuple, list)) and len(out) in (2, 3)):
        raise ConfigError(
            f"data._target_={cfg._target_!r} returned {type(out).__name__}"
            + (f" of {len(out)}" if isinstance(out, (tuple, list)) else "")
            + "; expected a (train, val) pair or a (train, val, test) triple of map-style datasets"
        )
    tr_ds, va_ds, te_ds = (*out, None) if len(out) == 2 else out
    if te_ds is not None and (te_ds is tr_ds or te_ds is va_ds):
        raise ConfigError(
            f"data._target_={cfg._target_!r} returned the "
            f"{'train' if te_ds is tr_ds else 'val'} dataset as the test dataset; the test "
            "split must be images no training and no selection saw"
        )
    for nm, ds in (("train", tr_ds), ("val", va_ds), ("test", te_ds)):
        if ds is None:
            continue
        if not hasattr(ds, "__getitem__") or not hasattr(ds, "__len__") or len(ds) == 0:
            raise ConfigError(
                f"data._target_={cfg._target_!r}: the {nm} dataset is empty or not "
                "map-style (needs __len__ and __getitem__ returning (image, label))"
            )
    img0 = tr_ds[0][0]
    if isinstance(img0, torch.Tensor):
        channels = img0.shape[0] if img0.dim() == 3 else 1
    else:
        channels = cfg.channels
    mean, std, source = _default_mean_std(cfg, channels, norm)
    tf = _channel_fix(eval_transform(cfg.image_size, mean, std, cfg.interpolation), channels)
    train = StreamSplit(
        tr_ds,
        _targets_of(tr_ds),
        None,
        tf,
        mean,
        std,
        image_size=cfg.image_size,
        interpolation=cfg.interpolation,
    )
    val = StreamSplit(
        va_ds,
        _targets_of(va_ds),
        None,
        tf,
        mean,
        std,
        image_size=cfg.image_size,
        interpolation=cfg.interpolation,
    )
    test = None
    if te_ds is not None:
        test = StreamSplit(
            te_ds,
            _targets_of(te_ds),
            None,
            tf,
            mean,
            std,
            image_size=cfg.image_size,
            interpolation=cfg.interpolation,
        )
    classes = getattr(tr_ds, "classes", None)
    n_cls = len(classes) if classes else int(torch.cat([train.labels, val.labels]).max()) + 1
    names = [str(c) for c in classes] if classes else [str(i) for i in range(n_cls)]
    if test is not None and len(test) and int(test.labels.max()) >= n_cls:
        raise ConfigError(
            f"data._target_={cfg._target_!r}: the test dataset has label "
            f"{int(test.labels.max())}, but train/val hold {n_cls} classes ({names})"
        )
    fp = _fingerprint(
        "custom",
        cfg._target_,
        len(train),
        len(val),
        train.labels.numpy().tobytes(),
        *(["test", len(test)] if test is not None else []),
    )
    return DataBundle(
        train,
        val,
        n_cls,
        channels,
        cfg.image_size,
        names,
        tuple(mean),
        tuple(std),
        fp,
        "custom",
        norm_from=source,
        test=test,
    )


# ----------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class DataKind:
    """A data kind: its builder `build(cfg, base, norm) -> DataBundle` (cfg: the `data` node;
    base: the folder relative paths start from; norm: a pretrained model's (mean, std, source)
    or None) and the data.* keys it reads besides those every kind reads (kind, image_size,
    mean, std, num_workers, in_memory_max_pixels). config.validate() refuses a key the user
    set that the selected kind does not read, naming the kind that would: never a silently
    ignored setting."""

    build: Optional[Callable[..., DataBundle]] = None
    keys: Tuple[str, ...] = ()
    # a kind made of image records (runner/sources): its `records(cfg, base) -> Records`, or
    # "module:function" naming it, imported when used (an optional dependency is needed only
    # then); its builder is runner.sources.bundle, and stage=inspect reads its files
    records: Any = ""

    def make(self, cfg, base, norm=None) -> DataBundle:
        if not self.records:
            return self.build(cfg, base, norm)
        from runner import sources

        return sources.bundle(self.read_records(cfg, base), cfg, norm)

    def read_records(self, cfg, base):
        if callable(self.records):
            return self.records(cfg, base)
        import importlib

        module, _, fn = self.records.partition(":")
        return getattr(importlib.import_module(module), fn)(cfg, base)


# what every kind of image files reads (an image folder, runner/sources bundle): its
# channels, splits, decoding limits and unreadable files
_RECORD_KEYS = (
    "channels",
    "val_fraction",
    "test_fraction",
    "split_seed",
    "on_unreadable",
    "interpolation",
    "max_image_pixels",
    "max_image_bytes",
)

# data.kind -> DataKind: a new kind is one builder function and one line here
DATA_KINDS: Dict[str, DataKind] = {
    "digits": DataKind(_digits, ("val_fraction", "test_fraction", "split_seed", "interpolation")),
    "synthetic": DataKind(
        _synthetic,
        ("num_classes", "num_train", "num_val", "num_test", "noise", "channels", "split_seed"),
    ),
    "imagefolder": DataKind(_imagefolder, ("root", *_RECORD_KEYS)),
    "torchvision": DataKind(
        _torchvision,
        (
            "name",
            "root",
            "download",
            "kwargs",
            "channels",
            "val_fraction",
            "test_fraction",
            "split_seed",
            "on_unreadable",
            "interpolation",
        ),
    ),
    "custom": DataKind(
        _custom, ("_target_", "kwargs", "channels", "on_unreadable", "interpolation")
    ),
    "manifest": DataKind(
        records="runner.sources.manifest:records",
        keys=(
            "files",
            "path_column",
            "label_column",
            "split_column",
            "group_column",
            *_RECORD_KEYS,
        ),
    ),
    "hf": DataKind(
        records="runner.sources.hf:records",
        keys=("root", "image_column", "label_column", "group_column", "splits", *_RECORD_KEYS),
    ),
    "wds": DataKind(
        records="runner.sources.wds:records",
        keys=("shards", "stream", "shuffle_buffer", "sample_size", "group_column", *_RECORD_KEYS),
    ),
}


def kind_keys() -> Dict[str, Tuple[str, ...]]:
    """data.kind -> the data.* keys it reads (DATA_KINDS' `keys`), for config.validate()."""
    return {name: kind.keys for name, kind in DATA_KINDS.items()}
