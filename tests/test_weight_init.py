"""Starting points: a new model initialised from other weights by a separate call after building
(image models inflated, video models as they are), and rebuilding that never reads them again."""
import argparse
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import repeat

from layouts import (CLASSES, DIM, FRAMES, GRID, HEADS, LAYERS, PATCH, jax_layout, original_layout, randn,
                     random_state, save_lightning, timm_layout, video, write_vit)
from model_loading import load_model
from our_format import save_weights
from reference import vit_features
from video_transformer import TimeSformer, VideoClassifier, VideoTransformerConfig, ViViT, timesformer_tiny, vivit_tiny
from weight_formats import convert_mae
from weight_init import init_from_pretrained_


@pytest.mark.parametrize('container', ['pth', 'safetensors', 'npz', 'original-vit'])
@pytest.mark.parametrize('copy_strategy', ['repeat', 'set_zero'])
def test_timesformer_from_an_image_vit_reproduces_it_on_a_static_video(tmp_path, container, copy_strategy):
    vit = random_state(timm_layout())
    model = init_from_pretrained_(TimeSformer(timesformer_tiny()), write_vit(vit, tmp_path, container),
                                  copy_strategy=copy_strategy).eval()
    frame = video(batch=2, frames=1)[:, 0]
    with torch.no_grad():
        features = model(repeat(frame, 'b c h w -> b t c h w', t=FRAMES))
    torch.testing.assert_close(features, vit_features(vit, frame, HEADS), atol=1e-5, rtol=0)
    block = model.blocks[0]
    copied = torch.equal(block.temporal_attn.attn.qkv.weight, block.spatial_attn.attn.qkv.weight)
    assert copied == (copy_strategy == 'repeat')
    assert block.temporal_attn.attn.qkv.weight.abs().min() > 0 and block.temporal_attn.norm.weight.all()
    assert not block.temporal_attn.temporal_fc.weight.any()


@pytest.mark.parametrize('copy_strategy', ['repeat', 'set_zero'])
@pytest.mark.parametrize('config', [timesformer_tiny(), vivit_tiny(), vivit_tiny(fact_encoder_attention='divided')],
                         ids=['timesformer', 'vivit', 'vivit-37e1801'])
def test_temporal_layers_inflated_from_a_vit_learn(tmp_path, config, copy_strategy):
    # The original repository's set_zero zeroed every copied weight: no gradient ever reached those layers.
    path = write_vit(random_state(timm_layout()), tmp_path, 'pth')
    model = init_from_pretrained_(VideoClassifier(config), path, copy_strategy=copy_strategy)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    clip = video(frames=model.config.num_frames)
    for _ in range(3):  # the zero projection opens the branch to gradients after one step
        optimizer.zero_grad()
        F.cross_entropy(model(clip), torch.tensor([0, 1])).backward()
        optimizer.step()
    temporal = {name: parameter.grad for name, parameter in model.named_parameters() if 'temporal' in name}
    stuck = [name for name, grad in temporal.items() if not grad.any()]
    assert temporal and not stuck


@pytest.mark.parametrize('container', ['pth', 'npz'])
def test_in21k_representation_layer_is_ignored(tmp_path, container):
    # ImageNet-21k ViTs carry a pre_logits Linear before their head: timm and JAX names.
    vit = random_state(timm_layout())
    pre_logits = random_state({'weight': (DIM, DIM), 'bias': (DIM,)}, seed=5)
    if container == 'pth':
        torch.save({**vit, 'pre_logits.fc.weight': pre_logits['weight'], 'pre_logits.fc.bias': pre_logits['bias']},
                   tmp_path / 'vit.pth')
    else:
        np.savez(tmp_path / 'vit.npz', **jax_layout(vit), **{'pre_logits/kernel': pre_logits['weight'].T.numpy(),
                                                             'pre_logits/bias': pre_logits['bias'].numpy()})
    model = init_from_pretrained_(TimeSformer(timesformer_tiny()), tmp_path / f'vit.{container}').eval()
    frame = video(batch=2, frames=1)[:, 0]
    with torch.no_grad():
        features = model(repeat(frame, 'b c h w -> b t c h w', t=FRAMES))
    torch.testing.assert_close(features, vit_features(vit, frame, HEADS), atol=1e-5, rtol=0)


def test_space_only_timesformer_from_a_vit_reproduces_it(tmp_path):
    vit = random_state(timm_layout())
    model = init_from_pretrained_(TimeSformer(timesformer_tiny(attention_type='space_only')),
                                  write_vit(vit, tmp_path, 'pth')).eval()
    frame = video(batch=1, frames=1)[:, 0]
    with torch.no_grad():
        features = model(repeat(frame, 'b c h w -> b t c h w', t=FRAMES))
    torch.testing.assert_close(features, vit_features(vit, frame, HEADS), atol=1e-5, rtol=0)


@pytest.mark.parametrize('extend_strategy', ['temporal_avg', 'center_frame'])
def test_vivit_from_a_vit_inflates_patches_and_copies_temporal_layers(tmp_path, extend_strategy):
    vit = random_state(timm_layout())
    model = init_from_pretrained_(ViViT(vivit_tiny(num_time_transformer_layers=2, img_size=48)),
                                  write_vit(vit, tmp_path, 'pth'), copy_strategy='repeat',
                                  extend_strategy=extend_strategy).eval()
    kernel = model.patch_embed.proj.weight
    assert kernel.shape == (DIM, 3, 2, PATCH, PATCH)
    torch.testing.assert_close(kernel.sum(dim=2), vit['patch_embed.proj.weight'])
    if extend_strategy == 'center_frame':
        assert not kernel[:, :, 0].any()
    for index in range(2):
        for name, value in model.temporal_blocks[index].state_dict().items():
            assert torch.equal(value, model.blocks[index].state_dict()[name])
    # set_zero: the temporal layers keep their init and start as the identity.
    fresh = init_from_pretrained_(ViViT(vivit_tiny(num_time_transformer_layers=2, img_size=48)),
                                  tmp_path / 'vit.pth', copy_strategy='set_zero').eval()
    block = fresh.temporal_blocks[0]
    assert not block.attn.attn.proj.weight.any() and not block.ffn.fc2.weight.any()
    assert not torch.equal(block.attn.attn.qkv.weight, fresh.blocks[0].attn.attn.qkv.weight)
    tokens = torch.randn(2, 3, DIM)
    torch.testing.assert_close(block(tokens), tokens)
    assert model.pos_embed.shape == (1, 1 + 36, DIM)
    torch.testing.assert_close(model.pos_embed[:, 0], vit['pos_embed'][:, 0])
    assert not model.time_embed.any()


def test_joint_vivit_from_a_vit_spreads_positions_over_time(tmp_path):
    vit = random_state(timm_layout())
    model = init_from_pretrained_(ViViT(vivit_tiny(attention_type='joint_space_time', pos_emb_type='joint', img_size=48)),
                                  write_vit(vit, tmp_path, 'safetensors'))
    table = model.pos_embed
    assert table.shape == (1, 1 + 36 * 2, DIM) and model.time_embed is None
    torch.testing.assert_close(table[:, 0], vit['pos_embed'][:, 0])
    assert torch.equal(table[:, 1::2], table[:, 2::2])  # both time steps of a patch share its row


def test_mae_encoder_initialises_the_backbone(tmp_path, caplog):
    generator = torch.Generator().manual_seed(3)
    encoder = {('encoder.' + key): value for key, value in random_state(timm_layout(), seed=3).items()
               if not key.startswith(('head.', 'cls_token', 'pos_embed'))}
    q_bias, v_bias = randn(DIM, generator=generator), randn(DIM, generator=generator)
    for index in range(LAYERS):
        del encoder[f'encoder.blocks.{index}.attn.qkv.bias']
        encoder[f'encoder.blocks.{index}.attn.q_bias'] = q_bias
        encoder[f'encoder.blocks.{index}.attn.v_bias'] = v_bias
    decoder = {'decoder.blocks.0.norm1.weight': randn(16, generator=generator),
               'decoder.norm.weight': randn(16, generator=generator),
               'encoder_to_decoder.weight': randn(16, DIM, generator=generator),
               'mask_token': randn(1, 1, 16, generator=generator)}
    torch.save({'model': {**encoder, **decoder}, 'epoch': 799, 'args': argparse.Namespace(mask_ratio=0.75)},
               tmp_path / 'pretrain_mae_vit_base_mask_0.75_400e.pth')
    torch.manual_seed(0)
    untrained = TimeSformer(timesformer_tiny())
    torch.manual_seed(0)
    with caplog.at_level(logging.INFO):
        model = init_from_pretrained_(TimeSformer(timesformer_tiny()),
                                      tmp_path / 'pretrain_mae_vit_base_mask_0.75_400e.pth')
    assert 'format mae' in caplog.text and "missing keys ['cls_token']" in caplog.text
    assert 'sine-cosine' in caplog.text
    # MAE-pytorch's get_sinusoid_encoding_table, computed as it does in float64 NumPy.
    angles = np.arange(GRID * GRID)[:, None] / np.power(10000, 2 * (np.arange(DIM) // 2) / DIM)
    angles[:, 0::2], angles[:, 1::2] = np.sin(angles[:, 0::2]), np.cos(angles[:, 1::2])
    torch.testing.assert_close(model.pos_embed[0, 1:], torch.tensor(angles, dtype=torch.float))
    assert torch.equal(model.pos_embed[:, 0], untrained.pos_embed[:, 0])
    qkv = model.blocks[1].spatial_attn.attn.qkv
    assert torch.equal(qkv.weight, encoder['encoder.blocks.1.attn.qkv.weight'])
    assert torch.equal(qkv.bias, torch.cat((q_bias, torch.zeros(DIM), v_bias)))
    assert torch.equal(model.norm.weight, encoder['encoder.norm.weight'])
    assert 0 < model.cls_token.std() < 0.05  # truncated normal, not from the file
    converted = convert_mae({**encoder, **decoder})
    assert not any(key.startswith(('decoder', 'encoder_to_decoder', 'mask_token')) for key in converted)


def test_video_checkpoint_as_a_starting_point_drops_its_head(tmp_path):
    """Fails if init_from_pretrained_ loads the checkpoint's head into a classifier (the file's head
    has the model's shape, so a strict load would take it silently) or skips its backbone."""
    state = random_state(original_layout('divided_space_time'))
    path = save_lightning(tmp_path / 'k600.ckpt', state)
    torch.manual_seed(0)
    untrained = VideoClassifier(timesformer_tiny(num_frames=8, num_classes=CLASSES))
    torch.manual_seed(0)
    model = VideoClassifier(timesformer_tiny(num_frames=8, num_classes=CLASSES))
    init_from_pretrained_(model, path)
    assert torch.equal(model.backbone.blocks[1].temporal_attn.temporal_fc.weight,
                       state['model.transformer_layers.layers.1.attentions.0.temporal_fc.weight'])
    assert model.backbone.time_embed.shape == (1, 8, DIM)
    assert model.head.fc.weight.shape == state['cls_head.cls_head.weight'].shape
    assert torch.equal(model.head.fc.weight, untrained.head.fc.weight)
    assert torch.equal(model.head.fc.bias, untrained.head.fc.bias)
    assert not torch.equal(model.head.fc.weight, state['cls_head.cls_head.weight'])


@pytest.mark.parametrize('container', ['pth', 'original-vit'])
def test_the_original_keyword_constructor_starts_from_a_vit(tmp_path, container):
    """As the original repository's users build it, the starting point a separate call: fails if the
    keyword-built backbone and the loader disagree on any layout."""
    vit = random_state(timm_layout())
    keywords = dict(num_frames=FRAMES, img_size=32, patch_size=PATCH, embed_dims=DIM, num_heads=HEADS,
                    num_transformer_layers=LAYERS, attention_type='divided_space_time')
    path = str(write_vit(vit, tmp_path, container))
    with pytest.raises(TypeError, match=r"takes no \['copy_strategy', 'pretrained'\].*init_from_pretrained_"):
        TimeSformer(**keywords, pretrained=path, copy_strategy='repeat')
    model = init_from_pretrained_(TimeSformer(**keywords), path, copy_strategy='repeat').eval()
    frame = video(batch=2, frames=1)[:, 0]
    with torch.no_grad():
        features = model(repeat(frame, 'b c h w -> b t c h w', t=FRAMES))
    assert features.shape == (2, DIM)
    torch.testing.assert_close(features, vit_features(vit, frame, HEADS), atol=1e-5, rtol=0)


def test_a_saved_config_rebuilds_without_its_starting_point(tmp_path):
    """Fails if a config remembers its starting point (rebuilding would read the deleted file, or
    build the starting point's weights again instead of fresh ones), or if the export does not
    carry the weights that came from it."""
    vit_path = write_vit(random_state(timm_layout()), tmp_path, 'pth')
    model = VideoClassifier(timesformer_tiny(num_classes=CLASSES))
    init_from_pretrained_(model, vit_path)
    kept = init_from_pretrained_(TimeSformer(num_frames=FRAMES, img_size=32, patch_size=PATCH, embed_dims=DIM,
                                             num_heads=HEADS, num_transformer_layers=LAYERS), vit_path)
    save_weights(model.eval(), tmp_path / 'export')
    clip = video()
    # Rebuilt from their configs alone: fresh weights, not the starting point's again.
    rebuilt = VideoClassifier(VideoTransformerConfig(**model.config.to_dict())).eval()
    rebuilt_kept = TimeSformer(kept.config).eval()
    qkv = 'blocks.0.spatial_attn.attn.qkv.weight'
    assert not torch.equal(rebuilt.backbone.state_dict()[qkv], model.backbone.state_dict()[qkv])
    assert not torch.equal(rebuilt_kept.state_dict()[qkv], kept.state_dict()[qkv])
    # With the file gone, both configs still build, and the export holds the weights from it.
    vit_path.unlink()
    VideoClassifier(VideoTransformerConfig(**model.config.to_dict()))
    TimeSformer(kept.config)
    with torch.no_grad():
        assert not torch.allclose(rebuilt(clip), model(clip), atol=1e-3)
        assert torch.equal(load_model(tmp_path / 'export')(clip), model(clip))
