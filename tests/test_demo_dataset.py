"""The demo generator's motion presets."""
import numpy as np

from demo.make_demo_dataset import CLASSES, render_clip


def target_area_and_speed(motion, seed):
    """(share of the frame the bright target covers, its median rows a frame) of a moving_up clip at
    160x120; the target's every channel lies in TARGET_LEVELS (192 and above), nothing else does."""
    frames = render_clip(CLASSES.index('moving_up'), np.random.default_rng(seed), 32, 120, 160, motion)
    bright = (frames >= 192).all(axis=-1)
    rows = np.array([np.nonzero(frame)[0].mean() for frame in bright])
    return bright.mean(), float(np.median(np.abs(np.diff(rows))))


def test_the_small_slow_preset_draws_smaller_slower_targets():
    """The harder set of the README's pretraining trial (`--motion small_slow`): targets of 4-10% of
    the height moving under a pixel a frame, where the demo's cover 10-36% and move about two. Fails
    if the preset's ranges are not read (the demo's sizes and speeds drawn for both)."""
    demo = np.array([target_area_and_speed('demo', seed) for seed in range(8)])
    small = np.array([target_area_and_speed('small_slow', seed) for seed in range(8)])
    assert small[:, 0].mean() < demo[:, 0].mean() / 4, (small[:, 0], demo[:, 0])
    assert small[:, 1].max() < demo[:, 1].min() / 2, (small[:, 1], demo[:, 1])
