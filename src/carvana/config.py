"""Settings: the frozen TrainConfig / PredictConfig, their one parser and their JSON files.

Every way a setting reaches a run goes through `parse_value`: the CLI's flags and
CARVANA_<FIELD> variables in kernels (both made from the dataclass fields by carvana.flags) and
config.json. The parsers of each kind of value live in carvana.parsing. Values are checked
where the dataclass is built, so every caller gets the same one-line errors. No TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import NamedTuple

from carvana.parsing import parse_bool, parse_number, parse_shard, parse_size, parse_stages

MODEL_NAMES = ("cnn", "mobilenet")
LOSS_NAMES = ("bce_dice", "bce_lovasz")  # carvana.losses.LOSSES
CONFIG_FILE = "config.json"
MODEL_FILE = "model.keras"
VERSIONS_KEY = "versions"  # config.json: the library versions a run was trained with
RECORDED_PACKAGES = ("tensorflow", "keras", "keras-cv", "numpy")
# Settings added after runs were already saved: the value a config.json without them meant.
SAVED_BEFORE = {
    "decoder_width": 512,
    "refine": False,
    "val_images": 0,
    "loss": "bce_dice",
    "encoder_scale": 1,
    "warmup": 0.0,
    "soft_targets": False,
    "progressive": "",
    "augment_until": 1.0,
    "augment_strength": 1.0,
    "ema": 0.0,
    "keep_flips": False,
}
ENCODER_SCALES = (1, 2, 4)


def setting(default, help: str, **extra):
    """A dataclass field with its help text (and optional CLI `flag`, `kind`, `cli=False`)."""
    if callable(default):
        return field(default_factory=default, metadata={"help": help, **extra})
    return field(default=default, metadata={"help": help, **extra})


def parse_value(cls, name: str, text: str):
    """Parse the text of one setting of `cls` (e.g. TrainConfig, 'image_size', '160x240')."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if name not in fields:
        raise ValueError(f"unknown setting {name!r}; choose one of {', '.join(fields)}")
    f = fields[name]
    kind = f.metadata.get("kind", f.type)
    parsers = {
        "bool": parse_bool,
        "int": lambda t: parse_number(t, int),
        "float": lambda t: parse_number(t, float),
        "str": str.strip,
        "stages": lambda t: ",".join(f"{s:g}@{u:g}" for s, u in parse_stages(t)),
        "size": lambda t: parse_size(t.strip()),
        "shard": lambda t: parse_shard(t.strip()),
        "names": lambda t: tuple(v for v in re.split(r"[,\s]+", t.strip()) if v),
    }
    if kind not in parsers:
        raise ValueError(f"setting {name!r} cannot be given as text")
    return parsers[kind](text)


def _check(condition: bool, name: str, rule: str, value) -> None:
    if not condition:
        raise ValueError(f"setting {name} must be {rule}, got {value!r}")


class _Settings:
    """What both configs share: replace, dict/JSON round trip, overrides from text."""

    def replace(self, **changes):
        """A copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain-JSON dictionary of all fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping):
        """Build from a dictionary, rejecting unknown keys by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(unknown)}")
        return cls(**data)

    def with_texts(self, texts: Mapping[str, str], where: str = "{name}"):
        """A copy with fields set from text values; errors name `where` (formatted by name)."""
        changes = {}
        for name, text in texts.items():
            try:
                changes[name] = parse_value(type(self), name, text)
            except ValueError as err:
                raise ValueError(f"{where.format(name=name, NAME=name.upper())}: {err}") from None
        return self.replace(**changes) if changes else self


class Stage(NamedTuple):
    """One `fit` of a run: its image size, the schedule fraction it trains until, augmented."""

    size: tuple[int, int]
    until: float
    augment: bool


@dataclass(frozen=True)
class TrainConfig(_Settings):
    """Everything needed to rebuild, train and apply a model; one JSON per run folder."""

    model: str = setting("mobilenet", f"architecture: {' | '.join(MODEL_NAMES)}")
    # 20 CPU-minutes on real cars: 192x288 reached after 70% of the schedule at 128x192
    # (`progressive`) beat 128x192 throughout: held-out Dice 0.9829 / 0.9833 (2 seeds) vs
    # 0.9816-0.9825 (benchmarks/quality.py).
    image_size: tuple[int, int] = setting(
        (192, 288), "HxW the images are resized to (aspect kept)", kind="size"
    )
    original_size: tuple[int, int] = setting(
        (1280, 1918), "HxW of the dataset's images (train fills it in)", kind="size", cli=False
    )
    weights: str = setting("none", "encoder weights: none | imagenet | path to a weights file")
    # 256 (segmentation_models' U-Net default) trains ~1.5-2x faster than the tutorial's 512
    # on CPU for the same held-out Dice (benchmarks/quality.py).
    decoder_width: int = setting(
        256, "filters of the MobileNetV2 U-Net's coarsest decoder step (halved at each finer one)"
    )
    # 0.999 (Keras's default) leaves from-scratch BN statistics unusable for hundreds of steps.
    bn_momentum: float = setting(0.9, "BatchNormalization momentum")
    refine: bool = setting(
        True,
        "MobileNetV2 U-Net: a full-resolution head (the image joined to the last upsampling) "
        "rather than the tutorial's single stride-2 deconvolution: on | off",
    )
    encoder_scale: int = setting(
        1,
        "MobileNetV2 U-Net: its encoder sees the image shrunk by this factor (1, 2 or 4) and "
        "the refine head brings the mask back to image_size with the image at each scale",
    )
    loss: str = setting(
        "bce_dice",
        f"training loss, per image: {' | '.join(LOSS_NAMES)} (binary cross-entropy plus soft "
        "Dice, or plus the Lovasz hinge)",
    )
    soft_targets: bool = setting(
        False,
        "train on each model pixel's car share (0..1, the full-size pixels it covers) rather "
        "than share >= 0.5: on | off",
    )
    progressive: str = setting(
        "0.667@0.7",
        "progressive resizing: SCALE@UNTIL[,...] trains at SCALE times image_size until that "
        "fraction of the learning-rate schedule, then at image_size (e.g. 0.67@0.7); empty: off",
        kind="stages",
    )
    epochs: int = setting(20, "epochs to train")
    batch_size: int = setting(16, "images per step (global, over all replicas)")
    # MobileNetV2 U-Net from scratch, 4-minute CPU budget: held-out Dice 0.965 at 3e-3, 0.952
    # at 1e-3 (benchmarks/quality.py --lr).
    learning_rate: float = setting(3e-3, "initial learning rate", flag="lr")
    warmup: float = setting(
        0.0, "fraction of the schedule over which the learning rate rises linearly from 0"
    )
    patience: int = setting(5, "early-stopping patience in epochs")
    augment: bool = setting(True, "KerasCV augmentation: on | off")
    # 20 CPU-minutes on real cars: the last half on the photos as they are (the test set's
    # studio, camera and angles) gave held-out Dice 0.9855 / 0.9853 (2 seeds), the last 30%
    # 0.9849 / 0.9846, augmented throughout 0.9829 / 0.9833 (benchmarks/quality.py).
    augment_until: float = setting(
        0.5,
        "with augmentation on: the fraction of the learning-rate schedule after which the "
        "training images are no longer augmented; 1: throughout",
    )
    # Off: seeds 1 / 42 / 7 gave 0.9851 / 0.9848 / 0.9842, the defaults 0.9836 / 0.9855 / 0.9853.
    keep_flips: bool = setting(
        False,
        "after augment_until, go on flipping half the training images left-right (the rest of "
        "the augmentation stops): on | off",
    )
    augment_strength: float = setting(
        1.0,
        "scale of the augmentation's ranges (1: shift 0.05 of a side, zoom 0.9-1.1, 5 "
        "degrees, brightness 0.1, contrast 0.85-1.15, hue 0.05 of a turn); flips stay at half "
        "the images; 0: flips only",
    )
    # Off: 0.99 gave 0.9835 against 0.9836 (seed 1, 20 minutes); the cosine already ends low.
    ema: float = setting(
        0.0,
        "momentum of an exponential moving average of the weights over the training steps "
        "(e.g. 0.99: about the last 100 steps); validation, the saved model and predict use "
        "the average; 0: off",
    )
    val_fraction: float = setting(0.2, "fraction of cars held out for validation")
    # nanoGPT's eval_iters idea: a fixed sample scores each epoch for a fraction of the cost.
    val_images: int = setting(
        64,
        "validation images scored after each epoch, spread over the validation cars and "
        "angles; 0: all (the threshold tuning at the end scores all of them)",
    )
    seed: int = setting(42, "seed of the car split, shuffling and initialisation")
    max_cars: int = setting(0, "use only this many cars (quick runs); 0: all")
    minutes: float = setting(
        0.0,
        "time budget of this invocation in minutes: the learning-rate schedule ends and "
        "training stops when it is spent (epochs stays a cap); 0: none",
    )
    val_cars: tuple[str, ...] = setting(tuple, "validation cars", kind="names", cli=False)
    train_cars: tuple[str, ...] = setting(tuple, "training cars", kind="names", cli=False)

    def __post_init__(self):
        # JSON gives lists back; keep tuples so the dataclass stays hashable and comparable.
        for name in ("image_size", "original_size", "val_cars", "train_cars"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        _check(self.model in MODEL_NAMES, "model", f"one of {', '.join(MODEL_NAMES)}", self.model)
        for name in ("image_size", "original_size"):
            size = getattr(self, name)
            _check(
                len(size) == 2 and all(isinstance(s, int) and 1 <= s <= 8192 for s in size),
                name,
                "two sides between 1 and 8192 pixels (HxW)",
                size,
            )
        _check(
            self.encoder_scale in ENCODER_SCALES,
            "encoder_scale",
            f"one of {', '.join(map(str, ENCODER_SCALES))}",
            self.encoder_scale,
        )
        _check(
            self.encoder_scale == 1 or (self.model == "mobilenet" and self.refine),
            "encoder_scale",
            "1 unless the model is mobilenet with refine on",
            self.encoder_scale,
        )
        _check(self.loss in LOSS_NAMES, "loss", f"one of {', '.join(LOSS_NAMES)}", self.loss)
        try:
            parse_stages(self.progressive)
        except ValueError as err:
            raise ValueError(f"setting progressive: {err}") from None
        _check(self.decoder_width >= 8, "decoder_width", "at least 8", self.decoder_width)
        _check(self.epochs >= 1, "epochs", "at least 1", self.epochs)
        _check(self.batch_size >= 1, "batch_size", "at least 1", self.batch_size)
        _check(
            math.isfinite(self.learning_rate) and self.learning_rate > 0,
            "learning_rate",
            "a positive number",
            self.learning_rate,
        )
        _check(0.0 <= self.warmup < 1.0, "warmup", "in [0, 1)", self.warmup)
        _check(0.0 < self.augment_until <= 1.0, "augment_until", "in (0, 1]", self.augment_until)
        _check(
            math.isfinite(self.augment_strength) and self.augment_strength >= 0,
            "augment_strength",
            "0 or more",
            self.augment_strength,
        )
        _check(0.0 <= self.ema < 1.0, "ema", "in [0, 1)", self.ema)
        _check(self.patience >= 1, "patience", "at least 1", self.patience)
        _check(0.0 <= self.val_fraction < 1.0, "val_fraction", "in [0, 1)", self.val_fraction)
        _check(0.0 <= self.bn_momentum < 1.0, "bn_momentum", "in [0, 1)", self.bn_momentum)
        _check(self.max_cars >= 0, "max_cars", "0 (all) or more", self.max_cars)
        _check(self.val_images >= 0, "val_images", "0 (all) or more", self.val_images)
        _check(self.seed >= 0, "seed", "0 or more", self.seed)
        _check(
            math.isfinite(self.minutes) and self.minutes >= 0,
            "minutes",
            "0 (no budget) or more",
            self.minutes,
        )
        _check(bool(self.weights.strip()), "weights", "none, imagenet or a file", self.weights)

    @property
    def stages(self) -> tuple[Stage, ...]:
        """The run's fits in order: one per progressive-resizing size, split where augmentation
        stops (augment_until); the last ends the schedule at image_size."""
        h, w = self.image_size
        sizes = [
            ((max(1, round(h * scale)), max(1, round(w * scale))), until)
            for scale, until in parse_stages(self.progressive)
        ] + [(self.image_size, 1.0)]
        ends = {until for _, until in sizes}
        if self.augment and self.augment_until < 1.0:
            ends.add(self.augment_until)
        return tuple(
            Stage(
                next(size for size, last in sizes if until <= last),
                until,
                self.augment and until <= self.augment_until,
            )
            for until in sorted(ends)
        )

    @property
    def padded_size(self) -> tuple[int, int]:
        """Model input size: image_size rounded up to multiples of 32 (MobileNetV2's stride)
        times encoder_scale."""
        step = 32 * self.encoder_scale
        return tuple(step * math.ceil(s / step) for s in self.image_size)

    @property
    def jpeg_ratio(self) -> int:
        """Largest DCT scaling factor (1, 2, 4, 8) whose decoded image is still >= image_size."""
        for ratio in (8, 4, 2):
            # libjpeg rounds scaled sides up: 1918 / 8 gives 240 columns.
            if all(
                -(-o // ratio) >= s
                for o, s in zip(self.original_size, self.image_size, strict=True)
            ):
                return ratio
        return 1

    def save(self, run_dir: str | Path) -> Path:
        """Write config.json into a run folder, with the library versions it was trained with."""
        path = Path(run_dir) / CONFIG_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {**self.to_dict(), VERSIONS_KEY: library_versions()}
        path.write_text(json.dumps(data, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, run_dir: str | Path) -> TrainConfig:
        """Read config.json from a run folder (or the file itself)."""
        path = _config_path(run_dir)
        try:
            data = json.loads(path.read_text())
            data.pop(VERSIONS_KEY, None)
            return cls.from_dict({**SAVED_BEFORE, **data})
        except (json.JSONDecodeError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"{path}: bad config: {err}") from None


def default_workers() -> int:
    """Post-processing threads: the cores there are, between 2 and 8."""
    return max(2, min(8, os.cpu_count() or 2))


@dataclass(frozen=True)
class PredictConfig(_Settings):
    """Settings of one prediction run; the model's own settings come from its TrainConfig."""

    threshold: float | None = setting(
        None,
        "probability above which a pixel is car; none: the run's tuned threshold (thresholds.json), "
        "0.5 when it has none",
        kind="float",
    )
    tta: bool = setting(False, "average with the prediction of the horizontally flipped image")
    guided: bool = setting(
        True,
        "move the upscaled mask's edge onto the photo's (a guided filter steered by the image "
        "at half size): on | off",
    )
    batch_size: int = setting(32, "images per forward pass")
    workers: int = setting(default_workers, "post-processing threads (upscale, threshold, RLE)")
    shard: tuple[int, int] = setting(
        (0, 1), "predict the i-th of n deterministic parts, i/n (0-based)", kind="shard"
    )
    limit: int = setting(0, "only the first N test images of the shard; 0: all")

    def __post_init__(self):
        object.__setattr__(self, "shard", tuple(self.shard))
        i, n = self.shard
        _check(n >= 1 and 0 <= i < n, "shard", "i/n with 0 <= i < n", f"{i}/{n}")
        _check(
            self.threshold is None or 0.0 < self.threshold < 1.0,
            "threshold",
            "between 0 and 1 (or none: the run's tuned one)",
            self.threshold,
        )
        _check(self.batch_size >= 1, "batch_size", "at least 1", self.batch_size)
        _check(1 <= self.workers <= 256, "workers", "between 1 and 256", self.workers)
        _check(self.limit >= 0, "limit", "0 (all) or more", self.limit)


# -- run folders ----------------------------------------------------------------------------
def _config_path(run_dir: str | Path) -> Path:
    path = Path(run_dir)
    if path.is_dir():
        path = path / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no config.json; is this a run folder made by train?")
    return path


def library_versions() -> dict[str, str]:
    """Python and the installed versions of the libraries a saved model depends on."""
    versions = {"python": platform.python_version()}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def saved_versions(run_dir: str | Path) -> dict[str, str]:
    """The library versions recorded in a run folder's config.json ({} for older runs)."""
    path = _config_path(run_dir)
    try:
        return dict(json.loads(path.read_text()).get(VERSIONS_KEY) or {})
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: bad config: {err}") from None
