"""Which frames a clip reads: windows of frame indices, by frame count or by timestamps."""
import numpy as np

MODES = ('train', 'val', 'test', 'predict')
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

    def on_screen(moments):  # the frame shown at each moment; TIME_TOLERANCE absorbs rounded timestamps
        return np.clip(np.searchsorted(times, np.asarray(moments) + TIME_TOLERANCE, side='right') - 1,
                       0, len(times) - 1)

    windows = []
    for first in on_screen(starts):
        last = max(first, np.searchsorted(times, times[first] + span - TIME_TOLERANCE) - 1)
        windows.append(on_screen(np.linspace(times[first], times[last], num_frames)))
    return np.stack(windows).astype(np.int64)


def video_end(times):
    """When a video whose frame i is shown from times[i] seconds ends: its last frame is shown for a
    typical frame's duration (the median), none for a one-frame video."""
    times = np.asarray(times, dtype=np.float64)
    return times[-1] + (float(np.median(np.diff(times))) if len(times) > 1 else 0.0)
