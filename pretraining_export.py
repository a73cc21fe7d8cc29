"""A masked-autoencoding checkpoint of ours (pretrain_trainer.LitMaskedAutoencoder) as a transformers
VideoMAEForPreTraining folder: the keys converted, the config written, the decoder kept."""
from our_format import write_folder
from video_transformer import VideoTransformerConfig
from weight_config import current_fields
from weight_files import read_file
from weight_formats import (TO_HF_ACTIVATION, TO_HF_VIDEOMAE_LAYER_RULES, WeightLoadError, convert_to_hf_videomae,
                            rename_keys, split_qkv)


def convert_to_hf_videomae_pretraining(state_dict):
    """Our pretraining state dict (`model.backbone.*`, `decoder.*`) -> VideoMAEForPreTraining's keys.

    The encoder's final norm, unused by the objective, has no place there (use_mean_pooling) and is left out.
    """
    encoder = {key.removeprefix('model.'): value for key, value in state_dict.items()
               if key.startswith('model.backbone.') and not key.startswith('model.backbone.norm.')}
    decoder = {key.removeprefix('decoder.'): value for key, value in state_dict.items() if key.startswith('decoder.')}
    if any(key.endswith('.qkv.bias') for key in decoder):
        raise WeightLoadError("transformers' VideoMAE has no key bias: only qkv_bias 'qv' or 'none' converts")
    decoder_blocks = rename_keys(split_qkv({key: value for key, value in decoder.items() if key.startswith('blocks.')}),
                                 [(r'^blocks\.(\d+)\.', r'decoder.decoder_layers.\1.'), *TO_HF_VIDEOMAE_LAYER_RULES])
    converted = {
        **convert_to_hf_videomae(encoder), **decoder_blocks,
        'encoder_to_decoder.weight': decoder['encoder_to_decoder.weight'], 'mask_token': decoder['mask_token'],
        **{f'decoder.{key}': decoder[key] for key in ('norm.weight', 'norm.bias', 'head.weight', 'head.bias')},
    }
    return converted


def hf_videomae_pretraining_config(config, decoder_dim, decoder_depth, decoder_num_heads, norm_pix_loss):
    """transformers' VideoMAEConfig (as a dict) for our encoder `config` and decoder settings."""
    if config.arch != 'videomae':
        raise WeightLoadError(f"transformers' VideoMAEForPreTraining holds a VideoMAE encoder, not -arch {config.arch}")
    return {
        'architectures': ['VideoMAEForPreTraining'], 'model_type': 'videomae', 'image_size': config.img_size,
        'patch_size': config.patch_size, 'num_channels': config.in_channels, 'num_frames': config.num_frames,
        'tubelet_size': config.tube_size, 'hidden_size': config.embed_dims,
        'num_hidden_layers': config.num_transformer_layers, 'num_attention_heads': config.num_heads,
        'intermediate_size': int(config.embed_dims * config.mlp_ratio),
        'hidden_act': TO_HF_ACTIVATION[config.activation],
        'hidden_dropout_prob': 0.0, 'attention_probs_dropout_prob': 0.0, 'initializer_range': 0.02,
        'layer_norm_eps': config.norm_eps, 'qv_bias': config.qkv_bias == 'qv', 'use_mean_pooling': True,
        'decoder_num_attention_heads': decoder_num_heads, 'decoder_hidden_size': decoder_dim,
        'decoder_num_hidden_layers': decoder_depth, 'decoder_intermediate_size': int(decoder_dim * config.mlp_ratio),
        'norm_pix_loss': norm_pix_loss,
    }


def is_pretraining_checkpoint(path):
    """Whether `path` is a file of our masked-autoencoding runs (hyper-parameter `objective`), told by
    its contents, never its name."""
    try:
        checkpoint = read_file(path)
    except WeightLoadError:  # a folder, or unreadable: for the general reader to name
        return False
    return isinstance(checkpoint, dict) and (checkpoint.get('hyper_parameters') or {}).get('objective') == 'videomae'


def save_hf_videomae_pretraining(path, directory):
    """Our masked-autoencoding checkpoint at `path` -> a transformers VideoMAEForPreTraining folder."""
    checkpoint = read_file(path)  # the one reader of weights files: weights only, errors naming the file
    hparams = checkpoint['hyper_parameters']
    try:  # configs of earlier versions read as load_model reads them
        config = VideoTransformerConfig(**current_fields(hparams['config'], path))
    except (TypeError, ValueError) as error:
        raise WeightLoadError(f'{path}: {error}') from None
    hf_config = hf_videomae_pretraining_config(config, hparams['decoder_dim'], hparams['decoder_depth'],
                                               hparams['decoder_num_heads'], hparams['norm_pix_loss'])
    tensors = convert_to_hf_videomae_pretraining(checkpoint['state_dict'])
    return write_folder(directory, tensors, {'config.json': hf_config})
