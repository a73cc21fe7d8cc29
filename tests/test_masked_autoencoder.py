"""VideoMAE's masked autoencoding: tube masks, the visible-only encoder, the decoder and its loss against
transformers' VideoMAEForPreTraining, and the reconstruction pictures."""
import json

import pytest
import torch
from einops import rearrange
from safetensors.torch import save_file
from transformers import VideoMAEForPreTraining

from masked_autoencoder import (build_decoder, check_mask_ratio, encode_visible, masked_autoencoding,
                                pretraining_problem, reconstruct, reconstruction_targets, token_indices, tube_mask)
from preprocessing import DATA_STATICS
from pretraining_export import convert_to_hf_videomae_pretraining, hf_videomae_pretraining_config
from video_transformer import ARCHITECTURES, timesformer_tiny, videomae_tiny, vivit_tiny, vjepa2_tiny

FRAMES, SIZE, PATCH = 4, 32, 8
MEAN, STD = DATA_STATICS['imagenet']


def clip(batch=2, seed=1):
    return torch.randn(batch, FRAMES, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def randomise_(*modules, std=0.1):
    """Move every parameter off its init (ones in norms, zero biases) so that a wrong key shows."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in modules:
            for parameter in module.parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator) * std)


def built(config, decoder_dim=16, decoder_depth=1, decoder_heads=2):
    backbone = ARCHITECTURES[config.arch](config)
    decoder = build_decoder(config, decoder_dim, decoder_depth, decoder_heads)
    randomise_(backbone, decoder)
    return backbone.eval(), decoder.eval()


def test_tube_masks_hide_the_same_patches_in_every_token_frame():
    """Fails if a mask is drawn per token (not per clip), hides another count, or ignores its generator."""
    mask = tube_mask(6, 16, 2, 0.75, torch.Generator().manual_seed(3))
    assert mask.shape == (6, 32) and mask.dtype == torch.bool
    per_frame = rearrange(mask, 'b (p t) -> b t p', t=2)
    assert torch.equal(per_frame[:, 0], per_frame[:, 1])
    assert (per_frame[:, 0].sum(dim=1) == 12).all()
    assert len({tuple(row.tolist()) for row in per_frame[:, 0]}) > 1  # clips differ
    assert torch.equal(mask, tube_mask(6, 16, 2, 0.75, torch.Generator().manual_seed(3)))


@pytest.mark.parametrize('ratio', [0.0, 1.0, 0.03, 1.5, -0.2])
def test_mask_ratios_that_hide_nothing_or_everything_are_refused(ratio):
    """Fails if a ratio that leaves the encoder or the loss without tokens gets through (16 patches a frame)."""
    with pytest.raises(ValueError, match='mask_ratio'):
        check_mask_ratio(ratio, 16)


@pytest.mark.parametrize('norm_pix_loss', [True, False])
def test_the_loss_equals_transformers_videomae_for_pretraining(norm_pix_loss, tmp_path):
    """Same weights (ours converted to its keys, from_pretrained missing none and finding none unexpected),
    same mask (in its time-major order): fails
    if the gather, the decoder's table order, the target layout, the ImageNet de-normalisation, the
    per-patch normalisation (unbiased, eps 1e-6) or the key conversion differ from transformers'."""
    config = videomae_tiny(mlp_ratio=2.0, norm_eps=1e-12)
    backbone, decoder = built(config)
    state = {**{f'model.backbone.{key}': value for key, value in backbone.state_dict().items()},
             **{f'decoder.{key}': value for key, value in decoder.state_dict().items()}}
    hf_config = hf_videomae_pretraining_config(config, 16, 1, 2, norm_pix_loss)
    save_file(convert_to_hf_videomae_pretraining(state), tmp_path / 'model.safetensors', metadata={'format': 'pt'})
    (tmp_path / 'config.json').write_text(json.dumps(hf_config))
    reference, loading = VideoMAEForPreTraining.from_pretrained(tmp_path, output_loading_info=True)
    assert not loading['missing_keys'] and not loading['unexpected_keys'], loading
    reference.eval()
    video = clip()
    mask = tube_mask(2, 16, 2, 0.75, torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours, predictions = masked_autoencoding(backbone, decoder, video, mask, MEAN, STD, norm_pix_loss)
        output = reference(video, bool_masked_pos=rearrange(mask, 'b (p t) -> b (t p)', t=2))
    assert abs(ours.item() - output.loss.item()) < 1e-5, (ours.item(), output.loss.item())
    # The predictions themselves, ours put in its order of the masked tubelets (t * P + p).
    ours_index = token_indices(mask, True)
    their_order = ((ours_index % 2) * 16 + ours_index // 2).argsort(dim=1)
    reordered = torch.gather(predictions, 1, their_order[..., None].expand(-1, -1, predictions.shape[-1]))
    torch.testing.assert_close(reordered, output.logits, atol=1e-5, rtol=0)


def test_visible_tokens_get_the_full_encoders_outputs_when_nothing_else_attends():
    """With every attention's output projection zero, each token's output depends on itself alone: the
    visible-only encoder must give the full encoder's outputs at the visible tokens. Fails if the
    gather picks other tokens, or positions are added after the gather (to the wrong tokens)."""
    backbone, _ = built(videomae_tiny())
    with torch.no_grad():
        for block in backbone.blocks:
            block.attn.attn.proj.weight.zero_()
            block.attn.attn.proj.bias.zero_()
    video, mask = clip(), tube_mask(2, 16, 2, 0.75, torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = backbone.encode(backbone.tokens(backbone.patch_embed(video)), 2, 2)
        visible = encode_visible(backbone, video, mask)
    expected = torch.gather(full, 1, token_indices(mask, False)[..., None].expand(-1, -1, full.shape[-1]))
    assert visible.shape == (2, 8, 32)
    torch.testing.assert_close(visible, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize('preset', [videomae_tiny, lambda: timesformer_tiny(attention_type='divided_space_time'),
                                    lambda: vivit_tiny(attention_type='fact_dot_product')])
def test_an_unmasked_encoder_equals_the_full_one_and_every_trained_weight_gets_a_gradient(preset):
    """Nothing masked: the visible-only path must be the model's own forward up to the blocks, with
    attention (divided attention groups the visible tokens by frame and patch). Then a masked loss
    must reach every parameter but the unused final norm. Fails if the class token or an operator's
    grouping is lost."""
    backbone, decoder = built(preset())
    backbone.train()
    video = clip()
    nothing = torch.zeros(2, backbone.config.num_patches * backbone.config.num_time_steps, dtype=torch.bool)
    with torch.no_grad():
        tokens = backbone.encode(backbone.tokens(backbone.patch_embed(video)), 2, backbone.config.num_time_steps)
        tokens = tokens[:, 1:] if backbone.config.has_cls_token else tokens
        torch.testing.assert_close(encode_visible(backbone, video, nothing), tokens, atol=1e-6, rtol=0)
    mask = tube_mask(2, backbone.config.num_patches, backbone.config.num_time_steps, 0.75)
    loss, predictions = masked_autoencoding(backbone, decoder, video, mask, MEAN, STD)
    assert predictions.shape[1] == mask[0].sum() and torch.isfinite(loss)
    loss.backward()
    lacking = [name for name, parameter in [*backbone.named_parameters(), *decoder.named_parameters()]
               if parameter.grad is None or not parameter.grad.abs().sum() > 0]
    assert lacking == ['norm.weight', 'norm.bias'], lacking


@pytest.mark.parametrize('config', [vjepa2_tiny(), vivit_tiny(), timesformer_tiny(attention_type='space_only')])
def test_architectures_without_a_token_per_tubelet_are_refused(config):
    """Fails if V-JEPA 2 (rotary positions, its own objective), ViViT's factorised encoder or space_only
    attention (tokens pooled over frames or per-frame class tokens) are taken."""
    assert pretraining_problem(config)
    assert pretraining_problem(videomae_tiny()) is None


@pytest.mark.parametrize('norm_pix_loss', [True, False])
def test_a_perfect_prediction_reconstructs_the_clip(norm_pix_loss):
    """The reconstruction of exact targets is the clip itself, de-normalised per patch: fails if the picture
    puts predictions in the wrong tubelets or skips the per-patch de-normalisation."""
    video = (torch.rand(2, FRAMES, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2)) - 0.45) / 0.22
    mask = tube_mask(2, 16, 2, 0.5, torch.Generator().manual_seed(1))
    targets = reconstruction_targets(video, MEAN, STD, PATCH, 2, norm_pix_loss)
    predictions = torch.gather(targets, 1, token_indices(mask, True)[..., None].expand(-1, -1, targets.shape[-1]))
    frames, masked, reconstructed = reconstruct(video, mask, predictions, MEAN, STD, PATCH, 2, norm_pix_loss)
    torch.testing.assert_close(reconstructed, frames, atol=1e-4, rtol=0)
    assert (masked == 0.5).float().mean() > 0.3 and not torch.equal(masked, frames)
