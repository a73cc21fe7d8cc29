"""model_pretrain.py as users run it: real processes, real checkpoints, real signals."""
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from model_loading import load_model

REPOSITORY = Path(__file__).resolve().parents[1]
# A small, fast recipe on the session's demo clips (4 train clips per class).
TINY = ['-num_frames', '4', '-frame_interval', '2', '-img_size', '32', '-patch_size', '8', '-embed_dims', '32',
        '-num_heads', '2', '-depth', '2', '-batch_size', '4', '-num_workers', '0', '-num_clips', '1',
        '-num_crops', '3', '-log_interval', '1', '-accelerator', 'cpu']


def demo_flags(demo_data):
    return ['-train_data_path', str(demo_data / 'train.txt'), '-val_data_path', str(demo_data / 'val.txt'),
            '-test_data_path', str(demo_data / 'test.txt'), '-class_map', str(demo_data / 'classmap.json')]


def train(*flags, wait=True, **options):
    command = [sys.executable, str(REPOSITORY / 'model_pretrain.py'), *map(str, flags)]
    if not wait:
        return subprocess.Popen(command, cwd=REPOSITORY, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True, timeout=600, **options)


def run_dir(root):
    (found,) = (root / 'results').iterdir()
    return found


def test_bad_flags_and_paths_stop_with_one_line_and_exit_2(demo_data, tmp_path):
    numbered = tmp_path / 'numbered.txt'
    numbered.write_text(''.join(f'{demo_data}/train/{name}/train_0000.mp4 {index}\n' for index, name in
                                enumerate(['moving_up', 'moving_down', 'growing', 'shrinking'])))
    blocker = tmp_path / 'a_file'
    blocker.write_text('')
    listed = demo_flags(demo_data)
    cases = {
        'missing list': (['-train_data_path', tmp_path / 'missing.txt'], 'missing.txt: no such file'),
        'num_class below a label': (['-train_data_path', numbered, '-num_class', '2'],
                                    'label 2 is out of range for 2 classes'),
        'unknown arch': (['-arch', 'resnet'], "argument -arch/--arch: invalid choice: 'resnet'"),
        'attention of another arch': ([*listed, '-attention_type', 'fact_encoder'],
                                      "attention_type must be one of"),
        'frames and tubelets': ([*listed, '-arch', 'vivit', '-attention_type', 'fact_encoder', '-num_frames', '5'],
                                'num_frames 5 is not a multiple of tube_size 2'),
        'root_dir not writable': ([*listed, '-root_dir', blocker / 'workspace'], f'-root_dir {blocker / "workspace"}'),
        'resume without checkpoint': ([*listed, '-root_dir', tmp_path / 'fresh', '-resume'], '-resume: no checkpoint'),
        'missing starting point': ([*listed, '-pretrain', tmp_path / 'vit.pth'], 'vit.pth'),
        'not a number': (['-lr', 'fast'], "argument -lr/--lr: invalid float value: 'fast'"),
    }
    with ThreadPoolExecutor(2) as pool:
        results = dict(zip(cases, pool.map(lambda case: train(*case[0], *TINY), cases.values())))
    for name, (_, expected) in cases.items():
        result = results[name]
        assert result.returncode == 2, (name, result.stderr[-2000:])
        assert 'Traceback' not in result.stderr, name
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and expected in lines[0], (name, lines)
