"""Reading weight files safely: torch.save files with weights_only, safetensors, .npz without
pickles and JSON, each fault one WeightLoadError naming the file; a folder's weights file and
config.json; a checkpoint's state dict unwrapped from its entries.

Nothing here knows a weight format: weight_sources tells the format by the keys.
"""
import argparse
import json
import pickle
import re
import struct
import zipfile
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from weight_formats import WeightLoadError


# Classes that checkpoints name outside their weights, read as an inert placeholder instead of
# being imported: Lightning 1.x keyed callback states by class, MAE-style scripts store argparse.
class _Placeholder:
    """Stands in for a class a checkpoint names beside its weights; it runs no code."""


SAFE_PLACEHOLDERS = [(_Placeholder, name) for name in (
    'pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint',
    'pytorch_lightning.callbacks.early_stopping.EarlyStopping',
    'pytorch_lightning.callbacks.lr_monitor.LearningRateMonitor',
)] + [argparse.Namespace]

# What torch.load raises on bytes that are not a checkpoint (found by loading truncated,
# bit-flipped and random files); anything else is a bug and propagates.
CORRUPT_FILE_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, struct.error,
                       IndexError, KeyError)
# torch's two wordings for a pickle that names a class or function outside the allowed ones.
REFUSED_GLOBAL = re.compile(r'[Uu]nsupported (?:global: )?GLOBAL ([\w.]+)')


def _cause(error):
    """The sentence of a torch.load error that says what went wrong, without torch's advice."""
    paragraphs = [text.strip() for text in str(error).split('\n\n') if text.strip()]
    specific = [text for text in paragraphs if not text.startswith(('Weights only load failed', 'Check the'))]
    text = (specific or paragraphs or [''])[0].splitlines()[0]
    return f"{type(error).__name__}: {text.split('. ')[0].rstrip('.')}".rstrip(': ')


def _read_torch(path):
    """torch.save file -> its object, weights only (no arbitrary code on unpickling)."""
    try:
        with torch.serialization.safe_globals(SAFE_PLACEHOLDERS):
            return torch.load(path, map_location='cpu', weights_only=True)
    except OSError as error:
        raise WeightLoadError(f'{path}: cannot be read ({error.strerror or error})') from error
    except CORRUPT_FILE_ERRORS as error:
        refused = REFUSED_GLOBAL.search(str(error))
        if refused:
            raise WeightLoadError(
                f'{path}: refused, it needs arbitrary unpickling ({refused[1]}); only tensors, '
                f'containers, numbers and strings are read. If you trust the file, re-save its '
                f'state dict with torch.save(torch.load(path, weights_only=False)["state_dict"], ...)'
            ) from error
        raise WeightLoadError(f'{path}: not a readable checkpoint (corrupt, truncated or not a '
                              f'weights file; {_cause(error)})') from error


def _read_npz(path):
    """NumPy .npz of arrays -> {name: tensor}; object arrays (pickles) are refused."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return {name: torch.from_numpy(np.array(arrays[name])) for name in arrays.files}
    except ValueError as error:
        # NumPy raises ValueError both for object arrays and for a malformed .npy header.
        if 'allow_pickle' in str(error):
            raise WeightLoadError(f'{path}: refused, it holds pickled objects ({error})') from error
        raise WeightLoadError(f'{path}: a corrupt .npz ({error})') from error
    except TypeError as error:
        # A member without the .npy magic comes back as raw bytes, which no tensor holds.
        raise WeightLoadError(f'{path}: a corrupt .npz (a member is not a .npy array)') from error
    except (OSError, zipfile.BadZipFile, EOFError) as error:
        raise WeightLoadError(f'{path}: not a readable .npz ({type(error).__name__}: {error})') from error


def _read_safetensors(path):
    try:
        return load_file(path, device='cpu')
    except (SafetensorError, OSError) as error:
        raise WeightLoadError(f'{path}: not a readable safetensors file ({error})') from error


def read_file(path):
    """A weights file -> its top-level object. The container is sniffed from the bytes:
    safetensors, .npz (a zip of .npy) or torch.save (zip or legacy pickle)."""
    path = Path(path)
    if not path.is_file():
        raise WeightLoadError(f'{path}: no such file')
    with open(path, 'rb') as stream:
        start = stream.read(9)
    if not start:
        raise WeightLoadError(f'{path}: the file is empty')
    if len(start) == 9 and start[8:9] == b'{' and int.from_bytes(start[:8], 'little') < path.stat().st_size:
        return _read_safetensors(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if names and all(name.endswith('.npy') for name in names):
            return _read_npz(path)
    return _read_torch(path)


def read_json(path):
    """A JSON file -> its object; WeightLoadError naming the file when it cannot be read."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise WeightLoadError(f'{path}: not a readable JSON file ({error})') from error


WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin')


def locate(path):
    """A weights file or folder -> (weights file, the config.json beside it or None)."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in WEIGHT_FILES if (path / name).is_file()]
        if not found:
            raise WeightLoadError(f'{path}: folder without {" or ".join(WEIGHT_FILES)}')
        path = found[0]
    elif not path.exists():
        raise WeightLoadError(f'{path}: no such file or folder')
    sidecar = path.parent / 'config.json'
    return path, (read_json(sidecar) if sidecar.is_file() else None)


# Entries under which checkpoints nest their state dict: Lightning / the original repository, official
# TimeSformer, MAE, DeiT and VideoMAE (`model`, or `module` from its DeepSpeed runs).
WRAPPERS = ('state_dict', 'model_state', 'model', 'module')


def unwrap(payload, path):
    """Top-level object of a checkpoint -> (state dict of tensors, every other top-level entry,
    e.g. a Lightning checkpoint's hyper_parameters and datamodule_hyper_parameters)."""
    if not isinstance(payload, dict):
        raise WeightLoadError(f'{path}: holds a {type(payload).__name__}, not a state dict')
    for key in WRAPPERS:
        if isinstance(payload.get(key), dict):
            extras = {name: value for name, value in payload.items() if name != key}
            payload = payload[key]
            break
    else:
        extras = {}
    state_dict = {key: value for key, value in payload.items() if isinstance(value, torch.Tensor)}
    if not state_dict:
        raise WeightLoadError(f'{path}: holds no tensors')
    return state_dict, extras
