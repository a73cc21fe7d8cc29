"""`load_model`: weights in any supported format -> an eval-mode VideoClassifier with its class
names and preprocessing, top-down: read the weights, work out the config, build on the meta
device, fit the position tables, load strictly in place."""
import logging

import torch

from preprocessing import Preprocessing
from strict_loading import load_into_meta_model
from utils import reject_unknown
from video_transformer import CONFIG_FIELDS, VideoClassifier, VideoTransformerConfig
from weight_config import SAME_KEYS
from weight_fitting import resize_position_tables
from weight_formats import HEAD_KEYS, WeightLoadError
from weight_sources import read_weights

logger = logging.getLogger(__name__)

# Fields a checkpoint fixes that a caller may still change: position tables are resized to them.
RESIZABLE_FIELDS = ('img_size', 'num_frames')


def load_model(path, *, drop_head=False, class_names=None, guess_num_heads=True, **overrides):
    """Weights in any supported format -> eval-mode VideoClassifier, float (B, T, 3, H, W) -> (B, K).

    The format is read from the keys (weight_sources.FORMATS). What the weights or their own config
    fix is taken from them; `overrides` (config fields) give the rest. An override that
    contradicts the weights is an error, except img_size and num_frames, to which the position
    tables are resized. Another num_classes, or class_names of another length, needs
    drop_head=True: a new head. A file that does not record its head count gets heads of width 64
    with a warning, or, with guess_num_heads=False, an error unless num_heads is given.
    The model's `preprocessing` is the source's (None for image models and bare state dicts),
    with num_frames and img_size following the model and short_side keeping its ratio to img_size.

    The model is built on the meta device and takes the file's tensors in place (no random
    initialisation to overwrite): float32 whatever the file holds, as transformers' from_pretrained
    without torch_dtype='auto'; keys the source lacks by design (a new head, MAE's class token) get
    the model's own initialisation.
    """
    source = read_weights(path)
    config = _config_for(source, overrides, class_names, drop_head, guess_num_heads)
    state_dict, expected_missing = source.state_dict, source.missing_ok
    if drop_head:
        state_dict = {key: value for key, value in state_dict.items() if key not in HEAD_KEYS}
        expected_missing += HEAD_KEYS
    elif HEAD_KEYS[0] not in state_dict:
        # Said for both users: the commands' (which have no drop_head) and load_model's callers.
        raise WeightLoadError(f'{source.path}: holds no classification head, so it cannot classify: a starting '
                              f'point for fine-tuning (model_pretrain.py -pretrain; load_model(..., drop_head=True, '
                              f'num_classes=N) adds a new head)')
    if class_names is None and not drop_head:
        class_names = source.class_names
    class_names = class_names_for(class_names, config.num_classes, source.path)
    preprocessing = _preprocessing_for(source, config)
    with torch.device('meta'):
        model = VideoClassifier(config, class_names, preprocessing)
    state_dict, notes = resize_position_tables(state_dict, config, source.num_time_steps, source.path)
    missing = load_into_meta_model(model, state_dict, source.path, expected_missing)
    logger.info('Loaded %s: format %s; %s %s, %d layers of width %d, %d heads, %d frames at %d px, '
                '%d classes; missing keys %s; unexpected keys []%s', source.path, source.format,
                config.arch, config.attention_type, config.num_transformer_layers, config.embed_dims,
                config.num_heads, config.num_frames, config.img_size, config.num_classes, missing,
                ''.join(f'; {note}' for note in source.notes + tuple(notes)))
    return model.eval()


def class_names_for(class_names, num_classes, path):
    """`class_names` when they name each of `num_classes` classes, else None, said in one warning line
    naming the file (a checkpoint whose names were edited, or written by another module)."""
    if class_names is not None and len(class_names) != num_classes:
        logger.warning('%s: its %d class names do not match its %d classes; they are left out', path,
                       len(class_names), num_classes)
        return None
    return class_names


def _config_for(source, overrides, class_names, drop_head, guess_num_heads):
    """The config for `source`: its fixed fields, overrides where they agree, then its defaults."""
    reject_unknown(overrides, CONFIG_FIELDS, 'load_model() got unexpected config fields', TypeError)
    reject_unknown(source.defaults, CONFIG_FIELDS, f'{source.path}: its config has fields this version does not know:',
                   WeightLoadError)
    if class_names is not None:
        overrides = {**overrides, 'num_classes': len(class_names)}
    for name, value in overrides.items():
        fixed = source.fixed.get(name, value)
        agrees = value == fixed or (name == 'attention_type' and SAME_KEYS.get(fixed) == value)
        if not agrees and name not in RESIZABLE_FIELDS and not (drop_head and name == 'num_classes'):
            hint = ' (drop_head=True starts a new head)' if name == 'num_classes' else ''
            raise WeightLoadError(f'{source.path}: {name}={value!r} contradicts the weights, '
                                  f'which fix {name}={fixed!r}{hint}')
    if 'num_heads' not in source.fixed and 'num_heads' not in overrides:
        guess = source.defaults['num_heads']
        if not guess_num_heads:
            raise WeightLoadError(f'{source.path}: does not record its head count; give num_heads '
                                  f'(heads of width 64 would be {guess})')
        logger.warning('%s: does not record its head count; taking num_heads=%d (width 64 each), '
                       'pass num_heads= if that is wrong', source.path, guess)
    try:
        return VideoTransformerConfig(**{**source.defaults, **source.fixed, **overrides})
    except ValueError as error:
        raise WeightLoadError(f'{source.path}: {error}') from error


def _preprocessing_for(source, config):
    """The source's Preprocessing for the model `config` describes, or None."""
    settings = source.preprocessing
    if settings is None:
        return None
    size = settings.get('img_size') or config.img_size
    short_side = settings.get('short_side')
    settings = {**settings, 'num_frames': config.num_frames, 'img_size': config.img_size,
                'short_side': None if short_side is None else round(short_side * config.img_size / size)}
    try:
        return Preprocessing.from_dict(settings)
    except (ValueError, TypeError) as error:
        raise WeightLoadError(f'{source.path}: preprocessing {error}') from error
