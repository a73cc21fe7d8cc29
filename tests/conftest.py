"""Shared fixtures: the generated demo dataset, the demo run the command-line tests share, the
odd videos and the reference material in ../shared."""
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from demo.make_demo_dataset import make_demo_dataset
from videos import write_odd_videos

REPOSITORY = Path(__file__).resolve().parents[1]
SHARED_DIR = REPOSITORY.parent / 'shared'


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


@pytest.fixture(scope='session')
def odd_videos(tmp_path_factory):
    """{name: path} of videos.ODD_VIDEOS the local FFmpeg can encode, encoded once per session."""
    return write_odd_videos(tmp_path_factory.mktemp('odd'))


@pytest.fixture(scope='session')
def demo_run(tmp_path_factory):
    """The demo recipe trained once per session by the training command, for the command-line tests
    of both commands: the demo recipe's 20 epochs on the demo's 64 training clips per class, 8 val and
    4 test clips per class (32 steps an epoch), so the tests judge a trained model as a user gets it. SimpleNamespace(data (the dataset folder), stdout, log (its log
    folder), summary (its summary.json))."""
    data = make_demo_dataset(tmp_path_factory.mktemp('demo_run_data'), seed=0, clips_per_class=(64, 8, 4),
                             progress=False)
    root = tmp_path_factory.mktemp('demo_run')
    command = [sys.executable, str(REPOSITORY / 'model_pretrain.py'), '-recipe', 'demo',
               '-num_workers', '0', '-root_dir', root, '-train_data_path', data / 'train.txt',
               '-val_data_path', data / 'val.txt', '-test_data_path', data / 'test.txt',
               '-class_map', data / 'classmap.json']
    result = subprocess.run(list(map(str, command)), cwd=REPOSITORY, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    (log,) = root.glob('results/*/log')
    return SimpleNamespace(data=data, stdout=result.stdout, log=log,
                           summary=json.loads((log / 'summary.json').read_text()))
