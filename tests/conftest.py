"""Shared fixtures: the generated demo dataset and the reference material in ../shared."""
from pathlib import Path

import pytest

from demo.make_demo_dataset import make_demo_dataset

SHARED_DIR = Path(__file__).resolve().parents[1].parent / 'shared'


@pytest.fixture(scope='session')
def shared_dir():
    """../shared beside the repository; tests that need it skip when it is absent."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f'{SHARED_DIR} is not present')
    return SHARED_DIR


@pytest.fixture(scope='session')
def shared_videos(shared_dir):
    """The real Kinetics clips of ../shared/demo, sorted by name."""
    videos = sorted((shared_dir / 'demo').glob('*.mp4'))
    if not videos:
        pytest.skip(f'no videos in {shared_dir / "demo"}')
    return videos


@pytest.fixture(scope='session')
def demo_data(tmp_path_factory):
    """A small demo dataset (4 train, 1 val, 1 test clips per class) generated once per session."""
    return make_demo_dataset(tmp_path_factory.mktemp('demo'), seed=0, clips_per_class=(4, 1, 1), progress=False)

