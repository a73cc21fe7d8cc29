"""The dataset of video clips: an annotation source read into clips of sampled, decoded, resized frames,
with a failure budget for unreadable videos, and the collation of clips and views into batches.

A dataset item is a dict: `video` uint8 (T, 3, H, W) in training, (num_clips, T, 3, H, W) in
val (one clip), test and predict, resized so the short side is `short_side`, or None when the
video could not be read (evaluation drops it); `label` int; `index` int and `path` str, the item
actually returned; `failed` [(path, reason)], the unreadable videos met on the way; and what was
read (READ_KEYS, None for an unreadable video): `frame_indices` [[int]] (clips, T), the frame
numbers, `video_frames` int, the frames in the video, `start_s` and `end_s` float, when the first
frame read is shown and when the last one ends, and `decode_ms` float (open, decode and resize).
Carrying all of it in the item lets it cross worker processes with the batch. `collate_clips`
(training) and `collate_views` (evaluation) batch items; see their docs for the batch.
"""
import logging
import os
import time

import numpy as np
import torch
from einops import rearrange
from torch.utils.data import Dataset, get_worker_info

from annotations import GIVEN_VIDEOS, load_annotations, load_class_map
from command_line import error_line
from frame_sampling import (MODES, MULTI_VIEW_MODES, SAMPLINGS, sample_frame_indices, sample_frame_segments,
                            sample_frame_times, video_end)
from utils import counted
from video_decoding import READERS, DecodeError, decoder_order, resize_short_side

log = logging.getLogger(__name__)

# Item keys that say what was read; batched as lists, one entry per video read.
READ_KEYS = ('frame_indices', 'video_frames', 'start_s', 'end_s', 'decode_ms')
# A skip ratio is only judged after this many failures, so a few bad files early in an epoch
# cannot stop a mostly healthy list by chance.
MIN_FAILURES_TO_ABORT = 32


class UnreadableDatasetError(RuntimeError):
    """Too many videos of one annotation source failed, so training would see almost nothing."""


class VideoDataset(Dataset):
    """Clips of a source (see load_annotations), decoded frame by frame only where sampled.

    mode 'train' samples a random window, 'val' the centre one, 'test' and 'predict' num_clips
    windows spread over the video (sample_frame_indices); only 'predict' accepts unlabelled videos, or
    any mode with labelled=False (self-supervised pretraining: a folder of videos, searched
    recursively, or a list of paths, labels read where given and not needed).
    A window spans num_frames * frame_interval frames, or window_seconds of each video when given,
    which evens out different frame rates; sampling='segments' reads one frame in each of num_frames
    equal parts of the whole video instead (sample_frame_segments). decoder 'decord' (the default,
    decord2: the faster on real clips) falls back to PyAV for files decord cannot read, 'pyav' to
    decord; without decord, PyAV reads alone.

    An unreadable video is logged with its path and reason. In training it is replaced by a random
    other item; in val, test and predict the item is dropped (its `video` is None), so metrics and
    results stay with the files they name. Each process (main or loader worker) counts the videos it
    tried and those that failed: in train, val and test, once MIN_FAILURES_TO_ABORT have failed and
    more than max_skip_fraction (0 <= f < 1) of those tried, UnreadableDatasetError stops the run,
    so a list of unreadable videos always stops. predict never stops: every failure is reported
    per file.
    """

    def __init__(self, data_path, mode='train', root_dir=None, class_map=None, num_classes=None,
                 num_samples_per_cls=None, num_frames=8, frame_interval=32, window_seconds=None, num_clips=1,
                 short_side=256, decoder='decord', decode_threads=1, max_skip_fraction=0.5, labelled=None,
                 sampling='interval'):
        if mode not in MODES:
            raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
        self.decoders = decoder_order(decoder)
        if min(num_frames, frame_interval, num_clips, short_side) < 1:
            raise ValueError('num_frames, frame_interval, num_clips and short_side must be positive')
        if window_seconds is not None and not window_seconds > 0:
            raise ValueError(f'window_seconds must be positive, got {window_seconds}')
        if sampling not in SAMPLINGS:
            raise ValueError(f'sampling must be one of {SAMPLINGS}, got {sampling!r}')
        self.max_skip_fraction = check_skip_fraction(max_skip_fraction)
        class_names = load_class_map(class_map) if isinstance(class_map, (str, os.PathLike)) else class_map
        samples, self.class_names = load_annotations(data_path, root_dir, class_names, num_classes,
                                                     num_samples_per_cls,
                                                     require_labels=mode != 'predict' if labelled is None else labelled,
                                                     read_labels=labelled is not False)
        self.data_path = str(data_path) if isinstance(data_path, (str, os.PathLike)) else GIVEN_VIDEOS
        # Paths as one bytes array and labels as one int array: worker processes then share them
        # copy-on-write, where a list of Python strings would be copied page by page as
        # reference counts change, and memory would grow over an epoch.
        self.paths = np.array([os.fsencode(path) for path, _ in samples])
        self.labels = np.array([label for _, label in samples], dtype=np.int64)
        self.mode = mode
        self.num_frames = num_frames
        self.frame_interval = frame_interval
        self.window_seconds = window_seconds
        self.sampling = sampling
        self.num_clips = num_clips if mode in MULTI_VIEW_MODES else 1
        self.short_side = short_side
        self.decode_threads = decode_threads
        self.attempts = 0
        self.failures = 0
        self._rng = None
        self._rng_seed = None

    @classmethod
    def from_preprocessing(cls, data_path, preprocessing, mode='predict', **options):
        """A dataset that samples and resizes as a `preprocessing.Preprocessing` says (frames, their
        sampling, frame interval or window seconds, short side, clips); options are VideoDataset's
        other arguments."""
        return cls(data_path, mode, num_frames=preprocessing.num_frames, frame_interval=preprocessing.frame_interval,
                   window_seconds=preprocessing.window_seconds, num_clips=preprocessing.num_clips,
                   short_side=preprocessing.short_side, sampling=preprocessing.sampling, **options)

    def __len__(self):
        return len(self.labels)

    def path(self, index):
        """The video file of item index."""
        return os.fsdecode(self.paths[index])

    def _generator(self):
        """The generator of a draw. In a loader worker, the worker's own, seeded by the DataLoader from
        the main process's torch RNG at each epoch (or once, with persistent workers). Without
        workers, a new one seeded from torch's global RNG at each draw, so the draws follow that RNG,
        which seed_everything seeds and a resumed checkpoint restores."""
        info = get_worker_info()
        if info is None:
            return np.random.default_rng(int(torch.randint(2**62, ())))
        if info.seed != self._rng_seed:
            self._rng, self._rng_seed = np.random.default_rng(info.seed), info.seed
        return self._rng

    def read_frames(self, reader, indices):
        """uint8 (N, H, W, 3) frames at the flattened indices; the one place frames are decoded."""
        return reader.read(indices.reshape(-1))

    def load(self, path):
        """Decode the sampled frames of one video: {'video': uint8 (num_clips, T, 3, H, W)} and the
        READ_KEYS (see the module doc). A video with fewer frames than a clip is read with frames
        repeated, said in one warning line in test and predict."""
        if not os.path.isfile(path):
            raise DecodeError('no such file')
        if os.path.getsize(path) == 0:
            raise DecodeError('empty file')
        started = time.perf_counter()
        errors = []
        for decoder in self.decoders:
            try:
                frames, read = self._decode(READERS[decoder], path)
            except Exception as error:  # whatever a decoder raises, the next one may still read the file
                errors.append(f'{decoder}: {error_line(error, named=True)}')
                continue
            if errors:
                log.debug('%s read %s after %s', decoder, path, '; '.join(errors))
            if read['video_frames'] < self.num_frames and self.mode in MULTI_VIEW_MODES:
                log.warning('%s: %s, fewer than the %d of a clip; frames are repeated', path,
                            counted(read['video_frames'], 'frame'), self.num_frames)
            video = resize_short_side(frames, self.short_side)
            return {'video': rearrange(video, '(v t) c h w -> v t c h w', v=self.num_clips), **read,
                    'decode_ms': (time.perf_counter() - started) * 1000}
        raise DecodeError('; '.join(errors))

    def _decode(self, reader_class, path):
        """Open, sample, read and release: uint8 (num_clips * T, H, W, 3) and the READ_KEYS but decode_ms."""
        reader = reader_class(path, self.decode_threads)
        try:
            if reader.num_frames < 1:
                raise DecodeError('no frames')
            times = reader.frame_times()
            if self.sampling == 'segments':
                indices = sample_frame_segments(reader.num_frames, self.num_frames, self.mode, self.num_clips,
                                                self._generator())
            elif self.window_seconds is None:
                window = self.num_frames * self.frame_interval
                indices = sample_frame_indices(reader.num_frames, self.num_frames, window, self.mode, self.num_clips,
                                               self._generator())
            else:  # by timestamps: a variable frame rate's average would size the window wrongly
                indices = sample_frame_times(times, self.num_frames, self.window_seconds, self.mode, self.num_clips,
                                             self._generator())
            last = int(indices.max())
            read = {'frame_indices': indices.tolist(), 'video_frames': reader.num_frames,
                    'start_s': float(times[indices.min()]),
                    'end_s': float(times[last + 1]) if last + 1 < len(times) else float(video_end(times))}
            return self.read_frames(reader, indices), read
        finally:
            reader.close()

    def _read(self, path, failed):
        """load(path), or None once the failure is logged, counted and appended to failed as
        (path, reason); past the skip budget (see the class doc) UnreadableDatasetError."""
        self.attempts += 1
        try:
            return self.load(path)
        except DecodeError as error:
            reason = str(error)
        failed.append((path, reason))
        self.failures += 1
        log.warning('unreadable video %s: %s; %s', path, reason,
                    'replaced by another' if self.mode == 'train' else 'left out')
        if (self.mode != 'predict' and self.failures >= MIN_FAILURES_TO_ABORT
                and self.failures > self.max_skip_fraction * self.attempts):
            raise UnreadableDatasetError(
                f'{self.data_path}: {self.failures} of {self.attempts} videos read could not be decoded '
                f'(last: {path}: {reason}); check root_dir and the paths in the annotation file')
        return None

    def __getitem__(self, index):
        failed = []
        read = self._read(self.path(index), failed)
        while read is None and self.mode == 'train':
            index = int(self._generator().integers(len(self)))
            read = self._read(self.path(index), failed)
        read = read or dict.fromkeys(('video', *READ_KEYS))
        video = read.pop('video')
        if video is not None and self.mode == 'train':
            video = video[0]
        return {'video': video, 'label': int(self.labels[index]), 'index': index, 'path': self.path(index),
                'failed': failed, **read}


def check_skip_fraction(max_skip_fraction):
    """max_skip_fraction, if 0 <= it < 1: at 1 or more a list of unreadable videos could never stop."""
    if not 0 <= max_skip_fraction < 1:
        raise ValueError(f'max_skip_fraction must be at least 0 and below 1, got {max_skip_fraction}')
    return max_skip_fraction


def spatial_crops(video, size, num_crops=1):
    """(..., H, W) -> num_crops (..., size, size) views: centred on the short side, spread evenly
    along the long side (num_crops 1: the centre; 3: the original repository's three crops, the middle one the centre
    crop to the pixel, as the one view of evaluation reads it)."""
    height, width = video.shape[-2:]
    if min(height, width) < size:
        raise ValueError(f'cannot crop {size} pixels from frames of {height}x{width}')
    across = (min(height, width) - size) // 2
    extra = max(height, width) - size
    along = [extra // 2] if num_crops == 1 else [step * extra // (num_crops - 1) for step in range(num_crops)]
    crops = []
    for offset in along:
        top, left = (across, offset) if width >= height else (offset, across)
        crops.append(video[..., top:top + size, left:left + size])
    return crops


def crop_views(video, size, num_crops=1):
    """Evaluation views of one item: uint8 clips (V, T, 3, H, W) -> (V * num_crops, T, 3, S, S),
    clip-major."""
    crops = spatial_crops(video, size, num_crops)
    return rearrange(torch.stack(crops, dim=1), 'v k t c h w -> (v k) t c h w')


def _batch(samples, video):
    """The batch of the items read, with video the stacked clips or views (see collate_views)."""
    read = [sample for sample in samples if sample['video'] is not None]
    failed = [failure for sample in samples for failure in sample['failed']]
    return {
        'video': video,
        'label': torch.tensor([sample['label'] for sample in read], dtype=torch.int64),
        'index': torch.tensor([sample['index'] for sample in read], dtype=torch.int64),
        'path': [sample['path'] for sample in read],
        'skipped': len(failed),
        'failed': failed,
        **{key: [sample.get(key) for sample in read] for key in READ_KEYS},
    }


def collate_clips(samples):
    """Batch training items (all read): video uint8 (B, T, 3, h, w), the clips centre-cropped to the
    batch's smallest height and width (clips of other aspect ratios differ in the long side), which
    the random crop on the device then samples; the other keys as in collate_views, `failed` the
    videos replaced."""
    videos = [sample['video'] for sample in samples]
    height = min(video.shape[-2] for video in videos)
    width = min(video.shape[-1] for video in videos)
    clips = []
    for video in videos:
        top, left = (video.shape[-2] - height) // 2, (video.shape[-1] - width) // 2
        clips.append(video[..., top:top + height, left:left + width])
    return _batch(samples, torch.stack(clips))


def collate_views(samples, preprocessing):
    """Batch evaluation items, with views cut per item (crop_views) so none depends on its batch.

    preprocessing (a `preprocessing.Preprocessing`) gives img_size S, num_crops and, for a batch of
    dropped items only, num_clips and num_frames T. Returns video uint8 (B, V, T, 3, S, S),
    V = num_clips * num_crops, clip-major; label, index int64 (B,); path [str] (B,), the items read;
    skipped int and failed [(path, reason)], the unreadable videos, left out of the batch; the
    READ_KEYS as lists (B,), None for an item made elsewhere without them. B may be 0 when no video of
    the batch could be read.
    """
    views = [crop_views(sample['video'], preprocessing.img_size, preprocessing.num_crops)
             for sample in samples if sample['video'] is not None]
    if not views:
        empty = (0, preprocessing.num_clips * preprocessing.num_crops, preprocessing.num_frames, 3,
                 preprocessing.img_size, preprocessing.img_size)
        return _batch(samples, torch.empty(empty, dtype=torch.uint8))
    return _batch(samples, torch.stack(views))
