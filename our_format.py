"""Our checkpoint format, read and written: a folder of model.safetensors (our keys) and
config.json ({'format', 'config', 'class_names', 'preprocessing'}), and the training command's
Lightning checkpoints (the classifier under `model.`, the same entries as hyper-parameters).
"""
import json
import os
import shutil
import tempfile
from pathlib import Path

from safetensors.torch import save_file

from source_preprocessing import HF_SAMPLING_FILE, datamodule_preprocessing
from weight_config import STRUCTURAL_FIELDS, SourceWeights, current_fields, infer_config, source_defaults
from weight_fitting import is_image_model
from weight_formats import OUR_FORMAT, WeightLoadError


def read_ours(state_dict, extras, sidecar, path):
    """Our keys (an export folder, a training checkpoint or a bare state dict) -> SourceWeights;
    the config, class names and preprocessing from config.json or the hyper-parameters."""
    notes = ()
    if any(key.startswith('model.backbone.') for key in state_dict):
        # A training checkpoint: the classifier lives under `model.` of the LightningModule; a masked
        # autoencoding run's decoder (pretrain_trainer) beside it is not part of a classifier.
        decoder = sum(key.startswith('decoder.') for key in state_dict)
        notes = (f'the pretraining decoder left out ({decoder} tensors)',) if decoder else ()
        state_dict = {key.removeprefix('model.'): value for key, value in state_dict.items()
                      if key.startswith('model.')}
    if sidecar is not None and sidecar.get('format') == OUR_FORMAT:
        meta = sidecar
    else:
        meta = extras.get('hyper_parameters') or {}
    preprocessing = meta.get('preprocessing')
    if preprocessing is None and extras.get('datamodule_hyper_parameters'):
        preprocessing = datamodule_preprocessing(extras['datamodule_hyper_parameters'], path)
    config = meta.get('config')
    if config is None:
        if 'backbone.cls_token' not in state_dict:
            # VideoMAE and V-JEPA 2 have neither a class token nor stored positions.
            arch = 'videomae' if any(key.endswith('.q_bias') for key in state_dict) else \
                'vjepa2' if 'head.pooler.query' in state_dict else None
            if arch is None:
                raise WeightLoadError(f'{path}: weights without a class token, q and v biases or an attentive '
                                      f'pooler; put the config.json saved with them beside them')
            return SourceWeights(path, OUR_FORMAT, state_dict, infer_config(state_dict, path, arch=arch),
                                 source_defaults(state_dict), meta.get('class_names'), preprocessing=preprocessing,
                                 notes=notes)
        if 'backbone.pos_embed' in state_dict and is_image_model(state_dict):
            raise WeightLoadError(f"{path}: without their config these weights could be per-frame (a per-frame "
                                  f"pos_embed) or joint space-time (a pos_embed over every frame); put the "
                                  f"config.json saved with them beside them")
        return SourceWeights(path, OUR_FORMAT, state_dict, infer_config(state_dict, path),
                             source_defaults(state_dict), meta.get('class_names'), preprocessing=preprocessing,
                             notes=notes)
    config = current_fields(config, path)
    fixed = {name: config[name] for name in STRUCTURAL_FIELDS if name in config}
    defaults = {name: value for name, value in config.items() if name not in STRUCTURAL_FIELDS}
    return SourceWeights(path, OUR_FORMAT, state_dict, fixed, defaults, meta.get('class_names'),
                         preprocessing=preprocessing, notes=notes)


# What an export folder may hold: our folder's (with -onnx's graph and its external weights) and a
# transformers folder's files. A folder of these only is an earlier export, which a new export replaces
# whole, so no model.onnx of earlier weights stays beside new ones.
EXPORT_FILES = ('model.safetensors', 'config.json', 'preprocessor_config.json', HF_SAMPLING_FILE, 'model.onnx',
                'model.onnx.data')


def _umask():
    """The process's file creation mask (os.umask can only be read by setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_export_folder(directory):
    """`directory` as a Path when an export may be written there (new, empty, or an earlier export:
    EXPORT_FILES only), else a WeightLoadError naming it: an export never merges with other files."""
    directory = Path(directory)
    existing = next(path for path in (directory, *directory.absolute().parents) if path.exists())
    if not existing.is_dir():  # the folder itself or one it would be made in
        raise WeightLoadError(f'{existing}: exists and is not a folder')
    if directory.is_dir():
        others = sorted(path.name for path in directory.iterdir() if path.name not in EXPORT_FILES)
        if others:
            raise WeightLoadError(f'{directory}: not empty and not an earlier export (it holds {", ".join(others[:3])}'
                                  f'{" ..." if len(others) > 3 else ""}); give a new or empty folder')
    return directory


def write_folder(directory, tensors, files):
    """Write `tensors` as directory/model.safetensors and each of `files` (name -> JSON values)
    beside it, as a new folder or in place of an earlier export (EXPORT_FILES only), whole.

    All are written into a temporary folder beside `directory` first, which then takes its place
    by renames, so a failure never leaves a half-written file over a good export, nor files of
    an earlier export beside new ones. Files and folder get the usual permissions (the umask's),
    where safetensors alone would write model.safetensors readable by its owner only. A folder
    holding anything else is refused: an export never merges with other files.
    """
    directory = check_export_folder(directory)
    texts = {name: json.dumps(values, indent=2) + '\n' for name, values in files.items()}
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f'.{directory.name}.', dir=directory.parent))
    earlier = staging.with_name(staging.name + '.earlier')
    mask = _umask()
    try:
        save_file({key: value.detach().contiguous() for key, value in tensors.items()}, staging / 'model.safetensors',
                  metadata={'format': 'pt'})
        for name, text in texts.items():
            (staging / name).write_text(text)
        for name in ('model.safetensors', *texts):
            os.chmod(staging / name, 0o666 & ~mask)
        os.chmod(staging, 0o777 & ~mask)
        if directory.exists():
            directory.rename(earlier)
        try:
            staging.rename(directory)
        except OSError:
            if earlier.exists():
                earlier.rename(directory)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(earlier, ignore_errors=True)
    return directory


def save_weights(model, directory):
    """Write a VideoClassifier as directory/model.safetensors (our keys) + directory/config.json
    ({'format', 'config', 'class_names', 'preprocessing'}), which load_model reads back exactly."""
    tensors = model.state_dict()
    preprocessing = model.preprocessing.to_dict() if model.preprocessing is not None else None
    meta = {'format': OUR_FORMAT, 'config': model.config.to_dict(), 'class_names': model.class_names,
            'preprocessing': preprocessing}
    return write_folder(directory, tensors, {'config.json': meta})
