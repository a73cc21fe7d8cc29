"""Generate a small labelled dataset of real H.264 mp4 clips whose class only motion reveals.

Each clip shows a textured background, distractor shapes that jitter in place and one target
shape. The class is what the target does over time: moves up, moves down, grows or shrinks.
Every frame on its own is drawn from the same distribution for all four classes (positions wrap
around the frame and sizes wrap around their range, both from a random phase), so a model has
to compare frames to tell the classes apart. The classes are also unchanged by a horizontal
flip, which the training augmentation applies.

Writes `{split}/{class}/{split}_{i:04d}.mp4`, `train.txt`, `val.txt` and `test.txt` in the seed's
list format (`path<TAB>class name` per line) and `classmap.json` (name -> index).

    python demo/make_demo_dataset.py [--out demo/data] [--seed 0]
"""
import argparse
import json
from pathlib import Path

import av
import numpy as np
from tqdm import tqdm

CLASSES = ('moving_up', 'moving_down', 'growing', 'shrinking')
SPLITS = ('train', 'val', 'test')
SPLIT_IDS = {name: i for i, name in enumerate(SPLITS)}
SHAPES = ('disc', 'square', 'triangle')
# Target radius range in pixels; sizes wrap around it in log space for growing/shrinking.
RADIUS_RANGE = (5.0, 14.0)
# Distractors wander this many pixels at most from where they start.
JITTER_RADIUS = 3.0
NUM_DISTRACTORS = 2
# Standard deviation of per-frame sensor noise, in 8-bit levels.
FRAME_NOISE = 6.0


def _shape_mask(kind, cy, cx, radius, yy, xx):
    """Boolean (H, W) mask of one shape centred at (cy, cx)."""
    dy, dx = yy - cy, xx - cx
    if kind == 'disc':
        return dy ** 2 + dx ** 2 <= radius ** 2
    if kind == 'square':
        half = radius * 0.85
        return (np.abs(dy) <= half) & (np.abs(dx) <= half)
    # Upward triangle: apex radius above the centre, base 0.6 radius below, widening linearly.
    return (dy >= -radius) & (dy <= 0.6 * radius) & (np.abs(dx) <= (dy + radius) / 1.6)


def _wrapped_masks(kind, cy, cx, radius, yy, xx, height, width):
    """Mask of a shape on a torus, so it re-enters on the far side as it leaves the frame."""
    mask = np.zeros(yy.shape, dtype=bool)
    for shift_y in (-height, 0, height):
        for shift_x in (-width, 0, width):
            mask |= _shape_mask(kind, cy + shift_y, cx + shift_x, radius, yy, xx)
    return mask


def _distinct_colour(rng, avoid, min_distance=120.0):
    """A random RGB colour at least min_distance away from every colour in avoid."""
    while True:
        colour = rng.uniform(0, 255, size=3)
        if all(np.linalg.norm(colour - other) >= min_distance for other in avoid):
            return colour


def render_clip(label, rng, num_frames=32, height=64, width=80):
    """Frames of one clip of class CLASSES[label]: uint8 (T, H, W, 3)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    background = rng.uniform(0, 255, size=3)
    texture = rng.normal(0, 18, size=(height, width, 1))
    base = np.clip(background + texture, 0, 255)

    colours = [background]
    distractors = []
    for _ in range(NUM_DISTRACTORS):
        colours.append(_distinct_colour(rng, colours))
        start = rng.uniform((0, 0), (height, width))
        steps = rng.normal(0, 1.0, size=(num_frames, 2))
        # A random walk pulled back to its start: it moves every frame but never travels.
        offsets = np.zeros((num_frames, 2))
        for t in range(1, num_frames):
            offsets[t] = np.clip(0.7 * offsets[t - 1] + steps[t], -JITTER_RADIUS, JITTER_RADIUS)
        distractors.append((rng.choice(SHAPES), start + offsets, rng.uniform(*RADIUS_RANGE), colours[-1]))

    target_colour = _distinct_colour(rng, colours)
    kind = rng.choice(SHAPES)
    log_low, log_high = np.log(RADIUS_RANGE[0]), np.log(RADIUS_RANGE[1])
    # Phase runs over [0, 1) and wraps; one full cycle takes between one and two clip lengths.
    phase = rng.uniform() + np.arange(num_frames) / rng.uniform(num_frames, 2 * num_frames)
    phase %= 1.0
    centre_y = np.full(num_frames, rng.uniform(0, height))
    centre_x = np.full(num_frames, rng.uniform(0, width))
    radius = np.full(num_frames, np.exp(rng.uniform(log_low, log_high)))
    name = CLASSES[label]
    if name == 'moving_up':
        centre_y = (1 - phase) * height
    elif name == 'moving_down':
        centre_y = phase * height
    elif name == 'growing':
        radius = np.exp(log_low + phase * (log_high - log_low))
    else:
        radius = np.exp(log_high - phase * (log_high - log_low))

    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        frame = base.copy()
        for shape, track, size, colour in distractors:
            frame[_shape_mask(shape, track[t, 0], track[t, 1], size, yy, xx)] = colour
        target = _wrapped_masks(kind, centre_y[t], centre_x[t], radius[t], yy, xx, height, width)
        frame[target] = target_colour
        frame += rng.normal(0, FRAME_NOISE, size=frame.shape)
        frames[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return frames


def write_video(path, frames, fps=25, container_format=None):
    """Encode uint8 frames (T, H, W, 3) as H.264 at fps (H and W even), in an mp4 unless
    container_format names another (e.g. 'mpegts')."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode='w', format=container_format) as container:
        stream = container.add_stream('libx264', rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = 'yuv420p'
        # One encoder thread keeps the bitstream identical from run to run.
        stream.thread_count = 1
        stream.options = {'crf': '20', 'preset': 'veryfast'}
        for array in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format='rgb24')))
        container.mux(stream.encode())


def make_demo_dataset(out_dir='demo/data', seed=0, clips_per_class=(16, 4, 4), frame_range=(24, 48),
                      height=64, width=80, fps=25, progress=True):
    """Write the demo dataset into out_dir and return out_dir as a Path.

    clips_per_class gives the train, val and test counts; clip lengths are drawn from
    frame_range (inclusive). The same arguments always give the same files.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(split, i) for split, count in zip(SPLITS, clips_per_class) for i in range(count * len(CLASSES))]
    lines = {split: [] for split in SPLITS}
    for split, i in tqdm(jobs, desc='demo clips', disable=not progress):
        # A generator per clip, so each clip depends only on (seed, split, i).
        rng = np.random.default_rng([seed, SPLIT_IDS[split], i])
        label = i % len(CLASSES)
        num_frames = int(rng.integers(frame_range[0], frame_range[1] + 1))
        relative = f'{split}/{CLASSES[label]}/{split}_{i:04d}.mp4'
        write_video(out_dir / relative, render_clip(label, rng, num_frames, height, width), fps)
        lines[split].append(f'{relative}\t{CLASSES[label]}\n')
    for split in SPLITS:
        (out_dir / f'{split}.txt').write_text(''.join(lines[split]))
    (out_dir / 'classmap.json').write_text(json.dumps({name: i for i, name in enumerate(CLASSES)}, indent=1) + '\n')
    return out_dir


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default=str(Path(__file__).parent / 'data'), help='output folder')
    parser.add_argument('--seed', type=int, default=0, help='random seed; the same seed gives the same files')
    parser.add_argument('--clips-per-class', type=int, nargs=3, default=(16, 4, 4), metavar=('TRAIN', 'VAL', 'TEST'))
    args = parser.parse_args()
    make_demo_dataset(args.out, seed=args.seed, clips_per_class=tuple(args.clips_per_class))


if __name__ == '__main__':
    main()
