"""How a video becomes a model's input: the settings that travel with the weights, and normalisation.

`Preprocessing` records what training fixed (frames and how they are picked, image and short-side size,
normalisation statistics, evaluation views), so that a checkpoint or an export tells inference how
to prepare a video. Checkpoints store it as a plain dict (`to_dict`), which `weights_only=True`
reads back. `normalize` is the one normalisation of the DataModule and of inference.
"""
import dataclasses
from dataclasses import dataclass

import torch

from frame_sampling import SAMPLINGS
from utils import reject_unknown

DATA_STATICS = {
    'kinetics': ((0.45, 0.45, 0.45), (0.225, 0.225, 0.225)),
    'imagenet': ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    'clip': ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    'inception': ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
# Evaluation resizes the short side to img_size * 256 / 224 and crops img_size, the Kinetics habit.
SHORT_SIDE_RATIO = 256 / 224


def default_short_side(img_size):
    """The short side a clip is resized to before img_size crops are cut: img_size * 256 / 224."""
    return round(img_size * SHORT_SIDE_RATIO)


def data_statics(name):
    """(mean, std) of a named normalisation ('kinetics', 'imagenet', 'clip', 'inception')."""
    if name not in DATA_STATICS:
        raise ValueError(f'data_statics must be one of {sorted(DATA_STATICS)}, got {name!r}')
    return DATA_STATICS[name]


@dataclass(frozen=True)
class Preprocessing:
    """Sampling, resizing, cropping and normalisation a model was trained with.

    sampling 'interval': a clip is num_frames frames evenly spaced over a window of num_frames *
    frame_interval frames, or of window_seconds when given; 'segments': one frame in each of
    num_frames equal parts of the whole video (frame_interval unused). Frames are resized so their
    short side is short_side, then img_size crops are cut: the centre one, or num_crops along the
    long side of each of num_clips clips at test time. mean and std normalise RGB in [0, 1].
    """

    num_frames: int = 8
    frame_interval: int = 32
    window_seconds: float | None = None
    # Files written before this field read back as 'interval', the only sampling there was.
    sampling: str = 'interval'
    img_size: int = 224
    short_side: int | None = None
    mean: tuple = DATA_STATICS['kinetics'][0]
    std: tuple = DATA_STATICS['kinetics'][1]
    num_clips: int = 1
    num_crops: int = 3

    def __post_init__(self):
        # JSON and checkpoints give lists back; keep the frozen object hashable and comparable.
        object.__setattr__(self, 'mean', tuple(float(value) for value in self.mean))
        object.__setattr__(self, 'std', tuple(float(value) for value in self.std))
        if self.short_side is None:
            object.__setattr__(self, 'short_side', default_short_side(self.img_size))
        for name in ('num_frames', 'frame_interval', 'img_size', 'num_clips', 'num_crops'):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f'{name} must be a positive integer, got {value!r}')
        if self.window_seconds is not None and not self.window_seconds > 0:
            raise ValueError(f'window_seconds must be positive, got {self.window_seconds}')
        if self.sampling not in SAMPLINGS:
            raise ValueError(f'sampling must be one of {SAMPLINGS}, got {self.sampling!r}')
        if self.sampling == 'segments' and self.window_seconds is not None:
            raise ValueError(f'window_seconds {self.window_seconds} is a window of interval sampling; segments '
                             f'sampling spreads the frames over the whole video')
        if self.short_side < self.img_size:
            raise ValueError(f'short_side {self.short_side} is smaller than img_size {self.img_size}')
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f'mean and std need 3 channels and std > 0, got {self.mean} and {self.std}')

    @classmethod
    def from_dict(cls, values):
        """A Preprocessing from `to_dict`'s output; unknown keys are a ValueError naming them."""
        reject_unknown(values, [field.name for field in dataclasses.fields(cls)], 'unknown preprocessing settings')
        return cls(**values)

    def to_dict(self):
        """Plain types only (lists for mean and std), for checkpoints and JSON."""
        values = dataclasses.asdict(self)
        return {**values, 'mean': list(self.mean), 'std': list(self.std)}

    @property
    def num_views(self):
        """Evaluation views per video: num_clips x num_crops, clip-major."""
        return self.num_clips * self.num_crops

    @property
    def centre_view(self):
        """Index of the one-view figure's view among a video's views: the centre crop of the middle
        clip (of two middle clips, the later)."""
        return (self.num_clips // 2) * self.num_crops + self.num_crops // 2

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


def normalize(video, mean, std):
    """RGB video (..., 3, H, W), uint8 or float in [0, 1] -> float (video - mean) / std per channel,
    same shape."""
    if video.dtype == torch.uint8:
        video = video.float().div_(255)
    mean = torch.as_tensor(mean, dtype=video.dtype, device=video.device).view(3, 1, 1)
    std = torch.as_tensor(std, dtype=video.dtype, device=video.device).view(3, 1, 1)
    return (video - mean) / std
