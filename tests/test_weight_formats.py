"""Weight formats: tiny checkpoints in each source's exact key layout, randomised everywhere, loaded
and checked against an independent computation of that source's own forward pass (reference.py)."""
import re

import numpy as np
import pytest
import torch

from layouts import (CLASSES, DIM, FRAMES, HEADS, ORIGINAL_VARIANTS, jax_layout, original_layout, random_state,
                     save_lightning, timm_layout, video)
from model_loading import load_model
from reference import official_forward, original_forward
from utils import count_parameters
from video_transformer import VideoClassifier, timesformer_base_patch16_224, vivit_tiny
from weight_fitting import inflate_image_model, resize_position_tables
from weight_formats import convert_hf_vivit, convert_jax_vit, convert_mae, convert_original, convert_timm


def test_original_layout_is_the_released_checkpoints(shared_dir):
    listed = {}
    for line in (shared_dir / 'formats' / 'seed_timesformer_b_k600_keys.txt').read_text().splitlines():
        if line and not line.startswith('#'):
            key, shape = line.split('\t')
            listed[key] = tuple(int(size) for size in shape.strip('()').split(',') if size.strip())
    ours = original_layout('divided_space_time', dim=768, layers=12, size=224, patch=16, frames=8, classes=600)
    # The file lists block 0 only; blocks 1..11 repeat it.
    assert {key: shape for key, shape in ours.items() if not re.search(r'layers\.layers\.[1-9]', key)} == listed
    assert sum(np.prod(shape) for shape in ours.values()) == 121_720_152
    # The README's claim: our TimeSformer-B/16 preset with a 600-class head has the same count.
    with torch.device('meta'):  # shapes only: no 121 M parameters to allocate and initialise
        assert count_parameters(VideoClassifier(timesformer_base_patch16_224(num_classes=600))) == 121_720_152


# ---------------------------------------------------------------------------------------------
# The original repository's checkpoints


@pytest.mark.parametrize('attention_type, tube, commit', [
    *[(attention_type, tube, None) for attention_type, tube in ORIGINAL_VARIANTS],
    ('fact_encoder', 2, '37e1801'),
])
def test_original_checkpoint_matches_the_original_forward(tmp_path, attention_type, tube, commit):
    state = random_state(original_layout(attention_type, tube=tube, commit=commit))
    path = save_lightning(tmp_path / 'seed.ckpt', state)
    model = load_model(path, num_heads=HEADS)
    expected_arch = 'vivit' if tube or attention_type == 'fact_encoder' else 'timesformer'
    assert (model.config.arch, model.config.attention_type) == (expected_arch, attention_type)
    assert model.config.fact_encoder_attention == ('divided' if commit else 'self_attn')
    assert (model.config.norm_eps, model.config.final_norm_eps) == (1e-5, 1e-6)
    clip = video()
    with torch.no_grad():
        logits = model(clip)
        # fact_encoder: the original repository's x[:b, 0] is each video's own first frame only at batch 1.
        expected = torch.cat([original_forward(state, clip[i:i + 1], attention_type, HEADS) for i in range(2)])
    assert logits.shape == (2, CLASSES)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)


def test_the_37e1801_layout_computes_another_function():
    # Keeps the test above honest: the grouped spatial attention and temporal_fc change the numbers.
    state = random_state(original_layout('fact_encoder', tube=2, commit='37e1801'))
    plain = {key: value for key, value in state.items() if '.temporal_fc.' not in key}
    clip = video(batch=1)
    assert not torch.allclose(original_forward(state, clip, 'fact_encoder', HEADS),
                              original_forward(plain, clip, 'fact_encoder', HEADS), atol=1e-3)


def test_space_only_original_checkpoint_takes_any_frame_count(tmp_path):
    """Its checkpoints record no frame count; without a time table the model needs none, and its
    preprocessing says the original's 8 (the README). Fails if a frame count is demanded or the
    preprocessing reads another."""
    state = random_state(original_layout('space_only'))
    model = load_model(save_lightning(tmp_path / 'seed.ckpt', state), num_heads=HEADS)
    assert model.config.num_frames == 8 and model.preprocessing.num_frames == 8
    for frames in (3, FRAMES, 8):
        clip = video(batch=1, frames=frames)
        with torch.no_grad():
            torch.testing.assert_close(model(clip), original_forward(state, clip, 'space_only', HEADS), atol=1e-5, rtol=0)


def test_converters_leave_their_input_alone():
    vit = random_state(timm_layout())
    mae = {'encoder.blocks.0.attn.q_bias': torch.randn(DIM), 'encoder.blocks.0.attn.v_bias': torch.randn(DIM),
           'encoder.blocks.0.attn.qkv.weight': torch.randn(3 * DIM, DIM), 'mask_token': torch.randn(1, 1, DIM)}
    hf = {'vivit.embeddings.position_embeddings': torch.randn(1, 33, DIM), 'vivit.layers.0.attention.q_proj.weight':
          torch.randn(DIM, DIM), 'vivit.layers.0.attention.k_proj.weight': torch.randn(DIM, DIM),
          'vivit.layers.0.attention.v_proj.weight': torch.randn(DIM, DIM)}
    image = {'backbone.' + key: value for key, value in vit.items() if not key.startswith('head')}
    image = {key.replace('norm1', 'attn.norm'): value for key, value in image.items()}
    config = vivit_tiny(attention_type='joint_space_time', pos_emb_type='joint', img_size=48)
    cases = [(convert_original, random_state(original_layout('divided_space_time'))), (convert_timm, vit),
             (convert_mae, mae), (lambda state: convert_hf_vivit(state, 2), hf),
             (convert_jax_vit, {key: torch.from_numpy(value) for key, value in jax_layout(vit).items()}),
             (lambda state: inflate_image_model(state, config), image),
             (lambda state: resize_position_tables(state, config, 2), {'backbone.pos_embed': torch.randn(1, 33, DIM)})]
    for convert, state in cases:
        before = {key: value.clone() for key, value in state.items()}
        convert(state)
        assert state.keys() == before.keys() and all(torch.equal(state[key], before[key]) for key in state)


# ---------------------------------------------------------------------------------------------
# Official TimeSformer


@pytest.mark.parametrize('attention_type', ['divided_space_time', 'joint_space_time', 'space_only'])
def test_official_timesformer_matches_its_forward(tmp_path, attention_type):
    state = random_state(timm_layout(attention_type, prefix='model.'))
    torch.save({'epoch': 15, 'model_state': state, 'optimizer_state': {}, 'cfg': 'MODEL:\n  ARCH: vit\n'},
               tmp_path / 'TimeSformer_divST_8x32_224_K400.pyth')
    model = load_model(tmp_path / 'TimeSformer_divST_8x32_224_K400.pyth', num_heads=HEADS, num_frames=FRAMES)
    assert model.config.attention_type == attention_type
    clip = video()
    with torch.no_grad():
        torch.testing.assert_close(model(clip), official_forward(state, clip, HEADS), atol=1e-5, rtol=0)
