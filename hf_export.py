"""Writing a transformers TimesformerForVideoClassification folder (config.json +
model.safetensors) that transformers' `from_pretrained` loads; our own folder is our_format's."""
from our_format import write_folder
from weight_formats import WeightLoadError, convert_to_hf_timesformer


def _named_tables(model):
    """Classifier state dict, with fixed sine-cosine tables included (they are not persistent)."""
    state_dict = model.state_dict()
    for name in ('pos_embed', 'time_embed'):
        table = getattr(model.backbone, name)
        if table is not None:
            state_dict[f'backbone.{name}'] = table
    return state_dict


def hf_timesformer_config(config, class_names=None):
    """transformers' TimesformerConfig fields (a dict) for our TimeSformer `config`; WeightLoadError
    for one transformers cannot express."""
    activation = {'gelu': 'gelu', 'gelu_tanh': 'gelu_pytorch_tanh', 'quick_gelu': 'quick_gelu'}[config.activation]
    unsupported = [
        (config.conv_type == 'Conv2d', 'Conv2d patches'),
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


def save_hf_timesformer(model, directory):
    """Write a TimeSformer VideoClassifier as a transformers TimesformerForVideoClassification
    folder (config.json + model.safetensors) that `from_pretrained` loads."""
    hf_config = hf_timesformer_config(model.config, model.class_names)
    tensors = {key: value.detach().contiguous()
               for key, value in convert_to_hf_timesformer(_named_tables(model)).items()}
    return write_folder(directory, tensors, hf_config)
