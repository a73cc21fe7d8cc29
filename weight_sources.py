"""Each source's reader and the format told by the keys: `read_weights` reads a file or folder,
picks the FORMATS entry whose key pattern the state dict has, and its reader returns SourceWeights:
the weights in our keys (weight_formats' converter), the config fields they fix, the source's
conventions for the rest, its class names and the preprocessing it was trained with.

A new source is a converter in weight_formats, a reader here and its FORMATS entry.
"""
import re

from our_format import read_ours
from source_preprocessing import (HF_SAMPLING_FILE, VIDEOMAE_PREPROCESSING, VJEPA2_PREPROCESSING, hf_preprocessing,
                                  mcg_videomae_preprocessing, official_preprocessing, original_preprocessing,
                                  videomae_views)
from weight_config import SourceWeights, infer_config, merge_fixed, source_defaults
from weight_files import locate, read_file, unwrap
from weight_formats import (FROM_HF_ACTIVATION, OUR_FORMAT, PRETRAINING_DECODER, WeightLoadError,
                            convert_hf_timesformer, convert_hf_videomae, convert_hf_vivit, convert_hf_vjepa2,
                            convert_jax_vit, convert_mae, convert_original, convert_timm, convert_videomae)

# A reader takes (state dict in the source's keys, the checkpoint's other top-level entries, the
# config.json beside the weights or None, the weights file) and returns SourceWeights.


def read_original(state_dict, extras, sidecar, path):
    """The original repository's Lightning checkpoints and ViT file (mmcv-style keys)."""
    converted = convert_original(state_dict)
    fixed = infer_config(converted, path)
    return SourceWeights(path, 'original', converted, fixed, source_defaults(converted, norm_eps=1e-5),
                         preprocessing=original_preprocessing(fixed.get('img_size')))


def read_official(state_dict, extras, sidecar, path):
    """Official TimeSformer .pyth: timm keys under `model.`, its training cfg beside them."""
    converted = convert_timm(state_dict)
    fixed = infer_config(converted, path)
    return SourceWeights(path, 'official-timesformer', converted, fixed, source_defaults(converted),
                         preprocessing=official_preprocessing(extras, fixed['img_size'], path))


def read_timm(state_dict, extras, sidecar, path):
    """A timm ViT (.pth or .safetensors)."""
    converted = convert_timm(state_dict)
    return SourceWeights(path, 'timm', converted, infer_config(converted, path), source_defaults(converted))


def read_mae(state_dict, extras, sidecar, path):
    """An MAE-pytorch pretraining checkpoint: no class token, its position table computed, not stored."""
    converted = convert_mae(state_dict)
    return SourceWeights(path, 'mae', converted, infer_config(converted, path), source_defaults(converted),
                         missing_ok=('backbone.cls_token', 'backbone.pos_embed'))


def read_jax_vit(state_dict, extras, sidecar, path):
    """The original ViT / AugReg .npz; its attention kernels record the head count."""
    converted = convert_jax_vit(state_dict)
    heads = state_dict['Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel'].shape[1]
    return SourceWeights(path, 'jax-vit', converted, {**infer_config(converted, path), 'num_heads': heads},
                         source_defaults(converted))


def hf_common(config, path, default_activation):
    """Fields of a transformers config.json shared by its models: (fixed, defaults, class names)."""
    activation = config.get('hidden_act', default_activation)
    if activation not in FROM_HF_ACTIVATION:
        raise WeightLoadError(f'{path}: hidden_act {activation!r} is not one of {sorted(FROM_HF_ACTIVATION)}')
    eps = config.get('layer_norm_eps', 1e-6)
    fixed = {'num_heads': config.get('num_attention_heads', 12), 'img_size': config.get('image_size', 224)}
    defaults = {'activation': FROM_HF_ACTIVATION[activation], 'norm_eps': eps, 'final_norm_eps': eps}
    labels = config.get('id2label')
    class_names = [labels[key] for key in sorted(labels, key=int)] if labels else None
    return fixed, defaults, class_names


def read_hf_timesformer(state_dict, extras, sidecar, path):
    """A transformers TimesformerForVideoClassification or TimesformerModel, with its config.json if any."""
    converted = convert_hf_timesformer(state_dict)
    from_weights = infer_config(converted, path)
    attention_type = (sidecar or {}).get('attention_type', from_weights.get('attention_type'))
    if attention_type == 'space_only':
        raise WeightLoadError(f"{path}: transformers' space_only TimeSformer classifies every frame on its "
                              f"own; ours averages the frames before the final norm and cannot reproduce it")
    if sidecar is None:
        return SourceWeights(path, 'hf-timesformer', converted, from_weights, source_defaults(converted),
                             preprocessing=hf_preprocessing(path.parent, from_weights['img_size']))
    fixed, defaults, class_names = hf_common(sidecar, path, 'gelu')
    fixed.update(arch='timesformer', num_frames=sidecar.get('num_frames', 8),
                 attention_type=sidecar.get('attention_type', 'divided_space_time'))
    return SourceWeights(path, 'hf-timesformer', converted, merge_fixed(from_weights, fixed, path),
                         defaults, class_names, preprocessing=hf_preprocessing(path.parent, fixed['img_size']))


def read_hf_vivit(state_dict, extras, sidecar, path):
    """A transformers VivitForVideoClassification or VivitModel and its config.json."""
    if sidecar is None:
        raise WeightLoadError(f'{path}: a transformers ViViT needs its config.json beside it '
                              f'(frames and image size order its position table)')
    tubelet = sidecar.get('tubelet_size', [2, 16, 16])
    if tubelet[1] != tubelet[2]:
        raise WeightLoadError(f'{path}: tubelet_size {tubelet} is not square in space')
    frames = sidecar.get('num_frames', 32)
    converted = convert_hf_vivit(state_dict, frames // tubelet[0])
    fixed, defaults, class_names = hf_common(sidecar, path, 'gelu_fast')
    fixed.update(arch='vivit', attention_type='joint_space_time', pos_emb_type='joint', num_frames=frames)
    from_weights = infer_config(converted, path, pos_emb_type='joint')
    return SourceWeights(path, 'hf-vivit', converted, merge_fixed(from_weights, fixed, path),
                         defaults, class_names, preprocessing=hf_preprocessing(path.parent, fixed['img_size']))


def _decoder_note(state_dict, encoder_prefix):
    """The summary line's word on a pretraining checkpoint's decoder, which an encoder leaves out."""
    dropped = [key for key in state_dict if PRETRAINING_DECODER.match(key.removeprefix(encoder_prefix))]
    return (f'the pretraining decoder left out ({len(dropped)} tensors)',) if dropped else ()


def read_hf_videomae(state_dict, extras, sidecar, path):
    """A transformers VideoMAEForVideoClassification, VideoMAEModel or VideoMAEForPreTraining (its
    encoder) and its config.json."""
    if sidecar is not None and not sidecar.get('use_mean_pooling', True):
        raise WeightLoadError(f"{path}: use_mean_pooling false (transformers then classifies the first patch "
                              f"token) is not supported; VideoMAE's classifiers mean-pool")
    converted = convert_hf_videomae(state_dict)
    from_weights = infer_config(converted, path, arch='videomae')
    sidecar = sidecar or {}
    fixed, defaults, class_names = hf_common(sidecar, path, 'gelu')
    # transformers builds fc_norm without its config's layer_norm_eps: LayerNorm's default.
    defaults.update(norm_eps=sidecar.get('layer_norm_eps', 1e-12), final_norm_eps=1e-5)
    fixed.update(num_frames=sidecar.get('num_frames', 16))
    settings = hf_preprocessing(path.parent, fixed['img_size'], VIDEOMAE_PREPROCESSING)
    if not (path.parent / HF_SAMPLING_FILE).is_file():  # our export's file records the views; the Hub's do not
        settings = videomae_views(settings, from_weights.get('num_classes'), class_names, path)
    return SourceWeights(path, 'hf-videomae', converted, merge_fixed(from_weights, fixed, path), defaults,
                         class_names, missing_ok=('backbone.norm.weight', 'backbone.norm.bias'),
                         preprocessing=settings,
                         notes=_decoder_note(state_dict, 'videomae.'))


def read_videomae(state_dict, extras, sidecar, path):
    """MCG-NJU VideoMAE: a run_class_finetuning.py checkpoint or a pretraining one (`encoder.`)."""
    converted = convert_videomae(state_dict)
    if 'backbone.norm.weight' not in converted and 'head.fc.weight' in converted:
        raise WeightLoadError(f"{path}: a VideoMAE classifier without fc_norm (use_mean_pooling False) is not "
                              f"supported; VideoMAE's classifiers mean-pool")
    fixed = infer_config(converted, path, arch='videomae')
    # MCG-NJU's files record neither frames nor image size: its standard 16 x 224 unless overridden.
    return SourceWeights(path, 'videomae', converted, fixed, source_defaults(converted, num_frames=16, img_size=224),
                         missing_ok=('backbone.norm.weight', 'backbone.norm.bias'),
                         preprocessing=mcg_videomae_preprocessing(fixed.get('num_classes'), path),
                         notes=_decoder_note(state_dict, 'encoder.'))


def read_hf_vjepa2(state_dict, extras, sidecar, path):
    """A transformers VJEPA2ForVideoClassification or VJEPA2Model (an encoder, whose predictor is left
    out and whose pooler then builds fresh) and its config.json."""
    converted = convert_hf_vjepa2(state_dict)
    from_weights = infer_config(converted, path, arch='vjepa2')
    sidecar = sidecar or {}
    fixed, defaults, class_names = hf_common(sidecar, path, 'gelu')
    fixed.update(num_heads=sidecar.get('num_attention_heads', 16), img_size=sidecar.get('crop_size', 256),
                 num_frames=sidecar.get('frames_per_clip', 64))
    if 'head.pooler.query' not in converted:
        fixed['num_pooler_layers'] = sidecar.get('num_pooler_layers', 3)
    predictor = sum(key.removeprefix('vjepa2.').startswith('predictor.') for key in state_dict)
    notes = (f'the pretraining predictor left out ({predictor} tensors)',) if predictor else ()
    return SourceWeights(path, 'hf-vjepa2', converted, merge_fixed(from_weights, fixed, path), defaults,
                         class_names, notes=notes,
                         preprocessing=hf_preprocessing(path.parent, fixed['img_size'], VJEPA2_PREPROCESSING),
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
    (OUR_FORMAT, r'(model\.)?backbone\.', read_ours),
    ('original', r'(model\.)?transformer_layers\.|cls_head\.cls_head\.', read_original),
    ('hf-videomae', _is_hf_videomae, read_hf_videomae),
    ('hf-vjepa2', r'(vjepa2\.)?encoder\.layer\.\d+\.norm1\.', read_hf_vjepa2),
    ('videomae', _is_videomae, read_videomae),
    ('hf-timesformer', r'(timesformer\.)?encoder\.layer\.\d+\.attention\.attention\.qkv\.', read_hf_timesformer),
    ('hf-vivit', r'(vivit\.)?(layers\.\d+\.attention\.q_proj|encoder\.layer\.\d+\.attention\.attention\.query)\.',
     read_hf_vivit),
    ('mae', r'encoder\.blocks\.\d+\.', read_mae),
    # Official TimeSformer's vit.py wraps timm's VisionTransformer as `model`.
    ('official-timesformer', r'model\.blocks\.\d+\.attn\.qkv\.', read_official),
    ('timm', r'blocks\.\d+\.attn\.qkv\.', read_timm),
    ('jax-vit', r'Transformer/encoderblock_\d+/', read_jax_vit),
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
