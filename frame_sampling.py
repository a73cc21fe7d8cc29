"""Which frames a clip reads: windows of frame indices, by frame count or by timestamps, or one frame
per equal segment of the whole video."""
import numpy as np

MODES = ('train', 'val', 'test', 'predict')
# How a clip's frames are picked (Preprocessing.sampling): 'interval', evenly spaced in a window of
# num_frames x frame_interval frames (or window_seconds); 'segments', one frame in each of num_frames
# equal parts of the whole video (TSN's, as MCG-NJU's VideoMAE trains and tests on Something-Something v2).
SAMPLINGS = ('interval', 'segments')
# Modes that read num_clips windows of each video for multi-view testing.
MULTI_VIEW_MODES = ('test', 'predict')
# Seconds within which two timestamps are one moment: containers round them (to 1/90000 s, 1 ms).
TIME_TOLERANCE = 1e-6

def sample_frame_indices(total_frames, num_frames, window, mode, num_clips=1, rng=None):
    """Frame indices (clips, num_frames), int64, evenly spaced in windows of `window` frames.

    train: one window at a random start (rng, a numpy Generator). test and predict: num_clips windows
    centred in equal parts of the range of starts; val: the same with one clip, the centre window.
    Indices run from the window's first to its last frame, the original repository's rule. A video shorter than
    the window is the window: its frames are spread over num_frames, repeating frames when it has
    fewer than num_frames.
    """
    if total_frames < 1:
        raise ValueError(f'cannot sample from a video of {total_frames} frames')
    if mode not in MODES:
        raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
    span = min(window, total_frames)
    last_start = total_frames - span
    if mode == 'train':
        starts = rng.integers(0, last_start + 1, size=1)
    else:
        clips = num_clips if mode in MULTI_VIEW_MODES else 1
        starts = np.floor((np.arange(clips) + 0.5) * last_start / clips).astype(np.int64)
    offsets = np.linspace(0, span - 1, num_frames).astype(np.int64)
    return starts[:, None] + offsets[None, :]


def sample_frame_segments(total_frames, num_frames, mode, num_clips=1, rng=None):
    """Frame indices (clips, num_frames), int64: the video cut into num_frames equal segments (segment
    x holds frames total_frames * x // num_frames up to the next segment's first), one frame from each.

    train: a random frame of each segment (rng, a numpy Generator). test and predict: num_clips clips
    whose frames sit at fixed fractions of their segments, 1 / num_clips apart, one clip at the
    segments' centres: for two clips the segments' first frames and their centres, MCG-NJU's two test
    clips on SSv2; val: one clip, the centres. A video shorter than num_frames repeats frames, spread
    over it (MCG-NJU's training reads its first frame num_frames times there; its test clips spread).
    """
    if total_frames < 1:
        raise ValueError(f'cannot sample from a video of {total_frames} frames')
    if mode not in MODES:
        raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
    segment = np.arange(num_frames + 1, dtype=np.int64)
    if mode == 'train':
        bounds = total_frames * segment // num_frames
        lengths = np.maximum(bounds[1:] - bounds[:-1], 1)  # an empty segment (a short video) gives its start
        return (bounds[:-1] + rng.integers(0, lengths))[None, :]
    clips = num_clips if mode in MULTI_VIEW_MODES else 1
    # Offsets in halves of a clip step: clip k sits at (1/2 + k / clips) of each segment, wrapped into
    # [0, 1); integers, so a frame number is never one short of an exact multiple.
    offsets = np.sort((clips + 2 * np.arange(clips, dtype=np.int64)) % (2 * clips))
    return total_frames * (2 * clips * segment[None, :-1] + offsets[:, None]) // (2 * clips * num_frames)


def sample_frame_times(times, num_frames, window_seconds, mode, num_clips=1, rng=None):
    """Frame indices (clips, num_frames), int64, for windows of window_seconds on a video whose frame
    i is shown from times[i] seconds (increasing): sample_frame_indices by timestamps, so that a
    variable frame rate does not stretch or shrink a window. Starts are placed as there, in
    seconds; a window runs from the frame on screen at its start over the frames that begin within
    window_seconds of it, and its num_frames are the frames on screen at evenly spaced times from
    its first frame to its last. A video shorter than the window is the window."""
    times = np.asarray(times, dtype=np.float64)
    if len(times) < 1:
        raise ValueError('cannot sample from a video of 0 frames')
    if mode not in MODES:
        raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
    end = video_end(times)
    span = min(window_seconds, end - times[0])
    latest = end - span - times[0]
    if mode == 'train':
        starts = times[0] + rng.uniform(0, latest, size=1)
    else:
        clips = num_clips if mode in MULTI_VIEW_MODES else 1
        starts = times[0] + (np.arange(clips) + 0.5) * latest / clips

    return _windows_at(times, starts, span, num_frames)


def video_end(times):
    """Seconds at which a video whose frame i is shown from times[i] ends: the last frame is shown
    for a typical frame's duration."""
    return times[-1] + frame_duration(times)


def frame_duration(times):
    """A typical frame's duration in seconds (the median step; 0 for one frame)."""
    return float(np.median(np.diff(times))) if len(times) > 1 else 0.0


def _on_screen(times, moments):
    """The frame shown at each moment; TIME_TOLERANCE absorbs rounded timestamps."""
    return np.clip(np.searchsorted(times, np.asarray(moments) + TIME_TOLERANCE, side='right') - 1, 0, len(times) - 1)


def _windows_at(times, starts, span, num_frames):
    """(len(starts), num_frames) int64: from the frame on screen at each start over the frames that
    begin within span seconds of it, the frames on screen at evenly spaced times."""
    windows = []
    for first in _on_screen(times, starts):
        last = max(first, np.searchsorted(times, times[first] + span - TIME_TOLERANCE) - 1)
        windows.append(_on_screen(times, np.linspace(times[first], times[last], num_frames)))
    return np.stack(windows).astype(np.int64)


def sliding_frame_indices(total_frames, num_frames, window, stride):
    """Frame indices (W, num_frames), int64, of windows of `window` frames starting every `stride`
    frames from frame 0, as long as a whole window fits (a timeline); each spaced as in
    sample_frame_indices. A video shorter than the window is one window."""
    if total_frames < 1:
        raise ValueError(f'cannot sample from a video of {total_frames} frames')
    if stride < 1:
        raise ValueError(f'stride must be at least one frame, got {stride}')
    span = min(window, total_frames)
    starts = np.arange(0, total_frames - span + 1, stride)
    offsets = np.linspace(0, span - 1, num_frames).astype(np.int64)
    return starts[:, None] + offsets[None, :]


def sliding_frame_times(times, num_frames, window_seconds, stride_seconds):
    """Frame indices (W, num_frames), int64, of windows of window_seconds starting every
    stride_seconds from the first frame, as long as a whole window fits, on a video whose frame i is
    shown from times[i] seconds: sliding_frame_indices by timestamps, each window's frames picked as
    in sample_frame_times. A video shorter than the window is one window."""
    times = np.asarray(times, dtype=np.float64)
    if len(times) < 1:
        raise ValueError('cannot sample from a video of 0 frames')
    if not stride_seconds > 0:
        raise ValueError(f'stride_seconds must be positive, got {stride_seconds}')
    end = video_end(times)
    span = min(window_seconds, end - times[0])
    starts = times[0] + np.arange(int((end - times[0] - span) / stride_seconds + TIME_TOLERANCE) + 1) * stride_seconds
    return _windows_at(times, starts, span, num_frames)
