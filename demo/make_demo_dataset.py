"""Generate a small labelled dataset of real H.264 mp4 clips whose class only motion reveals.

Each clip shows a dark textured background, distractor shapes that jitter in place and one
bright target shape. The class is what the target does over time: moves up, moves down, grows or
shrinks. Every frame on its own is drawn from the same distribution for all four classes
(positions wrap around the frame and sizes wrap around their range, both from a random phase),
so a model has to compare frames to tell the classes apart. The classes are also unchanged by a
horizontal flip, which the training augmentation applies.

Writes `{split}/{class}/{split}_{i:04d}.mp4`, `train.txt`, `val.txt` and `test.txt` in the original repository's
list format (`path<TAB>class name` per line) and `classmap.json` (name -> index).

    python demo/make_demo_dataset.py [--out demo/data] [--seed 0]
    python demo/make_demo_dataset.py --out hard --motion small_slow --size 160 120 --clips-per-class 40 16 16

`--motion small_slow` draws the same classes as small, slow motions (MOTIONS): the harder set of the
README's pretraining trial.
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
# Target radius range as a fraction of the frame height; sizes wrap around it in log space for
# growing/shrinking, so a wide range makes the change in size over a clip plain to see.
RADIUS_RANGE = (0.1, 0.36)
# Frames the target takes to cross the frame height, or its whole size range, once. At the demo's
# 8x4 sampling that is 3.6 to 5.3 pixels (of 64) between sampled frames, and a 32-frame window
# spans under 70% of a cycle, so a size wraps (largest back to smallest) in at most one place.
PERIOD_RANGE = (48.0, 72.0)
# Target centres stay in this band of the width, inside the centre crop evaluation takes.
TARGET_X_RANGE = (0.3, 0.7)
# Distractors: smaller than the target, wandering this many pixels at most from where they start.
DISTRACTOR_RADIUS_RANGE = (0.06, 0.12)
JITTER_RADIUS = 1.0
NUM_DISTRACTORS = 2
# Standard deviation of the static background texture, in 8-bit levels.
TEXTURE_NOISE = 8.0
# Each channel of a colour is drawn from these 8-bit ranges: a dark background, mid-level
# distractors and a bright target, so the target stands out in every frame.
BACKGROUND_LEVELS = (0.0, 64.0)
DISTRACTOR_LEVELS = (64.0, 160.0)
TARGET_LEVELS = (192.0, 255.0)
# Motion presets: target and distractor radius ranges (fractions of the height) and the period range.
MOTIONS = {
    'demo': dict(radius_range=RADIUS_RANGE, distractor_radius_range=DISTRACTOR_RADIUS_RANGE, period_range=PERIOD_RANGE),
    # Targets of 4-10% of the height, four times slower: a pixel or two between the demo's sampled frames.
    'small_slow': dict(radius_range=(0.04, 0.1), distractor_radius_range=(0.03, 0.06), period_range=(192.0, 288.0)),
}


def _shape_masks(kind, dy, dx, radius):
    """Boolean masks (T, H, W) of one shape from offsets to its centre, dy (T, H, 1) and dx (T, 1, W),
    and radius (T, 1, 1) or a number."""
    if kind == 'disc':
        return dy ** 2 + dx ** 2 <= radius ** 2
    if kind == 'square':
        half = radius * 0.85
        return (np.abs(dy) <= half) & (np.abs(dx) <= half)
    # Upward triangle: apex radius above the centre, base 0.6 radius below, widening linearly.
    return (dy >= -radius) & (dy <= 0.6 * radius) & (np.abs(dx) <= (dy + radius) / 1.6)


def _torus_offsets(coordinates, centres, period):
    """Offsets (T, n) from centres (T,) to pixel coordinates (n,) on a circle of length period."""
    return (coordinates[None, :] - centres[:, None] + period / 2) % period - period / 2


def render_clip(label, rng, num_frames=32, height=64, width=64, motion='demo'):
    """Frames of one clip of class CLASSES[label] with the sizes and speeds of MOTIONS[motion]: uint8
    (T, H, W, 3)."""
    sizes = MOTIONS[motion]
    rows, columns = np.arange(height, dtype=np.float32), np.arange(width, dtype=np.float32)
    texture = rng.uniform(*BACKGROUND_LEVELS, size=3) + rng.normal(0, TEXTURE_NOISE, size=(height, width, 1))
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    frames[:] = np.clip(texture, 0, 255).astype(np.uint8)

    for _ in range(NUM_DISTRACTORS):
        colour = rng.uniform(*DISTRACTOR_LEVELS, size=3)
        start = rng.uniform((0, 0), (height, width))
        steps = rng.normal(0, 1.0, size=(num_frames, 2))
        # A random walk pulled back to its start: it moves every frame but never travels.
        offsets = np.zeros((num_frames, 2))
        for t in range(1, num_frames):
            offsets[t] = np.clip(0.7 * offsets[t - 1] + steps[t], -JITTER_RADIUS, JITTER_RADIUS)
        track = start + offsets
        kind, radius = rng.choice(SHAPES), rng.uniform(*sizes['distractor_radius_range']) * height
        mask = _shape_masks(kind, _torus_offsets(rows, track[:, 0], height)[:, :, None],
                            _torus_offsets(columns, track[:, 1], width)[:, None, :], radius)
        frames[mask] = np.round(colour).astype(np.uint8)

    target_colour = rng.uniform(*TARGET_LEVELS, size=3)
    kind = rng.choice(SHAPES)
    log_low, log_high = np.log(np.array(sizes['radius_range']) * height)
    # Phase runs over [0, 1) from a random start and wraps, so every frame on its own looks alike
    # in all classes.
    period = rng.uniform(*sizes['period_range'])
    phase = (rng.uniform() + np.arange(num_frames) / period) % 1.0
    centre_y = np.full(num_frames, rng.uniform(0, height))
    centre_x = np.full(num_frames, rng.uniform(*TARGET_X_RANGE) * width)
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
    # Offsets on a torus: the target leaves the frame on one side and re-enters on the other.
    mask = _shape_masks(kind, _torus_offsets(rows, centre_y, height)[:, :, None],
                        _torus_offsets(columns, centre_x, width)[:, None, :], radius[:, None, None])
    frames[mask] = np.round(target_colour).astype(np.uint8)
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
        # Identical bitstreams from run to run need one encoder thread and no macroblock-tree rate
        # control, whose lookahead reads uninitialised memory.
        stream.thread_count = 1
        stream.options = {'crf': '20', 'preset': 'veryfast', 'x264-params': 'no-mbtree=1'}
        for array in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format='rgb24')))
        container.mux(stream.encode())


def make_demo_dataset(out_dir='demo/data', seed=0, clips_per_class=(64, 16, 16), frame_range=(32, 48),
                      height=64, width=64, fps=25, progress=True, motion='demo'):
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
        write_video(out_dir / relative, render_clip(label, rng, num_frames, height, width, motion), fps)
        lines[split].append(f'{relative}\t{CLASSES[label]}\n')
    for split in SPLITS:
        (out_dir / f'{split}.txt').write_text(''.join(lines[split]))
    (out_dir / 'classmap.json').write_text(json.dumps({name: i for i, name in enumerate(CLASSES)}, indent=1) + '\n')
    return out_dir


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default=str(Path(__file__).parent / 'data'), help='output folder')
    parser.add_argument('--seed', type=int, default=0, help='random seed; the same seed gives the same files')
    parser.add_argument('--clips-per-class', type=int, nargs=3, default=(64, 16, 16), metavar=('TRAIN', 'VAL', 'TEST'))
    parser.add_argument('--motion', choices=tuple(MOTIONS), default='demo', help='sizes and speeds of the motions')
    parser.add_argument('--size', type=int, nargs=2, default=(64, 64), metavar=('WIDTH', 'HEIGHT'))
    args = parser.parse_args()
    make_demo_dataset(args.out, seed=args.seed, clips_per_class=tuple(args.clips_per_class), width=args.size[0],
                      height=args.size[1], motion=args.motion)


if __name__ == '__main__':
    main()
