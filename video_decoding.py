"""Video readers behind one interface (`num_frames`, `fps`, `read(indices)`, `frame_times()`, `close()`):
decord2 and PyAV, the diagnosis of a broken decord install, and the resize to a short side."""
import importlib.metadata
import logging
import sys

import av
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

try:
    import decord
except ImportError:
    decord = None

log = logging.getLogger(__name__)

# decord 0.6.0 and its maintained fork decord2 install the same `decord` module: with both installed,
# uninstalling either deletes the module files the other still needs.
DECORD_DISTRIBUTIONS = ('decord', 'decord2')
DECORD_FIX = 'pip uninstall -y decord decord2 && pip install decord2'
DECODERS = ('decord', 'pyav')


class DecodeError(RuntimeError):
    """A video that cannot be decoded; the message says why."""


def installed_decords(path=None):
    """{name: version} of the installed distributions that provide the decord module (path: sys.path)."""
    path = sys.path if path is None else path
    return {name: dist.version for name in DECORD_DISTRIBUTIONS
            for dist in importlib.metadata.distributions(name=name, path=path)}


def _usable_decord(module):
    """module, or None when it lacks its files; says in one line how to repair a mixed install."""
    found = installed_decords()
    if len(found) > 1:
        log.warning('%s are both installed and overwrite each other\'s decord module; run: %s',
                    ' and '.join(f'{name} {version}' for name, version in found.items()), DECORD_FIX)
    if module is not None and not hasattr(module, 'VideoReader'):
        # What uninstalling one of the two leaves behind: the folder, without the module's files.
        log.warning('the decord module in %s is incomplete; decoding with PyAV. Run: %s',
                    ', '.join(module.__path__), DECORD_FIX)
        return None
    return module


decord = _usable_decord(decord)


def decoder_order(decoder):
    """The decoders to try, the asked-for one first, then the other (decord only where it is
    installed, said in one warning line when it was asked for)."""
    if decoder not in DECODERS:
        raise ValueError(f'decoder must be one of {DECODERS}, got {decoder!r}')
    if decoder == 'decord' and decord is None:
        log.warning('decord is not installed; decoding with PyAV')
    return tuple(dict.fromkeys(name for name in (decoder, *DECODERS) if name != 'decord' or decord is not None))

class DecordReader:
    """A decord VideoReader behind `num_frames`, `fps`, `read(indices)` and `close()`.

    decord2 applies a display matrix (a phone video's rotation) itself. On some frame widths (48, 96
    and 144 pixels of those tried, rotated or not) decord2 3.4.0 returns rows with padding and
    get_batch raises, so the dataset reads those files with PyAV. get_batch seeks to the keyframe
    before a frame in another group of pictures and decodes on from there, but its decoder thread
    decodes ahead between seeks, and at each seek it reads the file from that keyframe to the end.
    """

    def __init__(self, path, threads=1):
        if decord is None:
            raise DecodeError('decord is not installed')
        self._reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=threads)
        self.num_frames = len(self._reader)
        self.fps = float(self._reader.get_avg_fps())

    def read(self, indices):
        """uint8 (N, H, W, 3) frames at indices (N,), in the given order."""
        unique, inverse = np.unique(indices, return_inverse=True)
        return self._reader.get_batch(unique.tolist()).asnumpy()[inverse]

    def frame_times(self):
        """(num_frames,) seconds at which each frame is shown."""
        return self._reader.get_frame_timestamp(range(self.num_frames))[:, 0]

    def frames_in_order(self, indices):
        """(index, uint8 (H, W, 3)) for sorted unique indices, decoded front to back in one pass
        (next and skip_frames, no seek): the frames between are decoded but not converted or copied.
        decord's decoder thread runs ahead of a slower reader and keeps what it decoded, so memory
        grows with the video then (frame_stream reads with PyAV by default)."""
        position = 0
        for index in np.asarray(indices).tolist():
            if index > position:
                self._reader.skip_frames(index - position)
            yield index, self._reader.next().asnumpy()
            position = index + 1

    def close(self):
        # decord frees its demuxer and decoder with the object.
        self._reader = None


def displayed(frame):
    """uint8 (H, W, 3) of a PyAV VideoFrame as a player shows it. Phones store a video shot upright
    as sideways frames plus a display matrix; PyAV reports its rotation (degrees counter-clockwise)
    and leaves applying it to the caller, where decord applies it itself."""
    return np.rot90(frame.to_ndarray(format='rgb24'), k=round(frame.rotation / 90) % 4)


class PyAVReader:
    """PyAV behind the same interface. read() seeks to the keyframe before each wanted frame that
    lies past the frames decoded so far and decodes forward from there, skipping the non-reference
    frames that are not wanted; `decoded_frames` counts the frames decoded since opening."""

    def __init__(self, path, threads=1):
        self._path, self._threads = str(path), threads
        self._open()
        try:
            # From packets alone (no decoding): presentation timestamps, so that frame i is the i-th
            # in presentation order, as decord counts, even with a variable frame rate; and keyframes.
            packets = [(packet.pts, packet.is_keyframe) for packet in self._container.demux(self._stream)
                       if packet.pts is not None]
        except BaseException:
            self.close()
            raise
        self._pts = np.array(sorted(pts for pts, _ in packets), dtype=np.int64)
        # Frame indices of the keyframes, with frame 0 where decoding can always start.
        self._keyframes = np.union1d([0], np.searchsorted(self._pts, [pts for pts, key in packets if key]))
        self.num_frames = len(self._pts)
        # What the container's header lists (0 when it does not say): more than the packets found is
        # a file cut short, an mp4 whose index at its front outlives its end.
        self.listed_frames = self._stream.frames
        self.fps = float(self._stream.average_rate or self._stream.guessed_rate or 0)
        self.decoded_frames = 0

    def _open(self):
        self._container = av.open(self._path)
        if not self._container.streams.video:
            self.close()
            raise DecodeError('no video stream')
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = 'AUTO'
        self._stream.thread_count = self._threads

    def frame_times(self):
        """(num_frames,) seconds at which each frame is shown, from the first frame's, as decord counts:
        a file need not start at 0 (an MPEG-TS cut from a broadcast starts where the broadcast was)."""
        return (self._pts - self._pts[0]) * float(self._stream.time_base) if len(self._pts) else self._pts * 0.0

    def _runs(self, frames):
        """Sorted unique frame indices -> [(keyframe, frames decoded from it)]: a run starts where
        the keyframe before a frame lies past the frame wanted before it, as seeking there skips
        frames that decoding on would go through."""
        keys = self._keyframes[np.searchsorted(self._keyframes, frames, side='right') - 1]
        starts = np.flatnonzero(np.r_[True, keys[1:] > frames[:-1]])
        return list(zip(keys[starts].tolist(), np.split(frames, starts[1:])))

    def read(self, indices):
        """uint8 (N, H, W, 3) frames at indices (N,), in the given order."""
        unique, inverse = np.unique(indices, return_inverse=True)
        frames = {}
        for keyframe, run in self._runs(unique):
            self._container.seek(int(self._pts[keyframe]), stream=self._stream, backward=True)
            self._stream.codec_context.flush_buffers()
            frames.update(self._decode({int(self._pts[i]): i for i in run}))
        if len(frames) < len(unique):
            # Some containers (MPEG-TS) seek imprecisely or not at all: decode from the start.
            self.close()
            self._open()
            frames = self._decode({int(self._pts[i]): i for i in unique})
        if len(frames) < len(unique):
            missing = sorted(set(unique.tolist()) - frames.keys())
            raise DecodeError(f'{len(missing)} of {len(unique)} frames could not be decoded (first: {missing[0]})')
        return np.stack([frames[i] for i in unique])[inverse]

    def frames_in_order(self, indices):
        """(index, uint8 (H, W, 3)) for sorted unique indices, decoded front to back in one pass from
        the start; frames not wanted are neither converted nor, when no other frame refers to them,
        decoded. A DecodeError names the first frame that could not be read."""
        self.close()
        self._open()
        order = np.asarray(indices).tolist()
        position = 0
        for index, frame in self._decode_frames({int(self._pts[index]): index for index in order}):
            if index != order[position]:  # a damaged frame that the decoder dropped
                raise DecodeError(f'frame {order[position]} of {self.num_frames} could not be decoded')
            position += 1
            yield index, frame
        if position < len(order):
            raise DecodeError(f'frame {order[position]} of {self.num_frames} and those after it could not be decoded')

    def _decode(self, wanted):
        """{frame index: uint8 (H, W, 3)} for wanted {pts: frame index}, from the current position."""
        frames = {}
        for index, frame in self._decode_frames(wanted):
            frames[index] = frame
            if len(frames) == len(wanted):
                break
        return frames

    def _decode_frames(self, wanted):
        """(frame index, uint8 (H, W, 3)) of the wanted {pts: frame index}, from the current position
        in presentation order, until all are found or the stream ends."""
        codec = self._stream.codec_context
        found = set()
        for packet in self._container.demux(self._stream):
            if packet.pts is not None:
                codec.skip_frame = 'DEFAULT' if packet.pts in wanted else 'NONREF'
            for frame in packet.decode():
                self.decoded_frames += 1
                if frame.pts in wanted and frame.pts not in found:
                    found.add(frame.pts)
                    yield wanted[frame.pts], displayed(frame)
            if len(found) == len(wanted):
                return

    def close(self):
        self._container.close()


READERS = {'decord': DecordReader, 'pyav': PyAVReader}


def resize_short_side(frames, short_side):
    """uint8 (N, H, W, 3) array -> uint8 (N, 3, h, w) tensor with min(h, w) == short_side."""
    video = rearrange(torch.from_numpy(frames), 'n h w c -> n c h w')
    height, width = video.shape[-2:]
    scale = short_side / min(height, width)
    size = (max(short_side, round(height * scale)), max(short_side, round(width * scale)))
    if size != (height, width):
        # The permuted view is channels-last in memory, which torch's uint8 antialiased resize
        # handles directly; no float copy of the frames is made.
        video = F.interpolate(video, size=size, mode='bilinear', antialias=True, align_corners=False)
    return video.contiguous()
