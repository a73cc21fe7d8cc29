"""A long video as a stream of overlapping windows, decoded once front to back in bounded memory.

    with WindowStream('match.mp4', preprocessing, stride_seconds=2.0) as stream:
        print(stream.num_windows, stream.duration_s)
        for window in stream:             # Window(index, start_s, end_s, frame_indices, frames)
            ...                           # frames uint8 (T, 3, h, w), short side preprocessing.short_side

The windows are the model's clip slid over the video (frame_sampling.sliding_frame_indices, or
sliding_frame_times for window_seconds). The reader decodes the frames any window needs in one pass
(`frames_in_order`); each is resized once on arrival and kept only until the last window that
reads it has been yielded, so memory holds about one window of frames whatever the video's length,
and frames no window reads are never converted to RGB arrays.
"""
import logging
import os
from dataclasses import dataclass

import numpy as np
import torch

from command_line import error_line
from frame_sampling import frame_duration, sliding_frame_indices, sliding_frame_times
from video_decoding import READERS, DecodeError, decoder_order, resize_short_side

log = logging.getLogger(__name__)


@dataclass
class Window:
    """One window of the stream: its position, its span in seconds, the frame numbers of its clip
    (T,) and their frames uint8 (T, 3, h, w), resized to the short side."""

    index: int
    start_s: float
    end_s: float
    frame_indices: list
    frames: torch.Tensor


def format_time(seconds, decimals=1):
    """Seconds as h:mm:ss, with `decimals` digits of a second: 3725.25 -> '1:02:05.2'."""
    tenths = 10 ** decimals
    whole, fraction = divmod(round(seconds * tenths), tenths)
    minutes, secs = divmod(whole, 60)
    text = f'{minutes // 60}:{minutes % 60:02d}:{secs:02d}'
    return f'{text}.{fraction:0{decimals}d}' if decimals else text


class WindowStream:
    """The windows of one video (see the module doc): window_seconds windows when the preprocessing
    samples by seconds, else num_frames * frame_interval frames; a window starts every stride_seconds
    (default: half a window). A video shorter than a window is one window.

    PyAV by default: decord's decoder thread decodes ahead of its reader and keeps every frame it has
    decoded until it is read, so when the model is slower than decoding, decord holds much of the
    video (measured: 470 MiB of a 40-second 640x360 video), where PyAV decodes as it is asked.

    Opening reads the frame count and timestamps (decord's index, PyAV's packets). A decoder that
    cannot open the file, or fails before the first window, gives way to the other one (decoder
    first); a failure after that ends the iteration with a DecodeError saying where, once every window
    before it has been yielded.
    """

    def __init__(self, path, preprocessing, stride_seconds=None, decoder='pyav', decode_threads=1):
        if preprocessing.sampling != 'interval':
            raise ValueError(f'a timeline slides a window; sampling {preprocessing.sampling!r} spreads a clip over '
                             f'the whole video')
        self.path, self.preprocessing = str(path), preprocessing
        self.stride_seconds, self.decode_threads = stride_seconds, decode_threads
        self.decoders = decoder_order(decoder)
        self._reader, self._failed_at = None, None
        if not os.path.isfile(self.path):
            raise DecodeError('no such file')
        if os.path.getsize(self.path) == 0:
            raise DecodeError('empty file')
        errors = []
        for position, name in enumerate(self.decoders):
            try:
                self._open(name)
                break
            except Exception as error:  # whatever a decoder raises, the next one may still read the file
                errors.append(f'{name}: {error_line(error, named=True)}')
        else:
            raise DecodeError('; '.join(errors))
        self._fallbacks = self.decoders[position + 1:]

    def _open(self, name):
        """Open the reader `name` and lay out the windows on its frames."""
        reader = READERS[name](self.path, self.decode_threads)
        try:
            if reader.num_frames < 1:
                raise DecodeError('no frames')
            times = np.asarray(reader.frame_times(), dtype=np.float64)
            settings = self.preprocessing
            step = frame_duration(times) or 1 / max(reader.fps, 1)
            if settings.window_seconds is not None:
                stride = self.stride_seconds or settings.window_seconds / 2
                indices = sliding_frame_times(times, settings.num_frames, settings.window_seconds, stride)
            else:
                window = settings.num_frames * settings.frame_interval
                stride = (max(1, round(self.stride_seconds / step)) if self.stride_seconds else max(1, window // 2))
                indices = sliding_frame_indices(reader.num_frames, settings.num_frames, window, stride)
        except BaseException:
            reader.close()
            raise
        self.decoder, self._reader, self.indices, self.times = name, reader, indices, times
        self.starts = times[indices[:, 0]]
        self.ends = times[indices[:, -1]] + step
        self.duration_s = float(times[-1] + step - times[0])
        self.num_frames = reader.num_frames
        short = (self.duration_s < settings.window_seconds - step if settings.window_seconds is not None
                 else reader.num_frames < settings.num_frames * settings.frame_interval)
        if short:
            log.warning('%s: %.2f s, shorter than a window; it is one window%s', self.path, self.duration_s,
                        ', frames repeated' if len(np.unique(indices)) < settings.num_frames else '')

    @property
    def num_windows(self):
        return len(self.indices)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __iter__(self):
        yielded = 0
        while True:
            try:
                for window in self._windows():
                    yielded += 1
                    yield window
                return
            except Exception as error:
                frame = self.num_frames if self._failed_at is None else self._failed_at
                if yielded == 0 and self._fallbacks:  # nothing given yet: the other decoder starts afresh
                    self.close()
                    name, self._fallbacks = self._fallbacks[0], self._fallbacks[1:]
                    try:
                        self._open(name)
                        continue
                    except Exception:
                        pass
                reason = error_line(error)
                total = max(self.num_frames, getattr(self._reader, 'listed_frames', 0))
                moment = self.times[frame] - self.times[0] if frame < self.num_frames else self.duration_s
                raise DecodeError(f'unreadable from {format_time(moment)} (frame {frame} of {total}) on: '
                                  f'{reason}') from None

    def _windows(self):
        """The windows in order, decoding the frames they read in one pass."""
        indices = self.indices
        needed, inverse = np.unique(indices, return_inverse=True)
        inverse = inverse.reshape(indices.shape)
        # The last window that reads each needed frame.
        last_use = np.zeros(len(needed), dtype=np.int64)
        np.maximum.at(last_use, inverse.reshape(-1), np.repeat(np.arange(len(indices)), indices.shape[1]))
        kept, window = {}, 0
        self._failed_at = int(needed[0])
        for position, (index, frame) in enumerate(self._reader.frames_in_order(needed)):
            kept[position] = resize_short_side(frame[None], self.preprocessing.short_side)[0]
            self._failed_at = int(needed[position + 1]) if position + 1 < len(needed) else None
            while window < len(indices) and inverse[window, -1] <= position:
                frames = torch.stack([kept[slot] for slot in inverse[window].tolist()])
                yield Window(window, float(self.starts[window]), float(self.ends[window]), indices[window].tolist(),
                             frames)
                for slot in inverse[window][last_use[inverse[window]] == window].tolist():
                    kept.pop(slot, None)
                window += 1
        listed = getattr(self._reader, 'listed_frames', 0)
        if listed > self.num_frames:
            self._failed_at = self.num_frames
            raise DecodeError(f'the file ends early: its header lists {listed} frames')
