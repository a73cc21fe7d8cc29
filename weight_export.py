"""Writing weights: our safetensors + config.json folder, which load_model reads back exactly,
and a transformers TimesformerForVideoClassification folder."""
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from safetensors.torch import save_file

from weight_files import HF_SAMPLING_FIELDS, HF_SAMPLING_FILE
from weight_formats import OUR_FORMAT, WeightLoadError, convert_to_hf_timesformer

logger = logging.getLogger(__name__)
# What an export folder may hold: both kinds' files. A folder of these only is an earlier export,
# which a new export replaces whole.
EXPORT_FILES = ('model.safetensors', 'config.json', 'preprocessor_config.json', HF_SAMPLING_FILE)


def _named_tables(model):
    """Classifier state dict, with fixed sine-cosine tables included (they are not persistent)."""
    state_dict = model.state_dict()
    for name in ('pos_embed', 'time_embed'):
        table = getattr(model.backbone, name)
        if table is not None:
            state_dict[f'backbone.{name}'] = table
    return state_dict


def _umask():
    """The process's file creation mask (os.umask can only be read by setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_folder(directory, tensors, files):
    """Write `tensors` as directory/model.safetensors and each of `files` (name -> JSON values)
    beside it, as a new folder or in place of an earlier export (EXPORT_FILES only), whole.

    All are written into a temporary folder beside `directory` first, which then takes its place
    by renames, so a failure never leaves a half-written file over a good export, nor files of
    an earlier export beside new ones. Files and folder get the usual permissions (the umask's),
    where safetensors alone would write model.safetensors readable by its owner only. A folder
    holding anything else is refused: an export never merges with other files.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise WeightLoadError(f'{directory}: exists and is not a folder')
    if directory.is_dir():
        others = sorted(path.name for path in directory.iterdir() if path.name not in EXPORT_FILES)
        if others:
            raise WeightLoadError(f'{directory}: not empty and not an earlier export (it holds {", ".join(others[:3])}'
                                  f'{" ..." if len(others) > 3 else ""}); give a new or empty folder')
    texts = {name: json.dumps(values, indent=2) + '\n' for name, values in files.items()}
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f'.{directory.name}.', dir=directory.parent))
    earlier = staging.with_name(staging.name + '.earlier')
    mask = _umask()
    try:
        save_file(tensors, staging / 'model.safetensors', metadata={'format': 'pt'})
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
    tensors = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
    preprocessing = model.preprocessing.to_dict() if model.preprocessing is not None else None
    meta = {'format': OUR_FORMAT, 'config': model.config.to_dict(), 'class_names': model.class_names,
            'preprocessing': preprocessing}
    return _write_folder(directory, tensors, {'config.json': meta})


def hf_timesformer_config(config, class_names=None):
    """transformers' TimesformerConfig fields (a dict) for our TimeSformer `config`; WeightLoadError
    for one transformers cannot express."""
    activation = {'gelu': 'gelu', 'gelu_tanh': 'gelu_pytorch_tanh', 'quick_gelu': 'quick_gelu'}[config.activation]
    unsupported = [
        (config.conv_type == 'Conv2d', f'Conv2d patches (this model has {config.conv_type} tubelets of '
                                       f'{config.tube_size} frames)'),
        (config.pos_emb_type == 'separate', "pos_emb_type 'separate'"),
        # transformers' space_only classifies every frame instead of averaging them.
        (config.attention_type in ('divided_space_time', 'joint_space_time'), 'divided or joint attention'),
        (config.norm_eps == config.final_norm_eps,
         f'one LayerNorm eps (norm_eps {config.norm_eps} vs final_norm_eps {config.final_norm_eps}; loading '
         f'with norm_eps={config.final_norm_eps} picks one and changes the logits slightly)'),
        (config.return_cls_token, 'the class token as output'),
    ]
    needed = [what for holds, what in unsupported if not holds]
    if needed:
        raise WeightLoadError(f'transformers TimeSformer needs {", ".join(needed)}')
    names = class_names or [f'LABEL_{index}' for index in range(config.num_classes)]
    return {
        'model_type': 'timesformer', 'architectures': ['TimesformerForVideoClassification'],
        'image_size': config.img_size, 'patch_size': config.patch_size, 'num_channels': config.in_channels,
        'num_frames': config.num_frames, 'hidden_size': config.embed_dims,
        'num_hidden_layers': config.num_transformer_layers, 'num_attention_heads': config.num_heads,
        'intermediate_size': int(config.embed_dims * config.mlp_ratio), 'hidden_act': activation,
        'hidden_dropout_prob': config.dropout_p, 'attention_probs_dropout_prob': config.dropout_p,
        'initializer_range': 0.02, 'layer_norm_eps': config.norm_eps, 'qkv_bias': config.qkv_bias,
        # drop_path_rate stays out: transformers 5.23 types it as int and rejects a float.
        'attention_type': config.attention_type,
        'id2label': {str(index): name for index, name in enumerate(names)},
        'label2id': {name: index for index, name in enumerate(names)},
    }


def hf_processor_config(preprocessing):
    """transformers' VideoMAEImageProcessor settings (preprocessor_config.json, which its
    TimeSformer reads) for a Preprocessing: resize the short side, centre crop, RGB / 255,
    normalise. Frame spacing and test views it cannot hold: see HF_SAMPLING_FILE."""
    crop = {'height': preprocessing.img_size, 'width': preprocessing.img_size}
    # resample 2 is PIL's bilinear, as dataset.resize_short_side; rescale_factor 1 / 255 keeps
    # mean and std in the [0, 1] convention that ours use, so they round-trip exactly.
    return {'image_processor_type': 'VideoMAEImageProcessor', 'do_resize': True,
            'size': {'shortest_edge': preprocessing.short_side}, 'resample': 2, 'do_center_crop': True,
            'crop_size': crop, 'do_rescale': True, 'rescale_factor': 1 / 255, 'do_normalize': True,
            'image_mean': list(preprocessing.mean), 'image_std': list(preprocessing.std)}


def save_hf_timesformer(model, directory):
    """Write a TimeSformer VideoClassifier as a transformers TimesformerForVideoClassification
    folder (config.json + model.safetensors) that `from_pretrained` loads, with its preprocessing:
    preprocessor_config.json for transformers, and HF_SAMPLING_FILE with the frame spacing and
    test views that load_model reads back; what transformers will not apply is said in one
    warning line."""
    hf_config = hf_timesformer_config(model.config, model.class_names)
    tensors = {key: value.detach().contiguous()
               for key, value in convert_to_hf_timesformer(_named_tables(model)).items()}
    files = {'config.json': hf_config}
    preprocessing = model.preprocessing
    if preprocessing is not None:
        sampling = {name: getattr(preprocessing, name) for name in HF_SAMPLING_FIELDS}
        files.update({'preprocessor_config.json': hf_processor_config(preprocessing), HF_SAMPLING_FILE: sampling})
        window = (f'a window of {preprocessing.window_seconds} s' if preprocessing.window_seconds is not None
                  else f'frame interval {preprocessing.frame_interval}')
        logger.warning('%s: transformers has no setting for the sampling (%s) or the %dx%d test views; '
                       'they are in %s for load_model, a transformers pipeline takes its own frames and '
                       'one centre crop', directory, window, preprocessing.num_clips, preprocessing.num_crops,
                       HF_SAMPLING_FILE)
    else:
        logger.warning('%s: the weights record no preprocessing; no %s written, transformers takes its '
                       'defaults', directory, 'preprocessor_config.json')
    return _write_folder(directory, tensors, files)
