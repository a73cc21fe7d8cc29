"""Files that are missing, broken or hostile: one clear line naming the file and the cause, and
never a line of the file's code run."""
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from pytorch_lightning.callbacks import ModelCheckpoint, ModelSummary
from safetensors.torch import save_file

from layouts import CLASSES, HEADS, original_layout, random_state, save_lightning
from model_loading import load_model
from video_transformer import VideoClassifier, timesformer_tiny
from weight_formats import WeightLoadError
import weight_sources


class Harmless:
    """A class a hostile pickle could name; loading must never import or build it."""


class Shell:
    """Unpickling it runs a shell command through os.system."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class Tripwire:
    """Unpickling it creates the file `marker`: the code a hostile checkpoint would run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def hostile_files(tmp_path):
    model_state = VideoClassifier(timesformer_tiny()).state_dict()
    torch.save({'state_dict': model_state, 'extra': Harmless()}, tmp_path / 'class.ckpt')
    torch.save({'state_dict': Tripwire(tmp_path / 'ran')}, tmp_path / 'reduce.ckpt')
    (tmp_path / 'reduce.pkl').write_bytes(pickle.dumps({'state_dict': Tripwire(tmp_path / 'ran')}))
    torch.save({'state_dict': Shell(f'touch {tmp_path / "ran"}')}, tmp_path / 'system.ckpt')
    torch.save({'state_dict': model_state}, tmp_path / 'good.pt')
    data = (tmp_path / 'good.pt').read_bytes()
    (tmp_path / 'truncated.pt').write_bytes(data[:len(data) // 2])
    save_file({'backbone.cls_token': torch.ones(1, 1, 4)}, tmp_path / 'good.safetensors')
    (tmp_path / 'truncated.safetensors').write_bytes((tmp_path / 'good.safetensors').read_bytes()[:-8])
    (tmp_path / 'random.bin').write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                                        dtype=torch.uint8).numpy().tobytes())
    (tmp_path / 'empty.pth').write_bytes(b'')
    np.savez(tmp_path / 'objects.npz', x=np.array([{'a': 1}], dtype=object))
    with zipfile.ZipFile(tmp_path / 'corrupt.npz', 'w') as archive:
        archive.writestr('x.npy', b'\x93NUMPY\x01\x00\x10\x00{not a header}\n')
    with zipfile.ZipFile(tmp_path / 'bytes.npz', 'w') as archive:
        archive.writestr('x.npy', b'not an array')
    torch.save({'conv.weight': torch.ones(2), 'fc.bias': torch.ones(2)}, tmp_path / 'unknown.pth')
    torch.save([torch.ones(2)], tmp_path / 'list.pth')
    (tmp_path / 'folder').mkdir()


@pytest.mark.filterwarnings('ignore:Detected pickle protocol')
@pytest.mark.parametrize('name, message', [
    ('class.ckpt', r'refused, it needs arbitrary unpickling \([\w.]*Harmless\)'),
    ('reduce.ckpt', r'refused, it needs arbitrary unpickling \((builtins\.)?getattr\)'),  # torch 2.6 names the module
    # torch's other wording: 'Trying to load unsupported GLOBAL posix.system whose module posix is blocked'.
    ('system.ckpt', r'refused, it needs arbitrary unpickling \((posix|nt)\.system\)'),
    ('reduce.pkl', r'not a readable checkpoint .*UnpicklingError: Unsupported operand \d+\)'),
    ('truncated.pt', r'not a readable checkpoint .*RuntimeError: PytorchStreamReader failed reading zip archive'),
    ('truncated.safetensors', 'not a readable safetensors file'),
    ('random.bin', r'not a readable checkpoint .*UnpicklingError: \w+'),
    ('empty.pth', 'empty'),
    ('objects.npz', 'refused, it holds pickled objects'),
    ('corrupt.npz', 'a corrupt .npz'),
    ('bytes.npz', 'a corrupt .npz'),
    ('unknown.pth', 'unknown weight format'),
    ('list.pth', 'holds a list'),
    ('folder', 'folder without'),
    ('missing.pth', 'no such file'),
])
def test_bad_files_get_one_clear_error(tmp_path, name, message):
    hostile_files(tmp_path)
    with pytest.raises(WeightLoadError, match=message) as error:
        load_model(tmp_path / name)
    assert str(tmp_path / name) in str(error.value) and '\n' not in str(error.value)
    assert not (tmp_path / 'ran').exists()


@pytest.mark.parametrize('name', ['reduce.ckpt', 'system.ckpt'])
def test_the_hostile_checkpoints_would_run_code_if_unpickled(tmp_path, name):
    # Keeps the test above honest: its tripwires do fire under a plain torch.load.
    hostile_files(tmp_path)
    torch.load(tmp_path / name, weights_only=False)
    assert (tmp_path / 'ran').exists()


def test_lightning_1_callback_classes_are_read_as_placeholders(tmp_path):
    # Lightning 1.3 (the original repository's) keyed callback states by the callback class itself; torch.save
    # stores such a class by its import path, which Lightning 2 keeps.
    state = random_state(original_layout('divided_space_time'))
    path = save_lightning(tmp_path / 'seed.ckpt', state,
                          callbacks={ModelCheckpoint: {'best_model_score': torch.tensor(0.5)}})
    assert load_model(path, num_heads=HEADS).head.fc.out_features == CLASSES
    path = save_lightning(tmp_path / 'other.ckpt', state, callbacks={ModelSummary: {}})
    with pytest.raises(WeightLoadError, match=r'refused, it needs arbitrary unpickling \([\w.]*ModelSummary\)'):
        load_model(path, num_heads=HEADS)


def test_a_file_that_cannot_be_opened_says_why(tmp_path):
    path = save_lightning(tmp_path / 'seed.ckpt', random_state(original_layout('space_only')))
    path.chmod(0)
    if os.access(path, os.R_OK):
        pytest.skip('running as a user who reads any file')
    with pytest.raises(WeightLoadError, match='seed.ckpt: cannot be read'):
        load_model(path, num_heads=HEADS)


def test_a_bug_in_our_own_reading_is_not_reported_as_a_broken_file(tmp_path, monkeypatch):
    # Only what torch.load raises on the bytes becomes "not a readable checkpoint".
    path = save_lightning(tmp_path / 'seed.ckpt', random_state(original_layout('space_only')))

    def broken_unwrap(payload, path):
        raise AttributeError('a bug of ours')

    monkeypatch.setattr(weight_sources, 'unwrap', broken_unwrap)
    with pytest.raises(AttributeError, match='a bug of ours'):
        weight_sources.read_weights(path)
