"""VideoMAE and V-JEPA 2 on the shared core: logits against transformers' own models and an
independent plain-torch VideoMAE, every weight layout they come in, and their starting points."""
import json
import logging

import pytest
import torch
from einops import rearrange
from safetensors.torch import load_file, save_file
from transformers import (VideoMAEConfig, VideoMAEForPreTraining, VideoMAEForVideoClassification, VideoMAEModel,
                          VJEPA2Config, VJEPA2ForVideoClassification, VJEPA2Model)

from layouts import random_state
from model_loading import load_model
from preprocessing import Preprocessing
from reference import randomise_, videomae_logits
from video_transformer import (VideoClassifier, VideoTransformerConfig, videomae_base_patch16_224, videomae_tiny,
                               vjepa2_tiny)
from hf_export import save_hf
from our_format import save_weights
from weight_formats import WeightLoadError
from visualize import attention_rollout, frame_attention
from weight_init import init_from_pretrained_

FRAMES, SIZE, PATCH, CLASSES = 4, 32, 8, 5


def clip(frames=FRAMES, size=SIZE, batch=2, seed=1):
    return torch.randn(batch, frames, 3, size, size, generator=torch.Generator().manual_seed(seed))


def randomised(model, std=0.1):
    """A transformers model whose every parameter moved off its init (zero biases, ones in norms)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * std)
    return model.eval()


def videomae_config(**changes):
    return VideoMAEConfig(image_size=SIZE, patch_size=PATCH, num_frames=FRAMES, tubelet_size=2, hidden_size=32,
                          num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=CLASSES,
                          decoder_hidden_size=16, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
                          decoder_intermediate_size=32, **changes)


def vjepa2_config(hidden_size=48, **changes):
    return VJEPA2Config(patch_size=PATCH, crop_size=SIZE, frames_per_clip=FRAMES, tubelet_size=2,
                        hidden_size=hidden_size, num_attention_heads=2, num_hidden_layers=2, num_pooler_layers=2,
                        pred_hidden_size=16, pred_num_attention_heads=2, pred_num_hidden_layers=1,
                        num_labels=CLASSES, **changes)


# ---------------------------------------------------------------------------------------------
# VideoMAE


@pytest.mark.parametrize('qv_bias', [True, False])
def test_videomae_classifier_folder_gives_transformers_logits(tmp_path, qv_bias):
    """Fails if the tubelet table's order, the q/v biases, the eps of fc_norm (transformers' 1e-5, not
    its config's 1e-12) or mean-then-norm pooling differ from transformers'."""
    reference = randomised(VideoMAEForVideoClassification(videomae_config(qv_bias=qv_bias)))
    reference.save_pretrained(tmp_path)
    model = load_model(tmp_path)
    assert model.config.arch == 'videomae' and model.config.qkv_bias == ('qv' if qv_bias else 'none')
    assert (model.config.norm_eps, model.config.final_norm_eps) == (1e-12, 1e-5)
    with torch.no_grad():
        torch.testing.assert_close(model(clip()), reference(clip()).logits, atol=5e-5, rtol=0)


def test_videomae_hub_files_name_their_biases_q_bias_and_v_bias(tmp_path):
    """The Hub's VideoMAE files were written by transformers 4 (`attention.attention.q_bias`); fails if
    only transformers 5's `query.bias` names are read."""
    reference = randomised(VideoMAEForVideoClassification(videomae_config()))
    reference.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / 'model.safetensors')
    renamed = {key.replace('query.bias', 'q_bias').replace('value.bias', 'v_bias'): value
               for key, value in tensors.items()}
    assert any(key.endswith('.q_bias') for key in renamed)
    save_file(renamed, tmp_path / 'model.safetensors', metadata={'format': 'pt'})
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path)(clip()), reference(clip()).logits, atol=5e-5, rtol=0)


def test_videomae_reads_its_preprocessing_from_the_processor_file(tmp_path):
    """Fails if the processor file's statistics are assumed (transformers' class default is 0.5 / 0.5,
    the Hub's files say ImageNet) or VideoMAE's Kinetics views (16 frames 4 apart, 5 x 3) are lost."""
    randomised(VideoMAEForVideoClassification(videomae_config())).save_pretrained(tmp_path)
    processor = {'image_processor_type': 'VideoMAEImageProcessor', 'do_rescale': True, 'rescale_factor': 1 / 255,
                 'do_normalize': True, 'image_mean': [0.1, 0.2, 0.3], 'image_std': [0.4, 0.5, 0.6],
                 'size': {'shortest_edge': 40}, 'crop_size': {'height': SIZE, 'width': SIZE}}
    (tmp_path / 'preprocessor_config.json').write_text(json.dumps(processor))
    settings = load_model(tmp_path).preprocessing
    assert settings.mean == pytest.approx((0.1, 0.2, 0.3)) and settings.std == pytest.approx((0.4, 0.5, 0.6))
    assert (settings.short_side, settings.img_size, settings.frame_interval) == (40, SIZE, 4)
    assert (settings.num_clips, settings.num_crops) == (5, 3)
    (tmp_path / 'preprocessor_config.json').unlink()
    assert load_model(tmp_path).preprocessing.mean == pytest.approx((0.485, 0.456, 0.406))


def test_a_videomae_pretraining_folder_starts_a_classifier_with_its_encoder(tmp_path, caplog):
    """The encoder of VideoMAEForPreTraining feeds a fine-tuned model: fails if a block, the table or
    the biases load wrongly (tokens compared with transformers' VideoMAEModel), or if the decoder is
    loaded or dropped without a word."""
    pretraining = randomised(VideoMAEForPreTraining(videomae_config()))
    pretraining.save_pretrained(tmp_path)
    encoder = VideoMAEModel.from_pretrained(tmp_path).eval()
    model = VideoClassifier(videomae_tiny(num_classes=3, mlp_ratio=2.0, norm_eps=1e-12, final_norm_eps=1e-5))
    with caplog.at_level(logging.INFO):
        init_from_pretrained_(model, tmp_path)
    assert 'decoder' in caplog.text and "missing keys ['norm.bias', 'norm.weight']" in caplog.text
    backbone = model.backbone.eval()
    with torch.no_grad():
        patches = backbone.patch_embed(clip())
        tokens = backbone.encode(backbone.tokens(patches), 2, FRAMES // 2)
        theirs = rearrange(encoder(clip()).last_hidden_state, 'b (t p) d -> b (p t) d', t=FRAMES // 2)
    torch.testing.assert_close(tokens, theirs, atol=5e-5, rtol=0)
    # As a classifier loaded for fine-tuning: a new head, the encoder's weights.
    classifier = load_model(tmp_path, drop_head=True, num_classes=3)
    torch.testing.assert_close(classifier.backbone.blocks[1].attn.attn.q_bias, backbone.blocks[1].attn.attn.q_bias)


def mcg_state(pretraining=False, dim=32, layers=2, classes=CLASSES, seed=0):
    """An MCG-NJU VideoMAE state dict: fine-tuned (fc_norm, head) or pretrained (`encoder.` + a decoder)."""
    shapes = {'patch_embed.proj.weight': (dim, 3, 2, PATCH, PATCH), 'patch_embed.proj.bias': (dim,)}
    for index in range(layers):
        p = f'blocks.{index}.'
        shapes.update({p + 'norm1.weight': (dim,), p + 'norm1.bias': (dim,), p + 'attn.qkv.weight': (3 * dim, dim),
                       p + 'attn.q_bias': (dim,), p + 'attn.v_bias': (dim,), p + 'attn.proj.weight': (dim, dim),
                       p + 'attn.proj.bias': (dim,), p + 'norm2.weight': (dim,), p + 'norm2.bias': (dim,),
                       p + 'mlp.fc1.weight': (4 * dim, dim), p + 'mlp.fc1.bias': (4 * dim,),
                       p + 'mlp.fc2.weight': (dim, 4 * dim), p + 'mlp.fc2.bias': (dim,)})
    if pretraining:
        shapes = {f'encoder.{key}': shape for key, shape in shapes.items()}
        shapes.update({'encoder.norm.weight': (dim,), 'encoder.norm.bias': (dim,), 'mask_token': (1, 1, 16),
                       'encoder_to_decoder.weight': (16, dim), 'decoder.blocks.0.attn.qkv.weight': (48, 16),
                       'decoder.head.weight': (3 * 2 * PATCH * PATCH, 16)})
    else:
        shapes.update({'fc_norm.weight': (dim,), 'fc_norm.bias': (dim,), 'head.weight': (classes, dim),
                       'head.bias': (classes,)})
    state = random_state(shapes, seed=seed)
    for key in state:
        if key.endswith(('norm1.weight', 'norm2.weight', 'fc_norm.weight')):
            state[key] = state[key] + 1.0  # norms near their init, as trained ones are
    return state


@pytest.mark.parametrize('frames', [FRAMES, 8])
def test_mcg_videomae_checkpoint_gives_the_reference_formula(tmp_path, frames):
    """MCG-NJU's run_class_finetuning.py checkpoint (under `module`) against an independent plain-torch
    VideoMAE; at 8 frames the table is computed for the new token count, as the original does. Fails on
    a patch-major table, a k bias, or norm-then-mean pooling."""
    state = mcg_state()
    torch.save({'module': state, 'epoch': 3}, tmp_path / 'checkpoint-best.pth')
    model = load_model(tmp_path / 'checkpoint-best.pth', num_frames=frames, img_size=SIZE, num_heads=2)
    assert (model.config.arch, model.config.num_heads, model.config.qkv_bias) == ('videomae', 2, 'qv')
    video = clip(frames=frames)
    with torch.no_grad():
        torch.testing.assert_close(model(video), videomae_logits(state, video, heads=2), atol=1e-5, rtol=0)


def test_mcg_videomae_files_read_as_16_frames_at_224_with_its_evaluation_views(tmp_path, caplog):
    """The README: MCG-NJU's files record neither frames nor image size, so 16 x 224 unless given, with
    ImageNet statistics, the short side at the crop size, 16 frames 4 apart and 5 x 3 views; 174 classes
    (which its files do not name) SSv2's segments in 2 x 3, said in one warning line. Fails if the
    defaults or views of another source (transformers' 8 frames, Kinetics' 0.45 / 0.225, 1 x 1) are
    taken, or the SSv2 guess is made without a word."""
    imagenet = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    kinetics = Preprocessing(num_frames=16, frame_interval=4, img_size=224, short_side=224, num_clips=5, num_crops=3,
                             **imagenet)
    for classes, expected, warnings in ((CLASSES, kinetics, 0),
                                        (174, kinetics.replace(sampling='segments', num_clips=2), 1)):
        torch.save({'module': mcg_state(classes=classes)}, tmp_path / 'checkpoint-best.pth')
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            model = load_model(tmp_path / 'checkpoint-best.pth', num_heads=2)
        assert (model.config.num_frames, model.config.img_size) == (16, 224)
        assert model.preprocessing == expected, classes
        said = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
        assert len(said) == warnings and all('taken for Something-Something v2' in line for line in said), said


def test_mcg_videomae_pretraining_checkpoint_is_a_starting_point_without_its_decoder(tmp_path, caplog):
    """Fails if the decoder or the pretraining encoder's own final norm is loaded, or dropped silently."""
    state = mcg_state(pretraining=True)
    torch.save({'model': state}, tmp_path / 'checkpoint-799.pth')
    model = VideoClassifier(videomae_tiny(num_classes=3))
    with caplog.at_level(logging.INFO):
        init_from_pretrained_(model, tmp_path / 'checkpoint-799.pth')
    assert 'decoder' in caplog.text
    assert torch.equal(model.backbone.blocks[0].attn.attn.qkv.weight, state['encoder.blocks.0.attn.qkv.weight'])
    assert torch.equal(model.backbone.norm.weight, torch.ones(32))  # a fresh fc_norm, as VideoMAE fine-tunes


def test_videomae_weights_export_and_load_back_exactly(tmp_path):
    """Our export of a VideoMAE: fails if the computed table were stored or the q/v biases lost."""
    model = randomise_(VideoClassifier(videomae_tiny())).eval()
    save_weights(model, tmp_path / 'export')
    assert not any('pos_embed' in key for key in load_file(tmp_path / 'export' / 'model.safetensors'))
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / 'export')(clip()), model(clip()))
    torch.save(model.state_dict(), tmp_path / 'bare.pt')  # without config: told by the q and v biases
    assert load_model(tmp_path / 'bare.pt', num_frames=FRAMES, img_size=SIZE).config.arch == 'videomae'


# ---------------------------------------------------------------------------------------------
# V-JEPA 2


@pytest.mark.parametrize('hidden_size', [48, 128], ids=['rotated-head', 'head-with-unrotated-channels'])
def test_vjepa2_classifier_folder_gives_transformers_logits(tmp_path, hidden_size):
    """Heads of 24 channels (three rotary sections of 8) and of 64 (sections of 20, 4 channels left
    as they are): fails on another rotary layout, token order, pooler or head."""
    reference = randomised(VJEPA2ForVideoClassification(vjepa2_config(hidden_size)))
    reference.save_pretrained(tmp_path)
    model = load_model(tmp_path)
    assert (model.config.arch, model.config.pooling, model.config.num_pooler_layers) == ('vjepa2', 'attentive', 2)
    with torch.no_grad():
        torch.testing.assert_close(model(clip()), reference(pixel_values_videos=clip()).logits, atol=1e-4, rtol=0)


def test_vjepa2_takes_any_frame_count_and_size(tmp_path):
    """Rotary positions follow the input's grid: 8 frames of 48 x 40 pixels give the logits of
    transformers' model built for that grid with the same weights (transformers' own positions
    follow its config, not the input)."""
    randomised(VJEPA2ForVideoClassification(vjepa2_config())).save_pretrained(tmp_path)
    model = load_model(tmp_path)
    video = torch.randn(1, 8, 3, 48, 48)
    reference = VJEPA2ForVideoClassification.from_pretrained(tmp_path, crop_size=48, frames_per_clip=8).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(video), reference(pixel_values_videos=video).logits, atol=1e-4, rtol=0)
        assert model(torch.randn(1, 6, 3, 48, 40)).shape == (1, CLASSES)
    with pytest.raises(ValueError, match='multiples of 8'):
        model(torch.randn(1, 4, 3, 36, 32))


def test_a_vjepa2_encoder_starts_a_classifier_with_a_fresh_pooler(tmp_path):
    """VJEPA2Model (encoder only, with its predictor): fails if the predictor is loaded, the encoder
    loads wrongly (tokens against transformers') or the missing pooler is left uninitialised."""
    randomised(VJEPA2Model(vjepa2_config())).save_pretrained(tmp_path)
    encoder = VJEPA2Model.from_pretrained(tmp_path).eval()
    model = load_model(tmp_path, drop_head=True, num_classes=3)
    assert model.config.num_pooler_layers == 2  # from its config: the encoder has no pooler weights
    with torch.no_grad():
        tokens = model.backbone(clip())
        theirs = encoder(clip(), skip_predictor=True).last_hidden_state
        torch.testing.assert_close(tokens, rearrange(theirs, 'b (t p) d -> b (p t) d', t=FRAMES // 2),
                                   atol=1e-4, rtol=0)
    assert torch.isfinite(model(clip())).all() and 0 < model.head.pooler.query.std() < 0.05


# ---------------------------------------------------------------------------------------------
# Configs


@pytest.mark.parametrize('preset,changes,match', [
    (videomae_tiny, {'pos_emb_type': 'separate'}, "VideoMAE pos_emb_type must be one of"),
    (vjepa2_tiny, {'pooling': 'cls_token'}, "VJEPA2 pooling must be one of"),
    (videomae_tiny, {'use_learnable_pos_emb': True}, "needs use_learnable_pos_emb=False"),
    (videomae_tiny, {'qkv_bias': 'k'}, "qkv_bias must be one of"),
])
def test_inconsistent_new_configs_are_refused(preset, changes, match):
    with pytest.raises(ValueError, match=match):
        VideoTransformerConfig(**{**preset().to_dict(), **changes})


def test_configs_saved_with_the_original_pooling_flag_and_a_boolean_bias_still_load(tmp_path):
    """Exports written before `pooling` and the qkv bias form: fails if return_cls_token=False is read as
    anything but the mean of the patch tokens, or qkv_bias=True as anything but 'qkv'."""
    from video_transformer import timesformer_tiny
    model = randomise_(VideoClassifier(timesformer_tiny(pooling='mean'))).eval()
    save_weights(model, tmp_path)
    meta = json.loads((tmp_path / 'config.json').read_text())
    meta['config'].pop('pooling')
    meta['config'].pop('num_pooler_layers')
    meta['config'].update(return_cls_token=False, qkv_bias=True, copy_strategy='repeat')
    (tmp_path / 'config.json').write_text(json.dumps(meta))
    loaded = load_model(tmp_path)
    assert (loaded.config.pooling, loaded.config.qkv_bias) == ('mean', 'qkv')
    with torch.no_grad():
        assert torch.equal(loaded(clip()), model(clip()))


def test_presets_count_the_published_parameters():
    """The README: the VideoMAE model card's 86.5 M parameters are VideoMAE-B's with a 400-class head,
    counted exactly. The rounding to whole millions this replaced took anything from 86.5 to 87.5 M: a
    model without its q and v biases (18 K) or its fc_norm (1.5 K) passed it."""
    with torch.device('meta'):
        model = VideoClassifier(videomae_base_patch16_224(num_classes=400))
    assert sum(parameter.numel() for parameter in model.parameters()) == 86_534_800


def test_an_unreadable_videomae_variant_is_one_clear_error(tmp_path):
    reference = randomised(VideoMAEForVideoClassification(videomae_config(use_mean_pooling=False)))
    reference.save_pretrained(tmp_path)
    with pytest.raises(WeightLoadError, match='use_mean_pooling') as error:
        load_model(tmp_path)
    assert '\n' not in str(error.value)


# ---------------------------------------------------------------------------------------------
# Attention pictures


def test_rollout_reads_what_each_pooling_reads():
    """Every token attends to token 3 only; the pooling query of V-JEPA 2 to token 5. Fails if mean
    pooling is drawn as a class token's row, or the pooler's query is left out."""
    maps = [torch.zeros(1, 2, 6, 6).index_fill_(-1, torch.tensor([3]), 1.0)] * 2
    assert attention_rollout(maps, 'fc_norm').argmax() == 3
    assert attention_rollout(maps, 'cls_token').shape == (1, 5)
    identity = [torch.eye(6).expand(1, 2, 6, 6)]
    query = torch.zeros(1, 2, 1, 6).index_fill_(-1, torch.tensor([5]), 1.0)
    assert attention_rollout(identity, 'attentive', query).argmax() == 5
    assert attention_rollout(identity, 'fc_norm').std() == 0


@pytest.mark.parametrize('preset', [videomae_tiny, vjepa2_tiny])
def test_attention_maps_of_the_new_models_cover_every_token_frame(preset):
    model = randomise_(VideoClassifier(preset()), std=0.05).eval()
    frames = torch.randint(0, 256, (FRAMES, 3, SIZE, SIZE), dtype=torch.uint8)
    maps = frame_attention(model, frames, Preprocessing(num_frames=FRAMES, img_size=SIZE))
    assert maps.shape == (FRAMES // 2, SIZE // PATCH, SIZE // PATCH)
    assert maps.min() == 0 and maps.max() == 1


# ---------------------------------------------------------------------------------------------
# transformers folders written


@pytest.mark.parametrize('preset,reference_class', [
    (lambda: videomae_tiny(norm_eps=1e-12, final_norm_eps=1e-5), VideoMAEForVideoClassification),
    (vjepa2_tiny, VJEPA2ForVideoClassification),
])
def test_new_models_export_as_transformers_folders_and_back(tmp_path, preset, reference_class):
    """save_hf writes the matching transformers class: fails if transformers' from_pretrained misses or
    misreads a tensor (its logits differ from ours) or our reader does not take the folder back."""
    model = randomise_(VideoClassifier(preset()), std=0.05).eval()
    save_hf(model, tmp_path)
    reference = reference_class.from_pretrained(tmp_path).eval()
    video = clip()
    with torch.no_grad():
        theirs = reference(video).logits if reference_class is VideoMAEForVideoClassification else \
            reference(pixel_values_videos=video).logits
        torch.testing.assert_close(theirs, model(video), atol=1e-4, rtol=0)
        torch.testing.assert_close(load_model(tmp_path)(video), model(video), atol=1e-5, rtol=0)


def test_what_transformers_cannot_express_is_refused_with_the_fix(tmp_path):
    with pytest.raises(WeightLoadError, match=r'fc_norm eps 1e-05 .*final_norm_eps=1e-05'):
        save_hf(VideoClassifier(videomae_tiny()), tmp_path)
    with pytest.raises(WeightLoadError, match='not vivit'):
        from video_transformer import vivit_tiny
        save_hf(VideoClassifier(vivit_tiny()), tmp_path)
