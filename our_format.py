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

from source_preprocessing import datamodule_preprocessing
from weight_config import STRUCTURAL_FIELDS, SourceWeights, current_fields, infer_config, source_defaults
from weight_fitting import is_image_model
from weight_formats import OUR_FORMAT, WeightLoadError


def read_ours(state_dict, extras, sidecar, path):
    """Our keys (an export folder, a training checkpoint or a bare state dict) -> SourceWeights;
    the config, class names and preprocessing from config.json or the hyper-parameters."""
    if any(key.startswith('model.backbone.') for key in state_dict):
        # A training checkpoint: the classifier lives under `model.` of the LightningModule.
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
                                 source_defaults(state_dict), meta.get('class_names'), preprocessing=preprocessing)
        if 'backbone.pos_embed' in state_dict and is_image_model(state_dict):
            raise WeightLoadError(f"{path}: without their config these weights could be per-frame (a per-frame "
                                  f"pos_embed) or joint space-time (a pos_embed over every frame); put the "
                                  f"config.json saved with them beside them")
        return SourceWeights(path, OUR_FORMAT, state_dict, infer_config(state_dict, path),
                             source_defaults(state_dict), meta.get('class_names'), preprocessing=preprocessing)
    config = current_fields(config)
    fixed = {name: config[name] for name in STRUCTURAL_FIELDS if name in config}
    defaults = {name: value for name, value in config.items() if name not in STRUCTURAL_FIELDS}
    return SourceWeights(path, OUR_FORMAT, state_dict, fixed, defaults, meta.get('class_names'),
                         preprocessing=preprocessing)


def write_folder(directory, tensors, config):
    """Write `tensors` as directory/model.safetensors and `config` as directory/config.json.

    Both are written into a temporary folder beside `directory` first and then moved into place
    with os.replace, so a failure never leaves a half-written file over a good export, and the
    window for new weights beside an old config.json is two renames.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise WeightLoadError(f'{directory}: exists and is not a folder')
    text = json.dumps(config, indent=2) + '\n'
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f'.{directory.name}.', dir=directory.parent))
    try:
        save_file(tensors, staging / 'model.safetensors', metadata={'format': 'pt'})
        (staging / 'config.json').write_text(text)
        for name in ('model.safetensors', 'config.json'):
            os.replace(staging / name, directory / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def save_weights(model, directory):
    """Write a VideoClassifier as directory/model.safetensors (our keys) + directory/config.json
    ({'format', 'config', 'class_names', 'preprocessing'}), which load_model reads back exactly."""
    tensors = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
    preprocessing = model.preprocessing.to_dict() if model.preprocessing is not None else None
    meta = {'format': OUR_FORMAT, 'config': model.config.to_dict(), 'class_names': model.class_names,
            'preprocessing': preprocessing}
    return write_folder(directory, tensors, meta)
