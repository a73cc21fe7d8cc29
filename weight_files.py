"""Reading weights: files opened safely, the format told by the keys, and what the weights say
about the model and its preprocessing (SourceWeights).

`read_weights` reads a file or folder, picks the converter of weight_formats by the keys and
returns the weights in our keys with the config fields they fix, the source's conventions for
the rest, its class names and the preprocessing it was trained with.
"""
import argparse
import json
import logging
import math
import pickle
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file

from preprocessing import DATA_STATICS, data_statics
from transformer import num_token_frames
from video_transformer import ARCHITECTURES
from weight_fitting import is_image_model
from weight_formats import (OUR_FORMAT, VIDEOMAE_DECODER, WeightLoadError, convert_hf_timesformer, convert_hf_videomae,
                            convert_hf_vivit, convert_hf_vjepa2, convert_jax_vit, convert_mae, convert_seed,
                            convert_timm, convert_videomae, count_layers)

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Reading files safely


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


def _read_json(path):
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
    return path, (_read_json(sidecar) if sidecar.is_file() else None)


# Entries under which checkpoints nest their state dict: Lightning / the original repository,
# official TimeSformer, MAE, DeiT and VideoMAE (`model`, or `module` from its DeepSpeed runs).
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


# ---------------------------------------------------------------------------------------------
# What the weights say about the model


# Config fields that describe the network's structure; a source that records them fixes them.
STRUCTURAL_FIELDS = (
    'arch', 'attention_type', 'num_frames', 'img_size', 'patch_size', 'embed_dims', 'num_heads',
    'num_transformer_layers', 'num_time_transformer_layers', 'fact_encoder_attention', 'in_channels',
    'conv_type', 'tube_size', 'use_learnable_pos_emb', 'pos_emb_type', 'pooling', 'num_pooler_layers', 'mlp_ratio',
    'qkv_bias', 'num_classes',
)


# Config fields of earlier versions that describe how a model was started, not the model: saved
# configs that carry them still load.
RETIRED_FIELDS = ('pretrained', 'copy_strategy', 'extend_strategy')


def current_fields(config):
    """A saved config dict in today's fields: retired fields left out, the original repository's
    return_cls_token as the pooling it names."""
    config = {name: value for name, value in config.items() if name not in RETIRED_FIELDS}
    if 'return_cls_token' in config:
        config['pooling'] = 'cls_token' if config.pop('return_cls_token') else 'mean'
    return config

# Attention types whose weights have the same keys and shapes: either agrees with such weights.
SAME_KEYS = {'joint_space_time': 'fact_dot_product', 'fact_dot_product': 'joint_space_time'}


def default_num_heads(embed_dims):
    """Heads of width 64, the convention of every standard ViT size from tiny to large."""
    return max(1, embed_dims // 64)


def infer_config(state_dict, path, pos_emb_type='separate', arch=None):
    """Config fields that our classifier keys determine: sizes from shapes, variant from the keys.

    Joint space-time and fact_dot_product share their keys (SAME_KEYS); a model without stored
    position tables leaves the attention type open. A fact_encoder whose temporal layers have a
    temporal_fc is the seed's 37e1801 layout (fact_encoder_attention 'divided'). A joint position
    table leaves the image size and frame count open (its length is their product); one passed as
    'separate' is refused where the keys show it (temporal layers but no time table, or no square
    grid). `arch` names the architecture of tubelet weights without position tables (VideoMAE,
    V-JEPA 2); else tubelets mean ViViT. `path` names the file.
    """
    proj = state_dict['backbone.patch_embed.proj.weight']
    dim = proj.shape[0]
    fields = {
        'embed_dims': dim, 'in_channels': proj.shape[1], 'patch_size': proj.shape[-1],
        'conv_type': 'Conv3d' if proj.ndim == 5 else 'Conv2d',
        'num_transformer_layers': count_layers(state_dict, 'backbone.blocks.'),
        'mlp_ratio': state_dict['backbone.blocks.0.ffn.fc1.weight'].shape[0] / dim,
        'qkv_bias': 'qv' if any(key.endswith('.q_bias') for key in state_dict)
        else 'qkv' if any(key.endswith('.qkv.bias') for key in state_dict) else 'none',
    }
    tube_size = 1
    if proj.ndim == 5:
        tube_size = proj.shape[2]
        fields.update(arch=arch or 'vivit', tube_size=tube_size)
    if arch in ('videomae', 'vjepa2'):
        fields = {**ARCHITECTURES[arch].arch_defaults, **fields}
        if 'head.pooler.query' in state_dict:
            fields['num_pooler_layers'] = count_layers(state_dict, 'head.pooler.blocks.')
    time_layers = count_layers(state_dict, 'backbone.temporal_blocks.')
    if time_layers:
        divided = any(key.startswith('backbone.temporal_blocks.') and '.temporal_fc.' in key for key in state_dict)
        fields.update(arch='vivit', attention_type='fact_encoder', num_time_transformer_layers=time_layers,
                      fact_encoder_attention='divided' if divided else 'self_attn')
    elif any('.temporal_attn.' in key for key in state_dict):
        fields['attention_type'] = 'divided_space_time'
    elif 'backbone.time_embed' in state_dict or pos_emb_type == 'joint':
        fields['attention_type'] = 'joint_space_time'
    elif 'backbone.pos_embed' in state_dict:
        fields.update(arch='timesformer', attention_type='space_only')
    if 'head.fc.weight' in state_dict:
        fields['num_classes'] = state_dict['head.fc.weight'].shape[0]
    table = state_dict.get('backbone.pos_embed')
    if table is not None:
        fields['use_learnable_pos_emb'] = True
    if table is not None and pos_emb_type == 'separate':
        grid = math.isqrt(table.shape[1] - 1)
        temporal = proj.ndim == 5 or fields.get('attention_type') == 'divided_space_time'
        if grid * grid != table.shape[1] - 1 or (temporal and 'backbone.time_embed' not in state_dict):
            # Image size and frame count only multiply in a joint table: guessing would be wrong.
            raise WeightLoadError(f"{path}: pos_embed has {table.shape[1]} rows, not a class token and a "
                                  f"square grid: a pos_emb_type 'joint' table? Put the config.json saved with "
                                  f"the weights beside them")
        fields['img_size'] = grid * fields['patch_size']
    table = state_dict.get('backbone.time_embed')
    if table is not None:
        fields['num_frames'] = (table.shape[1] - (1 if time_layers else 0)) * tube_size
    return fields


# ---------------------------------------------------------------------------------------------
# The preprocessing each source was trained with: Preprocessing fields, where img_size and
# short_side are the source's own (load_model keeps their ratio at another image size) and
# num_frames follows the model.

KINETICS_MEAN, KINETICS_STD = DATA_STATICS['kinetics']
# The seed's model_pretrain.py and model_inference.py (37e1801): mean = std = 0.5, 8 frames 32
# apart, the short side resized to the crop size, 1 clip x 3 crops at test time.
SEED_PREPROCESSING = {'mean': (0.5, 0.5, 0.5), 'std': (0.5, 0.5, 0.5), 'frame_interval': 32,
                      'num_clips': 1, 'num_crops': 3}
# Official TimeSformer's Kinetics configs (TimeSformer_divST_8x32_224): Kinetics statistics, 8
# frames 32 apart, test crops as large as the short side, 1 clip x 3 crops; a .pyth's own `cfg`
# (DATA, TEST) says better when it is there.
OFFICIAL_PREPROCESSING = {'mean': KINETICS_MEAN, 'std': KINETICS_STD, 'frame_interval': 32,
                          'num_clips': 1, 'num_crops': 3}
# transformers: its pipeline's one centre crop of one clip; its configs record no frame
# interval (the pipeline's default reads consecutive frames, the model card demos every 4th).
HF_PREPROCESSING = {'mean': KINETICS_MEAN, 'std': KINETICS_STD, 'frame_interval': 4,
                    'num_clips': 1, 'num_crops': 1}
# transformers' processor files, in the order it reads them.
HF_PROCESSOR_FILES = ('video_preprocessor_config.json', 'preprocessor_config.json')
# A LightningDataModule's saved hyper-parameters that Preprocessing keeps (data_statics aside).
DATAMODULE_FIELDS = ('num_frames', 'frame_interval', 'window_seconds', 'img_size', 'short_side',
                     'num_clips', 'num_crops')


def _datamodule_preprocessing(hparams, path):
    """VideoDataModule hyper-parameters -> Preprocessing fields."""
    settings = {name: hparams[name] for name in DATAMODULE_FIELDS if hparams.get(name) is not None}
    if 'data_statics' in hparams:
        try:
            settings['mean'], settings['std'] = data_statics(hparams['data_statics'])
        except ValueError as error:
            raise WeightLoadError(f'{path}: datamodule_hyper_parameters: {error}') from error
    return settings


def _official_preprocessing(extras, img_size, path):
    """Official TimeSformer's settings, from the DATA and TEST sections of the .pyth's `cfg`
    (its YAML dump) where present."""
    settings = {**OFFICIAL_PREPROCESSING, 'img_size': img_size, 'short_side': img_size}
    if not isinstance(extras.get('cfg'), str):
        return settings
    try:
        cfg = yaml.safe_load(extras['cfg'])
    except yaml.YAMLError as error:
        logger.warning('%s: its cfg is not readable YAML (%s); taking the Kinetics 8x32 settings',
                       path, str(error).splitlines()[0])
        return settings
    cfg = cfg if isinstance(cfg, dict) else {}
    data, test = cfg.get('DATA') or {}, cfg.get('TEST') or {}
    read = {'mean': data.get('MEAN'), 'std': data.get('STD'), 'frame_interval': data.get('SAMPLING_RATE'),
            'num_clips': test.get('NUM_ENSEMBLE_VIEWS'), 'num_crops': test.get('NUM_SPATIAL_CROPS')}
    return {**settings, **{name: value for name, value in read.items() if value is not None}}


def _hf_size(value, key, path):
    """A transformers size entry: an int or a dict with `key`, or with height and width."""
    if not isinstance(value, dict):
        return value
    if key in value:
        return value[key]
    logger.warning('%s: resizes to %d x %d without keeping the aspect ratio; taking a short side of %d',
                   path, value['height'], value['width'], min(value['height'], value['width']))
    return min(value['height'], value['width'])


def _hf_preprocessing(folder, img_size, conventions=HF_PREPROCESSING):
    """transformers' settings, with a processor file's normalisation and sizes when present.

    Processors rescale pixels (p * rescale_factor, minus 1 with ViViT's offset) and normalise with
    image_mean and image_std; in our convention (RGB in [0, 1]) that is mean (m + o) / (255 r) and
    std s / (255 r). Its resize sets the short side and its centre crop the crop size.
    """
    settings = {**conventions, 'img_size': img_size, 'short_side': img_size}
    found = [folder / name for name in HF_PROCESSOR_FILES if (folder / name).is_file()]
    if not found:
        return settings
    processor = _read_json(found[0])
    scale = 255 * processor.get('rescale_factor', 1 / 255) if processor.get('do_rescale', True) else 1
    # ViViT's image processor saves `offset`; its video processor always subtracts 1.
    offset = float(processor.get('offset', processor.get('video_processor_type') == 'VivitVideoProcessor'))
    mean, std = (0.0,) * 3, (1.0,) * 3
    if processor.get('do_normalize', True):
        mean, std = (processor.get(name, conventions[ours]) for name, ours in
                     (('image_mean', 'mean'), ('image_std', 'std')))
    mean, std = ([value] * 3 if isinstance(value, (int, float)) else value for value in (mean, std))
    try:
        settings.update(mean=[(value + offset) / scale for value in mean], std=[value / scale for value in std])
        if 'crop_size' in processor:
            settings['img_size'] = _hf_size(processor['crop_size'], 'height', found[0])
        if 'size' in processor:
            settings['short_side'] = _hf_size(processor['size'], 'shortest_edge', found[0])
    except (KeyError, TypeError) as error:
        raise WeightLoadError(f'{found[0]}: not a transformers processor config ({error!r})') from error
    return settings


# ---------------------------------------------------------------------------------------------
# One loader: the format from the keys, then what it fixes about the model


@dataclass
class SourceWeights:
    """Weights read from a file in our classifier keys, and what they say about the model.

    fixed: config fields the weights or their own config determine; defaults: the source's
    conventions for fields the weights leave open; missing_ok: our keys the source never has (a key
    ending in '.' stands for every key under it); notes: what reading left out, for the summary line;
    preprocessing: Preprocessing fields the source was trained with (img_size and short_side its
    own), None for image models and files that do not say.
    """

    path: Path
    format: str
    state_dict: dict
    fixed: dict
    defaults: dict
    class_names: list | None = None
    missing_ok: tuple = ()
    preprocessing: dict | None = None
    notes: tuple = ()

    @property
    def num_time_steps(self):
        """Token frames of the checkpoint's position tables, when it records its frame count."""
        frames = self.fixed.get('num_frames')
        if frames is None:
            return None
        return num_token_frames(frames, self.fixed.get('conv_type'), self.fixed.get('tube_size', 1))


def _merge_fixed(from_weights, from_config, path):
    """Fields from the weights and from their config file, which must agree."""
    for name, value in from_config.items():
        if name in from_weights and from_weights[name] != value:
            raise WeightLoadError(f'{path}: its config says {name}={value!r}, '
                                  f'its weights {name}={from_weights[name]!r}')
    return {**from_weights, **from_config}


def _defaults(state_dict, **conventions):
    """A source's conventions, and heads of width 64 where it does not record them."""
    return {'num_heads': default_num_heads(state_dict['backbone.patch_embed.proj.weight'].shape[0]),
            **conventions}


def _read_ours(state_dict, extras, sidecar, path):
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
        preprocessing = _datamodule_preprocessing(extras['datamodule_hyper_parameters'], path)
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
                                 _defaults(state_dict), meta.get('class_names'), preprocessing=preprocessing, notes=notes)
        if 'backbone.pos_embed' in state_dict and is_image_model(state_dict):
            raise WeightLoadError(f"{path}: without their config these weights could be per-frame (a per-frame "
                                  f"pos_embed) or joint space-time (a pos_embed over every frame); put the "
                                  f"config.json saved with them beside them")
        return SourceWeights(path, OUR_FORMAT, state_dict, infer_config(state_dict, path),
                             _defaults(state_dict), meta.get('class_names'), preprocessing=preprocessing, notes=notes)
    config = current_fields(config)
    fixed = {name: config[name] for name in STRUCTURAL_FIELDS if name in config}
    defaults = {name: value for name, value in config.items() if name not in STRUCTURAL_FIELDS}
    return SourceWeights(path, OUR_FORMAT, state_dict, fixed, defaults, meta.get('class_names'),
                         preprocessing=preprocessing, notes=notes)


def _read_seed(state_dict, extras, sidecar, path):
    converted = convert_seed(state_dict)
    defaults = _defaults(converted, norm_eps=1e-5, final_norm_eps=1e-6, activation='gelu')
    fixed = infer_config(converted, path)
    size = fixed.get('img_size')
    preprocessing = {**SEED_PREPROCESSING, 'img_size': size, 'short_side': size} if size else None
    return SourceWeights(path, 'seed', converted, fixed, defaults, preprocessing=preprocessing)


def _read_official(state_dict, extras, sidecar, path):
    converted = convert_timm(state_dict)
    defaults = _defaults(converted, norm_eps=1e-6, final_norm_eps=1e-6, activation='gelu')
    fixed = infer_config(converted, path)
    return SourceWeights(path, 'official-timesformer', converted, fixed, defaults,
                         preprocessing=_official_preprocessing(extras, fixed['img_size'], path))


def _read_timm(state_dict, extras, sidecar, path):
    converted = convert_timm(state_dict)
    defaults = _defaults(converted, norm_eps=1e-6, final_norm_eps=1e-6, activation='gelu')
    return SourceWeights(path, 'timm', converted, infer_config(converted, path), defaults)


def _read_mae(state_dict, extras, sidecar, path):
    converted = convert_mae(state_dict)
    defaults = _defaults(converted, norm_eps=1e-6, final_norm_eps=1e-6, activation='gelu')
    return SourceWeights(path, 'mae', converted, infer_config(converted, path), defaults,
                         missing_ok=('backbone.cls_token', 'backbone.pos_embed'))


def _read_jax_vit(state_dict, extras, sidecar, path):
    converted = convert_jax_vit(state_dict)
    heads = state_dict['Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel'].shape[1]
    defaults = {'norm_eps': 1e-6, 'final_norm_eps': 1e-6, 'activation': 'gelu'}
    return SourceWeights(path, 'jax-vit', converted, {**infer_config(converted, path), 'num_heads': heads}, defaults)


# transformers' hidden_act -> ours. gelu_new, gelu_fast and gelu_pytorch_tanh all compute the tanh
# approximation (their constants differ in the 8th digit).
HF_ACTIVATIONS = {'gelu': 'gelu', 'gelu_python': 'gelu', 'gelu_new': 'gelu_tanh', 'gelu_fast': 'gelu_tanh',
                  'gelu_pytorch_tanh': 'gelu_tanh', 'quick_gelu': 'quick_gelu'}


def _hf_common(config, path, default_activation):
    """Fields of a transformers config shared by TimeSformer and ViViT."""
    activation = config.get('hidden_act', default_activation)
    if activation not in HF_ACTIVATIONS:
        raise WeightLoadError(f'{path}: hidden_act {activation!r} is not one of {sorted(HF_ACTIVATIONS)}')
    eps = config.get('layer_norm_eps', 1e-6)
    fixed = {'num_heads': config.get('num_attention_heads', 12), 'img_size': config.get('image_size', 224)}
    defaults = {'activation': HF_ACTIVATIONS[activation], 'norm_eps': eps, 'final_norm_eps': eps}
    labels = config.get('id2label')
    class_names = [labels[key] for key in sorted(labels, key=int)] if labels else None
    return fixed, defaults, class_names


def _read_hf_timesformer(state_dict, extras, sidecar, path):
    converted = convert_hf_timesformer(state_dict)
    from_weights = infer_config(converted, path)
    attention_type = (sidecar or {}).get('attention_type', from_weights.get('attention_type'))
    if attention_type == 'space_only':
        raise WeightLoadError(f"{path}: transformers' space_only TimeSformer classifies every frame on its "
                              f"own; ours averages the frames before the final norm and cannot reproduce it")
    if sidecar is None:
        defaults = _defaults(converted, norm_eps=1e-6, final_norm_eps=1e-6, activation='gelu')
        return SourceWeights(path, 'hf-timesformer', converted, from_weights, defaults,
                             preprocessing=_hf_preprocessing(path.parent, from_weights['img_size']))
    fixed, defaults, class_names = _hf_common(sidecar, path, 'gelu')
    fixed.update(arch='timesformer', num_frames=sidecar.get('num_frames', 8),
                 attention_type=sidecar.get('attention_type', 'divided_space_time'))
    return SourceWeights(path, 'hf-timesformer', converted, _merge_fixed(from_weights, fixed, path),
                         defaults, class_names, preprocessing=_hf_preprocessing(path.parent, fixed['img_size']))


def _read_hf_vivit(state_dict, extras, sidecar, path):
    if sidecar is None:
        raise WeightLoadError(f'{path}: a transformers ViViT needs its config.json beside it '
                              f'(frames and image size order its position table)')
    tubelet = sidecar.get('tubelet_size', [2, 16, 16])
    if tubelet[1] != tubelet[2]:
        raise WeightLoadError(f'{path}: tubelet_size {tubelet} is not square in space')
    frames = sidecar.get('num_frames', 32)
    converted = convert_hf_vivit(state_dict, frames // tubelet[0])
    fixed, defaults, class_names = _hf_common(sidecar, path, 'gelu_fast')
    fixed.update(arch='vivit', attention_type='joint_space_time', pos_emb_type='joint', num_frames=frames)
    from_weights = infer_config(converted, path, pos_emb_type='joint')
    return SourceWeights(path, 'hf-vivit', converted, _merge_fixed(from_weights, fixed, path),
                         defaults, class_names, preprocessing=_hf_preprocessing(path.parent, fixed['img_size']))


# VideoMAE's evaluation protocols (MCG-NJU's run_class_finetuning.py): ImageNet statistics, the short
# side resized to the crop size, 16 frames 4 apart in 5 clips x 3 crops on Kinetics; SSv2 (174
# classes) samples frames spread over the whole video, 2 x 3.
VIDEOMAE_PREPROCESSING = {'mean': DATA_STATICS['imagenet'][0], 'std': DATA_STATICS['imagenet'][1],
                          'frame_interval': 4, 'num_clips': 5, 'num_crops': 3}
SSV2_CLASSES = 174


def _videomae_preprocessing(settings, num_classes, path):
    """VideoMAE's views for its weights: Kinetics' 5 x 3, or SSv2's 2 x 3 (its frames spread over the
    video are not a sampling of ours: said in one line)."""
    if num_classes != SSV2_CLASSES:
        return {**settings, 'num_clips': 5, 'num_crops': 3}
    logger.warning('%s: SSv2 weights were evaluated on frames spread over the whole video; taking %d frames '
                   '%d apart, 2 clips x 3 crops (-frame_interval changes it)', path, 16, settings['frame_interval'])
    return {**settings, 'num_clips': 2, 'num_crops': 3}


def _decoder_note(state_dict, encoder_prefix):
    """The summary line's word on a pretraining checkpoint's decoder, which an encoder leaves out."""
    dropped = [key for key in state_dict if VIDEOMAE_DECODER.match(key.removeprefix(encoder_prefix))]
    return (f'the pretraining decoder left out ({len(dropped)} tensors)',) if dropped else ()


def _read_hf_videomae(state_dict, extras, sidecar, path):
    if sidecar is not None and not sidecar.get('use_mean_pooling', True):
        raise WeightLoadError(f"{path}: use_mean_pooling false (transformers then classifies the first patch "
                              f"token) is not supported; VideoMAE's classifiers mean-pool")
    converted = convert_hf_videomae(state_dict)
    from_weights = infer_config(converted, path, arch='videomae')
    sidecar = sidecar or {}
    fixed, defaults, class_names = _hf_common(sidecar, path, 'gelu')
    # transformers builds fc_norm without its config's layer_norm_eps: LayerNorm's default.
    defaults['norm_eps'] = sidecar.get('layer_norm_eps', 1e-12)
    defaults['final_norm_eps'] = 1e-5
    fixed.update(num_frames=sidecar.get('num_frames', 16))
    settings = _hf_preprocessing(path.parent, fixed['img_size'], VIDEOMAE_PREPROCESSING)
    settings = _videomae_preprocessing(settings, from_weights.get('num_classes'), path)
    return SourceWeights(path, 'hf-videomae', converted, _merge_fixed(from_weights, fixed, path), defaults,
                         class_names, missing_ok=('backbone.norm.weight', 'backbone.norm.bias'),
                         preprocessing=settings, notes=_decoder_note(state_dict, 'videomae.'))


def _read_videomae(state_dict, extras, sidecar, path):
    converted = convert_videomae(state_dict)
    if 'backbone.norm.weight' not in converted and 'head.fc.weight' in converted:
        raise WeightLoadError(f"{path}: a VideoMAE classifier without fc_norm (use_mean_pooling False) is not "
                              f"supported; VideoMAE's classifiers mean-pool")
    fixed = infer_config(converted, path, arch='videomae')
    # MCG-NJU's files record neither frames nor image size: its standard 16 x 224 unless overridden.
    defaults = _defaults(converted, num_frames=16, img_size=224)
    settings = {**VIDEOMAE_PREPROCESSING, 'img_size': 224, 'short_side': 224}
    return SourceWeights(path, 'videomae', converted, fixed, defaults,
                         missing_ok=('backbone.norm.weight', 'backbone.norm.bias'),
                         preprocessing=_videomae_preprocessing(settings, fixed.get('num_classes'), path),
                         notes=_decoder_note(state_dict, 'encoder.'))


# V-JEPA 2's evaluation: ImageNet statistics, the short side 256/224 of the crop, 2 clips x 3 crops.
VJEPA2_PREPROCESSING = {'mean': DATA_STATICS['imagenet'][0], 'std': DATA_STATICS['imagenet'][1],
                        'frame_interval': 4, 'num_clips': 2, 'num_crops': 3}


def _read_hf_vjepa2(state_dict, extras, sidecar, path):
    converted = convert_hf_vjepa2(state_dict)
    from_weights = infer_config(converted, path, arch='vjepa2')
    sidecar = sidecar or {}
    fixed, defaults, class_names = _hf_common(sidecar, path, 'gelu')
    fixed.update(num_heads=sidecar.get('num_attention_heads', 16), img_size=sidecar.get('crop_size', 256),
                 num_frames=sidecar.get('frames_per_clip', 64))
    if 'head.pooler.query' not in converted:  # an encoder: the pooler of the config builds fresh
        fixed['num_pooler_layers'] = sidecar.get('num_pooler_layers', 3)
    settings = _hf_preprocessing(path.parent, fixed['img_size'], VJEPA2_PREPROCESSING)
    predictor = sum(key.removeprefix('vjepa2.').startswith('predictor.') for key in state_dict)
    notes = (f'the pretraining predictor left out ({predictor} tensors)',) if predictor else ()
    return SourceWeights(path, 'hf-vjepa2', converted, _merge_fixed(from_weights, fixed, path), defaults,
                         class_names, preprocessing=settings, notes=notes,
                         missing_ok=() if 'head.pooler.query' in converted else ('head.pooler.',))


def _is_videomae(state_dict):
    """MCG-NJU VideoMAE: timm-style block keys (`encoder.` when pretrained) over Conv3d tubelets."""
    proj = state_dict.get('patch_embed.proj.weight', state_dict.get('encoder.patch_embed.proj.weight'))
    return proj is not None and proj.ndim == 5 and any(re.match(r'(encoder\.)?blocks\.\d+\.attn\.', key)
                                                      for key in state_dict)


def _is_hf_videomae(state_dict):
    """transformers VideoMAE: its prefix, or a bare model's query / q_bias keys without ViViT's table."""
    return any(key.startswith('videomae.') for key in state_dict) or (
        'embeddings.position_embeddings' not in state_dict and
        any(re.match(r'encoder\.layer\.\d+\.attention\.attention\.(q_bias|query\.)', key) for key in state_dict))


# Formats by a key pattern only they have (matched at the start of a key), or a test of the state
# dict where the keys alone cannot tell, checked in order.
FORMATS = (
    (OUR_FORMAT, r'(model\.)?backbone\.', _read_ours),
    ('seed', r'(model\.)?transformer_layers\.|cls_head\.cls_head\.', _read_seed),
    ('hf-videomae', _is_hf_videomae, _read_hf_videomae),
    ('hf-vjepa2', r'(vjepa2\.)?encoder\.layer\.\d+\.norm1\.', _read_hf_vjepa2),
    ('videomae', _is_videomae, _read_videomae),
    ('hf-timesformer', r'(timesformer\.)?encoder\.layer\.\d+\.attention\.attention\.qkv\.', _read_hf_timesformer),
    ('hf-vivit', r'(vivit\.)?(layers\.\d+\.attention\.q_proj|encoder\.layer\.\d+\.attention\.attention\.query)\.',
     _read_hf_vivit),
    ('mae', r'encoder\.blocks\.\d+\.', _read_mae),
    # Official TimeSformer's vit.py wraps timm's VisionTransformer as `model`.
    ('official-timesformer', r'model\.blocks\.\d+\.attn\.qkv\.', _read_official),
    ('timm', r'blocks\.\d+\.attn\.qkv\.', _read_timm),
    ('jax-vit', r'Transformer/encoderblock_\d+/', _read_jax_vit),
)


def detect_format(state_dict):
    """The FORMATS entry (name, pattern, reader) whose key pattern `state_dict` has, or None."""
    for entry in FORMATS:
        test = entry[1]
        if test(state_dict) if callable(test) else any(re.match(test, key) for key in state_dict):
            return entry
    return None


def read_weights(path):
    """A weights file or folder -> SourceWeights, the format read from the keys."""
    weights_file, sidecar = locate(path)
    state_dict, extras = unwrap(read_file(weights_file), weights_file)
    entry = detect_format(state_dict)
    if entry is None:
        sample = ', '.join(sorted(state_dict)[:4])
        raise WeightLoadError(f'{weights_file}: unknown weight format (keys like {sample}); expected '
                              f'{", ".join(name for name, _, _ in FORMATS)}')
    name, _, reader = entry
    try:
        return reader(state_dict, extras, sidecar, weights_file)
    except KeyError as error:
        # The converters take the keys a format always has; a file without one is incomplete.
        raise WeightLoadError(f'{weights_file}: looks like {name} but lacks {error}') from error


def load_state_dict_strictly(module, state_dict, path, expected_missing=()):
    """Load `state_dict` into `module`: every key must fit, only `expected_missing` may be absent.

    Returns the missing keys (a subset of `expected_missing`).
    """
    own = module.state_dict()
    unexpected = sorted(set(state_dict) - set(own))
    missing = sorted(set(own) - set(state_dict))
    surprising = [key for key in missing if not any(
        key == expected or (expected.endswith('.') and key.startswith(expected)) for expected in expected_missing)]
    mismatched = [f'{key} {tuple(value.shape)} vs {tuple(own[key].shape)}'
                  for key, value in state_dict.items() if key in own and value.shape != own[key].shape]
    problems = [f'{label}: {", ".join(keys[:6])}{" ..." if len(keys) > 6 else ""}'
                for label, keys in (('missing', surprising), ('unexpected', unexpected),
                                    ('wrong shape (file vs model)', mismatched)) if keys]
    if problems:
        raise WeightLoadError(f'{path}: weights do not fit the model; {"; ".join(problems)}')
    module.load_state_dict(state_dict, strict=False)
    return missing
