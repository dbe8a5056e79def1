"""Frozen settings for training and prediction, saved as JSON beside every trained model."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

MODEL_NAMES = ("cnn", "mobilenet")
CONFIG_FILE = "config.json"
MODEL_FILE = "model.keras"


def parse_size(text: str) -> tuple[int, int]:
    """Parse 'HxW' (e.g. '160x240') into (height, width)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size must look like HxW (e.g. 160x240), got {text!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {text!r}")
    return h, w


@dataclass(frozen=True)
class TrainConfig:
    """Everything needed to rebuild, train and apply a model; one JSON per run folder."""

    model: str = "mobilenet"
    image_size: tuple[int, int] = (160, 240)  # (h, w) images are resized to, aspect kept
    original_size: tuple[int, int] = (1280, 1918)  # (h, w) of the dataset's images
    weights: str = "none"  # none | imagenet | path to a weights file
    bn_momentum: float = 0.9  # 0.999 (Keras default) leaves from-scratch BN statistics unusable
    epochs: int = 20
    batch_size: int = 16
    learning_rate: float = 1e-3
    patience: int = 5
    augment: bool = True
    val_fraction: float = 0.2
    seed: int = 42
    max_cars: int = 0  # 0: all training cars; otherwise a deterministic subset (quick runs)
    val_cars: tuple[str, ...] = field(default_factory=tuple)
    train_cars: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self):
        if self.model not in MODEL_NAMES:
            raise ValueError(
                f"unknown model {self.model!r}; choose one of {', '.join(MODEL_NAMES)}"
            )
        # JSON gives lists back; keep tuples so the dataclass stays hashable and comparable.
        for name in ("image_size", "original_size", "val_cars", "train_cars"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def padded_size(self) -> tuple[int, int]:
        """Model input size: image_size rounded up to multiples of 32 (MobileNetV2's stride)."""
        return tuple(32 * math.ceil(s / 32) for s in self.image_size)

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

    def replace(self, **changes) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain-JSON dictionary of all fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Build from a dictionary, rejecting unknown keys by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**data)

    def save(self, run_dir: str | Path) -> Path:
        """Write config.json into a run folder."""
        path = Path(run_dir) / CONFIG_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, run_dir: str | Path) -> TrainConfig:
        """Read config.json from a run folder (or the file itself)."""
        path = Path(run_dir)
        if path.is_dir():
            path = path / CONFIG_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path}: no config.json; is this a run folder made by train?")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: bad config: {err}") from None


@dataclass(frozen=True)
class PredictConfig:
    """Settings of one prediction run; the model's own settings come from its TrainConfig."""

    threshold: float = 0.5
    tta: bool = False  # average with the un-flipped prediction of the flipped image
    batch_size: int = 32
    workers: int = 2  # post-processing threads (upscale, threshold, RLE)
    shard: tuple[int, int] = (0, 1)  # (i, n): this run predicts the i-th of n parts
    limit: int = 0  # 0: all test images

    def __post_init__(self):
        object.__setattr__(self, "shard", tuple(self.shard))
        i, n = self.shard
        if not (n >= 1 and 0 <= i < n):
            raise ValueError(f"shard must be i/n with 0 <= i < n, got {i}/{n}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be between 0 and 1, got {self.threshold}")
