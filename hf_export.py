"""Writing transformers folders of the matching classes (TimeSformer, VideoMAE, V-JEPA 2: config.json +
model.safetensors) that transformers' `from_pretrained` loads; our own folder is our_format's."""
import logging

from our_format import write_folder
from source_preprocessing import HF_SAMPLING_FIELDS, HF_SAMPLING_FILE
from weight_formats import (TO_HF_ACTIVATION, WeightLoadError, convert_to_hf_timesformer, convert_to_hf_videomae,
                            convert_to_hf_vjepa2)

logger = logging.getLogger(__name__)


def _named_tables(model):
    """Classifier state dict, with fixed sine-cosine tables included (they are not persistent)."""
    state_dict = model.state_dict()
    for name in ('pos_embed', 'time_embed'):
        table = getattr(model.backbone, name)
        if table is not None and name in model.config.position_table_rows:
            state_dict[f'backbone.{name}'] = table
    return state_dict


def hf_timesformer_config(config, class_names=None):
    """transformers' TimesformerConfig fields (a dict) for our TimeSformer `config`; WeightLoadError
    for one transformers cannot express."""
    unsupported = [
        (config.conv_type == 'Conv2d', f'Conv2d patches (this model has {config.conv_type} tubelets of '
                                       f'{config.tube_size} frames)'),
        (config.pos_emb_type == 'separate', "pos_emb_type 'separate'"),
        # transformers' space_only classifies every frame instead of averaging them.
        (config.attention_type in ('divided_space_time', 'joint_space_time'), 'divided or joint attention'),
        (config.norm_eps == config.final_norm_eps,
         f'one LayerNorm eps (norm_eps {config.norm_eps} vs final_norm_eps {config.final_norm_eps}; loading '
         f'with norm_eps={config.final_norm_eps} picks one and changes the logits slightly)'),
        (config.pooling == 'cls_token', 'the class token as output'),
    ]
    _refuse_unless(unsupported, 'TimeSformer')
    return {
        'model_type': 'timesformer', 'architectures': ['TimesformerForVideoClassification'],
        'image_size': config.img_size, 'patch_size': config.patch_size, 'num_channels': config.in_channels,
        'num_frames': config.num_frames, 'hidden_size': config.embed_dims,
        'num_hidden_layers': config.num_transformer_layers, 'num_attention_heads': config.num_heads,
        'intermediate_size': int(config.embed_dims * config.mlp_ratio),
        'hidden_act': TO_HF_ACTIVATION[config.activation],
        'hidden_dropout_prob': config.dropout_p, 'attention_probs_dropout_prob': config.dropout_p,
        'initializer_range': 0.02, 'layer_norm_eps': config.norm_eps, 'qkv_bias': config.qkv_bias == 'qkv',
        # drop_path_rate stays out: transformers 5.23 types it as int and rejects a float.
        'attention_type': config.attention_type, **_hf_labels(config, class_names),
    }


# transformers builds VideoMAE's fc_norm as LayerNorm(hidden_size): PyTorch's default eps.
HF_VIDEOMAE_FC_NORM_EPS = 1e-5


def _refuse_unless(requirements, name):
    """WeightLoadError naming every (holds, what) requirement that does not hold."""
    needed = [what for holds, what in requirements if not holds]
    if needed:
        raise WeightLoadError(f'transformers {name} needs {", ".join(needed)}')


def _hf_labels(config, class_names):
    names = class_names or [f'LABEL_{index}' for index in range(config.num_classes)]
    return {'id2label': {str(index): name for index, name in enumerate(names)},
            'label2id': {name: index for index, name in enumerate(names)}}


def hf_videomae_config(config, class_names=None):
    """transformers' VideoMAEConfig fields for our VideoMAE `config`; WeightLoadError for one it
    cannot express."""
    _refuse_unless([
        (config.qkv_bias in ('qv', 'none'), "q and v biases or none (qkv_bias 'qv' or 'none')"),
        (config.final_norm_eps == HF_VIDEOMAE_FC_NORM_EPS,
         f'fc_norm eps {HF_VIDEOMAE_FC_NORM_EPS} (final_norm_eps is {config.final_norm_eps}; loading with '
         f'final_norm_eps={HF_VIDEOMAE_FC_NORM_EPS} changes the logits slightly)'),
    ], 'VideoMAE')
    return {
        'model_type': 'videomae', 'architectures': ['VideoMAEForVideoClassification'],
        'image_size': config.img_size, 'patch_size': config.patch_size, 'num_channels': config.in_channels,
        'num_frames': config.num_frames, 'tubelet_size': config.tube_size, 'hidden_size': config.embed_dims,
        'num_hidden_layers': config.num_transformer_layers, 'num_attention_heads': config.num_heads,
        'intermediate_size': int(config.embed_dims * config.mlp_ratio),
        'hidden_act': TO_HF_ACTIVATION[config.activation],
        'hidden_dropout_prob': config.dropout_p, 'attention_probs_dropout_prob': config.dropout_p,
        'initializer_range': 0.02, 'layer_norm_eps': config.norm_eps, 'qv_bias': config.qkv_bias == 'qv',
        'use_mean_pooling': True, **_hf_labels(config, class_names),
    }


def hf_vjepa2_config(config, class_names=None):
    """transformers' VJEPA2Config fields for our V-JEPA 2 `config`; WeightLoadError for one it cannot
    express."""
    _refuse_unless([
        (config.qkv_bias in ('qkv', 'none'), "biases on all of q, k and v or none (qkv_bias 'qkv' or 'none')"),
        (config.norm_eps == config.final_norm_eps,
         f'one LayerNorm eps (norm_eps {config.norm_eps} vs final_norm_eps {config.final_norm_eps})'),
    ], 'V-JEPA 2')
    return {
        'model_type': 'vjepa2', 'architectures': ['VJEPA2ForVideoClassification'],
        'patch_size': config.patch_size, 'crop_size': config.img_size, 'frames_per_clip': config.num_frames,
        'tubelet_size': config.tube_size, 'hidden_size': config.embed_dims, 'in_chans': config.in_channels,
        'num_attention_heads': config.num_heads, 'num_hidden_layers': config.num_transformer_layers,
        'mlp_ratio': config.mlp_ratio, 'layer_norm_eps': config.norm_eps, 'qkv_bias': config.qkv_bias == 'qkv',
        'hidden_act': TO_HF_ACTIVATION[config.activation], 'attention_probs_dropout_prob': config.dropout_p,
        'num_pooler_layers': config.num_pooler_layers, **_hf_labels(config, class_names),
    }


# arch -> (transformers config fields, our keys -> transformers keys).
HF_EXPORTS = {
    'timesformer': (hf_timesformer_config, convert_to_hf_timesformer),
    'videomae': (hf_videomae_config, convert_to_hf_videomae),
    'vjepa2': (hf_vjepa2_config, convert_to_hf_vjepa2),
}


def hf_fields(model):
    """The transformers config.json fields of a VideoClassifier; WeightLoadError for an architecture or
    variant transformers lacks."""
    if model.config.arch not in HF_EXPORTS:
        raise WeightLoadError(f'transformers folders are written for {", ".join(HF_EXPORTS)}, not {model.config.arch}')
    return HF_EXPORTS[model.config.arch][0](model.config, model.class_names)


def hf_processor_config(preprocessing):
    """transformers' VideoMAEImageProcessor settings (preprocessor_config.json, which its TimeSformer,
    VideoMAE and V-JEPA 2 read) for a Preprocessing: resize the short side, centre crop, RGB / 255,
    normalise. Frame spacing and test views it cannot hold: see HF_SAMPLING_FILE."""
    crop = {'height': preprocessing.img_size, 'width': preprocessing.img_size}
    # resample 2 is PIL's bilinear, as video_decoding.resize_short_side; rescale_factor 1 / 255 keeps
    # mean and std in the [0, 1] convention that ours use, so they round-trip exactly.
    return {'image_processor_type': 'VideoMAEImageProcessor', 'do_resize': True,
            'size': {'shortest_edge': preprocessing.short_side}, 'resample': 2, 'do_center_crop': True,
            'crop_size': crop, 'do_rescale': True, 'rescale_factor': 1 / 255, 'do_normalize': True,
            'image_mean': list(preprocessing.mean), 'image_std': list(preprocessing.std)}


def save_hf(model, directory):
    """Write a VideoClassifier as a transformers folder of its class (TimesformerForVideoClassification,
    VideoMAEForVideoClassification, VJEPA2ForVideoClassification: config.json + model.safetensors) that
    `from_pretrained` loads, with its preprocessing: preprocessor_config.json for transformers, and
    HF_SAMPLING_FILE with the frame spacing and test views that load_model reads back; what
    transformers will not apply is said in one warning line. WeightLoadError for an architecture or
    variant transformers lacks."""
    fields = hf_fields(model)
    convert = HF_EXPORTS[model.config.arch][1]
    tensors = convert(_named_tables(model))
    files = {'config.json': fields}
    preprocessing = model.preprocessing
    if preprocessing is not None:
        sampling = {name: getattr(preprocessing, name) for name in HF_SAMPLING_FIELDS}
        files.update({'preprocessor_config.json': hf_processor_config(preprocessing), HF_SAMPLING_FILE: sampling})
        window = ('one frame per equal segment of the video' if preprocessing.sampling == 'segments' else
                  f'a window of {preprocessing.window_seconds} s' if preprocessing.window_seconds is not None
                  else f'frame interval {preprocessing.frame_interval}')
        logger.warning('%s: transformers has no setting for the sampling (%s) or the %dx%d test views; '
                       'they are in %s for load_model, a transformers pipeline takes its own frames and '
                       'one centre crop', directory, window, preprocessing.num_clips, preprocessing.num_crops,
                       HF_SAMPLING_FILE)
    else:
        logger.warning('%s: the weights record no preprocessing; no %s written, transformers takes its '
                       'defaults', directory, 'preprocessor_config.json')
    return write_folder(directory, tensors, files)
