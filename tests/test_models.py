"""TimeSformer and ViViT: shapes, gradients, determinism, attention maths and divided semantics,
construction the original repository's way, and the attention weights the explicit path keeps."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from preprocessing import Preprocessing
from layouts import original_layout, random_state
from reference import original_forward, randomise_, vit_features
from transformer import Attention, sine_cosine_table
from utils import record_attention, set_attention_fused, write_csv
from video_transformer import (TimeSformer, VideoClassifier, VideoTransformerConfig, ViViT, timesformer_base_patch16_224,
                               timesformer_tiny, vivit_base_patch16_224, vivit_tiny)
from weight_formats import convert_original, strip_prefix

# (arch, attention_type), and ViViT's factorised encoder in the original repository's 37e1801 layout.
VARIANTS = [('timesformer', name) for name in TimeSformer.attention_types] + \
           [('vivit', name) for name in ViViT.attention_types] + [('vivit', 'fact_encoder/37e1801')]


def tiny_config(arch, attention_type, **overrides):
    if attention_type == 'fact_encoder/37e1801':
        return vivit_tiny(fact_encoder_attention='divided', **overrides)
    preset = timesformer_tiny if arch == 'timesformer' else vivit_tiny
    return preset(attention_type=attention_type, **overrides)


def video(config, batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, config.num_frames, config.in_channels, config.img_size, config.img_size)
    return torch.randn(shape, generator=generator)


@pytest.mark.parametrize('arch,attention_type', VARIANTS)
def test_logits_shape_and_every_parameter_gets_a_gradient(arch, attention_type):
    config = tiny_config(arch, attention_type, num_classes=5)
    model = randomise_(VideoClassifier(config))
    logits = model(video(config))
    assert logits.shape == (2, 5)
    assert torch.isfinite(logits).all()
    logits.square().sum().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, f'{name} is not reached by backward'
        assert parameter.grad.abs().sum() > 0, f'{name} gets a zero gradient'


@pytest.mark.parametrize('arch,attention_type', VARIANTS)
def test_each_video_is_classified_independently_of_its_batch(arch, attention_type):
    config = tiny_config(arch, attention_type)
    model = randomise_(VideoClassifier(config)).eval()
    clips = video(config, batch=3)
    with torch.no_grad():
        together = model(clips)
        alone = torch.cat([model(clips[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('arch,attention_type', VARIANTS)
def test_eval_is_deterministic_and_training_repeats_under_a_seed(arch, attention_type):
    config = tiny_config(arch, attention_type, dropout_p=0.2, drop_path_rate=0.3)
    model = randomise_(VideoClassifier(config))
    clips = video(config)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(clips), model(clips), rtol=0, atol=0)
    model.train()
    outputs = []
    for _ in range(2):
        torch.manual_seed(7)
        outputs.append(model(clips))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)
    with torch.no_grad():
        assert not torch.allclose(model(clips), model.eval()(clips)), 'dropout had no effect in training'


@pytest.mark.parametrize('arch,attention_type', VARIANTS)
def test_fixed_sine_cosine_positions_are_buffers_not_weights(arch, attention_type):
    """Fails if a fixed table is saved with the weights, holds other values than the sine-cosine
    table, or any part of it (the class token's row, the other rows) is never added to the tokens:
    zeroing that part must change the logits."""
    config = tiny_config(arch, attention_type, use_learnable_pos_emb=False)
    model = randomise_(VideoClassifier(config)).eval()
    assert not [name for name in model.state_dict() if name.endswith(('pos_embed', 'time_embed'))]
    clips = video(config)
    with torch.no_grad():
        logits = model(clips)
        for name, rows in config.position_table_rows.items():
            table = getattr(model.backbone, name)
            assert name in dict(model.backbone.named_buffers())
            assert torch.equal(table, sine_cosine_table(rows, config.embed_dims))
            kept = table.clone()
            for part in (slice(0, 1), slice(1, None)):
                table[:, part] = 0
                assert not torch.allclose(model(clips), logits, atol=1e-3), f'{name}[{part}] is not added'
                table.copy_(kept)
    assert logits.shape == (2, config.num_classes)


def test_sdpa_equals_explicit_softmax_reference_in_float64():
    torch.manual_seed(0)
    attention = Attention(dim=24, num_heads=3).double().eval()
    x = torch.randn(4, 10, 24, dtype=torch.float64)
    q, k, v = attention.qkv(x).view(4, 10, 3, 3, 8).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1)
    reference = attention.proj((weights @ v).transpose(1, 2).reshape(4, 10, 24))
    torch.testing.assert_close(attention(x), reference, rtol=1e-12, atol=1e-12)
    attention.fused = False
    torch.testing.assert_close(attention(x), reference, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('arch,attention_type', VARIANTS)
def test_whole_model_gives_the_same_logits_on_both_attention_paths(arch, attention_type):
    config = tiny_config(arch, attention_type)
    model = randomise_(VideoClassifier(config)).double().eval()
    clips = video(config).double()
    fused = model(clips)
    explicit = set_attention_fused(model, False)(clips)
    torch.testing.assert_close(fused, explicit, rtol=1e-10, atol=1e-10)


# Our divided block's spatial operator and FFN in timm's ViT names.
TIMM_NAMES = {'spatial_attn.norm.': 'norm1.', 'spatial_attn.attn.': 'attn.', 'ffn.norm.': 'norm2.',
              'ffn.fc1.': 'mlp.fc1.', 'ffn.fc2.': 'mlp.fc2.'}


def image_vit_features(state, config, image):
    """The independent ViT forward over the backbone's spatial weights: image (B, C, H, W) -> (B, D)."""
    vit = {}
    for key, value in state.items():
        if 'temporal' in key or key == 'time_embed':
            continue
        for ours, timm in TIMM_NAMES.items():
            key = key.replace(ours, timm)
        vit[key] = value
    return vit_features(vit, image, config.num_heads, config.norm_eps, config.final_norm_eps)


def test_divided_timesformer_on_a_static_video_is_an_image_vit_when_time_is_switched_off():
    config = timesformer_tiny(num_frames=3)
    backbone = randomise_(TimeSformer(config)).double().eval()
    with torch.no_grad():
        backbone.time_embed.zero_()
        for block in backbone.blocks:
            block.temporal_attn.temporal_fc.weight.zero_()
            block.temporal_attn.temporal_fc.bias.zero_()
    frame = torch.randn(2, 3, config.img_size, config.img_size, dtype=torch.float64)
    static = frame[:, None].expand(-1, config.num_frames, -1, -1, -1)
    state = {name: tensor.clone() for name, tensor in backbone.state_dict().items()}
    torch.testing.assert_close(backbone(static), image_vit_features(state, config, frame),
                               rtol=1e-10, atol=1e-10)
    with torch.no_grad():
        backbone.blocks[0].temporal_attn.temporal_fc.weight.normal_(std=0.2)
    assert not torch.allclose(backbone(static), image_vit_features(state, config, frame)), \
        'the property should break once the temporal branch contributes'


def test_drop_path_rises_linearly_over_depth():
    config = timesformer_tiny(num_transformer_layers=5, drop_path_rate=0.4)
    rates = [block.ffn.drop_path.drop_prob for block in TimeSformer(config).blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])


@pytest.mark.parametrize('shape,wrong', [
    ((2, 3, 3, 32, 32), 'frames'),
    ((2, 4, 3, 48, 48), 'size'),
    ((2, 4, 1, 32, 32), 'channels'),
    ((4, 3, 32, 32), 'rank'),
    ((2, 3, 4, 32, 32), 'channels before time'),
])
def test_wrong_input_shape_names_expected_and_received(shape, wrong):
    model = VideoClassifier(timesformer_tiny())
    with pytest.raises(ValueError) as error:
        model(torch.zeros(shape))
    message = str(error.value)
    assert '(B, 4, 3, 32, 32)' in message and str(shape) in message, wrong


def test_integer_video_is_rejected_with_a_clear_error():
    with pytest.raises(ValueError, match='float video'):
        VideoClassifier(timesformer_tiny())(torch.zeros(1, 4, 3, 32, 32, dtype=torch.uint8))


def test_a_video_of_another_float_dtype_is_a_value_error_outside_autocast():
    model = VideoClassifier(timesformer_tiny()).eval()
    with pytest.raises(ValueError, match=r'float32 weights and expects a torch.float32 video, got torch.float64'):
        model(torch.zeros(1, 4, 3, 32, 32, dtype=torch.float64))
    assert model.double()(torch.zeros(1, 4, 3, 32, 32, dtype=torch.float64)).dtype == torch.float64
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert model.float()(torch.zeros(1, 4, 3, 32, 32, dtype=torch.bfloat16)).shape == (1, 4)


def test_without_a_time_table_any_frame_count_is_taken():
    space_only = randomise_(VideoClassifier(timesformer_tiny(attention_type='space_only'))).eval()
    clips = video(space_only.config, batch=1)
    with torch.no_grad():
        # Frames are averaged: a clip and the same clip twice over give the same logits.
        torch.testing.assert_close(space_only(clips), space_only(clips.repeat(1, 2, 1, 1, 1)), atol=1e-6, rtol=0)
        assert space_only(clips[:, :1]).shape == (1, 4)
    for config in (timesformer_tiny(), vivit_tiny(), timesformer_tiny(attention_type='space_only', conv_type='Conv3d')):
        with pytest.raises(ValueError, match='expects a video'):
            VideoClassifier(config)(torch.zeros(1, 3, 3, 32, 32))


@pytest.mark.parametrize('changes,match', [
    ({'arch': 'timesformer', 'attention_type': 'fact_encoder'}, 'TimeSformer attention_type'),
    ({'arch': 'resnet'}, 'arch must be one of'),
    ({'img_size': 30}, 'not a multiple of patch_size'),
    ({'arch': 'vivit', 'conv_type': 'Conv3d', 'num_frames': 5}, 'not a multiple of tube_size'),
    ({'num_heads': 3}, 'not divisible by num_heads'),
    ({'pos_emb_type': 'joint', 'attention_type': 'space_only'}, "pos_emb_type 'joint'"),
])
def test_inconsistent_configs_are_refused(changes, match):
    with pytest.raises(ValueError, match=match):
        VideoClassifier(VideoTransformerConfig(**{**timesformer_tiny().to_dict(), **changes}))


def test_a_config_builds_only_its_own_architecture():
    with pytest.raises(ValueError, match="arch 'vivit' builds ViViT, not TimeSformer"):
        TimeSformer(vivit_tiny(attention_type='joint_space_time'))


def test_sine_cosine_table_matches_the_original_formula_in_float64():
    num_positions, dim = 1569, 768
    angles = np.array([[position / np.power(10000, 2 * (channel // 2) / dim) for channel in range(dim)]
                       for position in range(num_positions)])
    angles[:, 0::2] = np.sin(angles[:, 0::2])
    angles[:, 1::2] = np.cos(angles[:, 1::2])
    table = sine_cosine_table(num_positions, dim)
    assert table.shape == (1, num_positions, dim)
    torch.testing.assert_close(table[0].double(), torch.from_numpy(angles), rtol=0, atol=1e-6)


def test_unknown_activation_is_refused():
    with pytest.raises(ValueError, match='activation must be one of'):
        timesformer_tiny(activation='relu')


def test_dropout_follows_spatial_and_temporal_positions_like_the_original():
    """With everything after the positions silenced, training-mode dropout is applied twice."""
    config = timesformer_tiny(dropout_p=0.5)
    backbone = TimeSformer(config).train()
    patches = torch.ones(1, config.num_time_steps, config.num_patches, config.embed_dims)
    with torch.no_grad():
        backbone.cls_token.zero_()
        backbone.pos_embed.zero_()
        backbone.time_embed.fill_(1.0)
        torch.manual_seed(0)
        tokens = backbone.tokens(patches)
    # A patch value 1 is dropped (0) or scaled to s = 1 / (1 - p), gets +1 from the time table and
    # is dropped or scaled again: 0, s (dropped first) or (s + 1) s (kept twice).
    scale = 1 / (1 - config.dropout_p)
    values = set(torch.round(tokens[0, 1:].flatten(), decimals=4).tolist())
    assert values == {0.0, scale, (scale + 1) * scale}


def test_write_csv_never_leaves_a_truncated_file(tmp_path):
    path = tmp_path / 'out' / 'rows.csv'
    write_csv([{'config': 'base', 'seconds': 1.5}], path)
    with pytest.raises(ValueError):  # a row with a key the header lacks fails halfway through
        write_csv([{'config': 'small', 'seconds': 0.5}, {'config': 'x', 'extra': 1}], path)
    assert path.read_text().splitlines() == ['config,seconds', 'base,1.5']
    assert [file.name for file in path.parent.iterdir()] == ['rows.csv']


# ---------------------------------------------------------------------------------------------
# Construction: the original repository's keyword arguments, the meta device


ORIGINAL_TIMESFORMER = dict(num_frames=4, img_size=32, patch_size=8, embed_dims=32, num_heads=2, num_transformer_layers=2,
                        in_channels=3, conv_type='Conv2d', dropout_p=0.0, attention_type='divided_space_time',
                        use_learnable_pos_emb=True, return_cls_token=True)


def test_the_original_keyword_arguments_build_the_same_backbone_as_a_config():
    by_keywords = randomise_(TimeSformer(**ORIGINAL_TIMESFORMER)).eval()
    by_config = TimeSformer(timesformer_tiny(drop_path_rate=0.1)).eval()
    assert by_keywords.config == by_config.config.replace(num_classes=400)
    by_config.load_state_dict(by_keywords.state_dict())
    clips = video(by_config.config)
    with torch.no_grad():
        features = by_keywords(clips)
        assert torch.equal(features, by_config(clips))
    # The final-normed class token, as the original repository's forward returns: under the original repository's own head, the
    # the original repository's forward computed independently (reference.py) from its checkpoint's keys. Fails if the
    # keyword-built backbone pools otherwise, skips the final norm or runs its blocks differently.
    state = random_state(original_layout('divided_space_time'))
    original_built = TimeSformer(**ORIGINAL_TIMESFORMER, norm_eps=1e-5).eval()  # the original repository's blocks' eps
    original_built.load_state_dict(strip_prefix({key: value for key, value in convert_original(state).items()
                                             if key.startswith('backbone.')}, 'backbone.'))
    with torch.no_grad():
        logits = F.linear(original_built(clips), state['cls_head.cls_head.weight'], state['cls_head.cls_head.bias'])
    torch.testing.assert_close(logits, original_forward(state, clips, 'divided_space_time', 2), atol=1e-5, rtol=0)


def test_vivit_keywords_take_the_original_vivit_defaults():
    config = ViViT(num_frames=4, img_size=32, patch_size=8, embed_dims=32, num_heads=2,
                   num_transformer_layers=2).config
    assert (config.arch, config.conv_type, config.tube_size, config.attention_type) == \
        ('vivit', 'Conv3d', 2, 'fact_encoder')


@pytest.mark.parametrize('build, message', [
    # The original repository lost dropout_ratio silently in **kwargs.
    (lambda: TimeSformer(**ORIGINAL_TIMESFORMER, dropout_ratio=0.1), r"unexpected keyword arguments \['dropout_ratio'\]"),
    (lambda: ViViT(vivit_tiny(), num_frames=8), 'a config or keyword arguments, not both'),
    # The norms are nn.LayerNorm (eps norm_eps and final_norm_eps); no keyword picks another.
    (lambda: TimeSformer(**ORIGINAL_TIMESFORMER, norm_layer=nn.BatchNorm1d), r"unexpected keyword arguments \['norm_layer'\]"),
])
def test_keyword_mistakes_are_type_errors_naming_them(build, message):
    with pytest.raises(TypeError, match=message):
        build()


@pytest.mark.parametrize('arch,attention_type', VARIANTS + [('vivit', 'sine-cosine')])
def test_a_model_builds_on_the_meta_device(arch, attention_type):
    config = tiny_config(arch, 'fact_encoder' if attention_type == 'sine-cosine' else attention_type,
                         use_learnable_pos_emb=attention_type != 'sine-cosine', drop_path_rate=0.2)
    with torch.device('meta'):
        model = VideoClassifier(config)
    assert {tensor.device.type for tensor in [*model.parameters(), *model.buffers()]} == {'meta'}
    assert [block.ffn.drop_path.drop_prob for block in model.backbone.blocks][-1] > 0


def test_classifier_keeps_its_preprocessing():
    preprocessing = Preprocessing(num_frames=4, img_size=32)
    assert VideoClassifier(timesformer_tiny(), preprocessing=preprocessing).preprocessing is preprocessing
    assert VideoClassifier(timesformer_tiny()).preprocessing is None
    with pytest.raises(TypeError, match='Preprocessing'):
        VideoClassifier(timesformer_tiny(), preprocessing=preprocessing.to_dict())


@pytest.mark.parametrize('preset', [timesformer_base_patch16_224, vivit_base_patch16_224])
def test_presets_use_one_layernorm_eps(preset):
    config = preset()
    assert config.norm_eps == config.final_norm_eps == 1e-6


# ---------------------------------------------------------------------------------------------
# Attention weights for maps


def test_recorded_attention_weights_are_the_explicit_softmax_and_change_no_logit():
    model = randomise_(VideoClassifier(timesformer_tiny())).double().eval()
    clips = video(model.config).double()
    inputs = {}
    for name, module in model.named_modules():
        if isinstance(module, Attention):
            module.register_forward_pre_hook(lambda module, args, name=name: inputs.__setitem__(name, args[0]))
    with torch.no_grad():
        fused = model(clips)
        with record_attention(model) as attentions:
            recorded = model(clips)
            weights = {name: attention.weights for name, attention in attentions.items()}
    torch.testing.assert_close(recorded, fused, rtol=1e-12, atol=1e-12)
    assert sorted(weights) == sorted(inputs) and all(value is not None for value in weights.values())
    for name, x in inputs.items():
        attention = model.get_submodule(name)
        q, k, _ = rearrange(F.linear(x, attention.qkv.weight, attention.qkv.bias), 'n l (three h e) -> three n h l e',
                            three=3, h=model.config.num_heads)
        expected = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        torch.testing.assert_close(weights[name], expected, rtol=1e-12, atol=1e-12)
    # Per frame with the class token first: (B*T, heads, 1 + P, 1 + P); per patch over time: (B*P, heads, T, T).
    assert weights['backbone.blocks.0.spatial_attn.attn'].shape == (2 * 4, 2, 1 + 16, 1 + 16)
    assert weights['backbone.blocks.0.temporal_attn.attn'].shape == (2 * 16, 2, 4, 4)
    assert all(attention.weights is None and not attention.keep_weights and attention.fused
               for attention in attentions.values())


@pytest.mark.parametrize('config', [timesformer_tiny(attention_type='space_only'), vivit_tiny()],
                         ids=['space_only', 'fact_encoder'])
def test_recorded_spatial_attention_is_one_map_per_frame(config):
    """Reversing the first video's token frames reverses its maps and leaves the second video's
    alone. Fails if the maps mix frames or videos, or are grouped time-major ((t b), not (b t))."""
    model = randomise_(VideoClassifier(config)).eval()
    clips = video(config)
    steps = config.num_time_steps
    reversed_clips = clips.clone()
    tubelets = rearrange(clips[0], '(s f) c h w -> s f c h w', s=steps)
    reversed_clips[0] = rearrange(tubelets.flip(0), 's f c h w -> (s f) c h w')

    def spatial_maps(clip):
        with torch.no_grad(), record_attention(model) as attentions:
            model(clip)
            return rearrange(attentions['backbone.blocks.1.attn.attn'].weights, '(b s) ... -> b s ...', b=2)

    spatial, reversed_spatial = spatial_maps(clips), spatial_maps(reversed_clips)
    assert spatial.shape == (2, steps, 2, 1 + 16, 1 + 16) and steps > 1
    torch.testing.assert_close(reversed_spatial[0], spatial[0].flip(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(reversed_spatial[1], spatial[1], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(spatial[0, 0], spatial[0, 1], atol=1e-3)  # the frames' maps differ
