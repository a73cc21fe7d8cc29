"""transformers' TimeSformer and ViViT: folders they write load with their numbers and their
preprocessing, and our transformers export loads in transformers and back."""
import json
import logging

import numpy as np
import pytest
import torch

from command_lines import run_in_one_process
from hf_export import hf_timesformer_config, save_hf
from layouts import (CLASSES, DIM, FRAMES, HEADS, LAYERS, PATCH, SIZE, original_layout, random_state, save_lightning,
                     video)
from model_loading import load_model
from dataset import spatial_crops
from our_format import save_weights
from preprocessing import Preprocessing, normalize
from reference import randomise_
from video_transformer import TimeSformer, VideoClassifier, timesformer_base_patch16_224, timesformer_hr_patch16_448, \
    timesformer_large_patch16_224, timesformer_tiny
from weight_formats import WeightLoadError, convert_hf_timesformer, convert_hf_vivit, convert_to_hf_timesformer
from weight_init import init_from_pretrained_

transformers = pytest.importorskip('transformers')


def hf_timesformer(attention_type='divided_space_time', **changes):
    config = transformers.TimesformerConfig(
        image_size=SIZE, patch_size=PATCH, num_frames=FRAMES, hidden_size=DIM, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, intermediate_size=4 * DIM, num_labels=CLASSES,
        id2label={index: f'action {index}' for index in range(CLASSES)}, attention_type=attention_type,
        **changes)
    return randomise_(transformers.TimesformerForVideoClassification(config)).eval()


def hf_vivit(**changes):
    config = transformers.VivitConfig(
        image_size=SIZE, num_frames=FRAMES, tubelet_size=[2, PATCH, PATCH], hidden_size=DIM,
        num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=4 * DIM, num_labels=CLASSES,
        **changes)
    return randomise_(transformers.VivitForVideoClassification(config)).eval()


def max_abs(a, b):
    return (a - b).abs().max().item()


@pytest.mark.parametrize('attention_type, changes', [
    ('divided_space_time', {}),
    ('joint_space_time', {}),
    ('divided_space_time', {'hidden_act': 'gelu_fast', 'layer_norm_eps': 1e-5}),
])
def test_hf_timesformer_folder_matches_transformers(tmp_path, attention_type, changes):
    reference = hf_timesformer(attention_type, **changes)
    reference.save_pretrained(tmp_path)
    model = load_model(tmp_path)
    assert model.class_names == [f'action {index}' for index in range(CLASSES)]
    assert model.config.activation == ('gelu_tanh' if changes else 'gelu')
    clip = video()
    with torch.no_grad():
        assert max_abs(model(clip), reference(clip).logits) < 1e-4


def test_hf_timesformer_space_only_is_refused(tmp_path):
    hf_timesformer('space_only').save_pretrained(tmp_path)
    with pytest.raises(WeightLoadError, match='classifies every frame') as error:
        load_model(tmp_path)
    assert str(tmp_path) in str(error.value)
    # Without config.json the missing time table says space_only.
    (tmp_path / 'config.json').unlink()
    with pytest.raises(WeightLoadError, match='classifies every frame'):
        load_model(tmp_path)


def test_hf_timesformer_bare_model_gives_backbone_keys():
    config = transformers.TimesformerConfig(image_size=SIZE, patch_size=PATCH, num_frames=FRAMES,
                                            hidden_size=DIM, num_hidden_layers=LAYERS,
                                            num_attention_heads=HEADS, intermediate_size=4 * DIM)
    reference = randomise_(transformers.TimesformerModel(config)).eval()
    converted = convert_hf_timesformer(reference.state_dict())
    assert all(key.startswith('backbone.') for key in converted)
    backbone = TimeSformer(timesformer_tiny()).eval()
    backbone.load_state_dict({key.removeprefix('backbone.'): value for key, value in converted.items()})
    clip = video(batch=1)
    with torch.no_grad():
        assert max_abs(backbone(clip), reference(clip).last_hidden_state[:, 0]) < 1e-4
    assert convert_to_hf_timesformer(converted).keys() == reference.state_dict().keys()


OLD_VIVIT_NAMES = [('layers.', 'encoder.layer.'), ('attention.q_proj', 'attention.attention.query'),
                   ('attention.k_proj', 'attention.attention.key'), ('attention.v_proj', 'attention.attention.value'),
                   ('attention.o_proj', 'attention.output.dense'), ('mlp.fc1', 'intermediate.dense'),
                   ('mlp.fc2', 'output.dense')]


@pytest.mark.parametrize('naming', ['transformers-5', 'transformers-4'])
def test_hf_vivit_matches_transformers(tmp_path, naming):
    reference = hf_vivit()
    reference.config.save_pretrained(tmp_path)
    state = reference.state_dict()
    if naming == 'transformers-4':
        for new, old in OLD_VIVIT_NAMES:
            state = {key.replace(new, old): value for key, value in state.items()}
    torch.save(state, tmp_path / 'pytorch_model.bin')
    model = load_model(tmp_path / 'pytorch_model.bin')
    assert (model.config.arch, model.config.pos_emb_type, model.config.activation) == ('vivit', 'joint', 'gelu_tanh')
    clip = video()
    with torch.no_grad():
        assert max_abs(model(clip), reference(clip).logits) < 1e-4


def test_hf_vivit_position_rows_become_patch_major():
    table = torch.arange(1 + 2 * 16, dtype=torch.float)[None, :, None]  # row index as the value
    converted = convert_hf_vivit({'vivit.embeddings.position_embeddings': table}, num_time_steps=2)
    rows = converted['backbone.pos_embed'][0, :, 0].long().tolist()
    # ours: 1 + p*T + t holds theirs: 1 + t*P + p
    assert rows[:5] == [0, 1, 17, 2, 18]


def test_heads_in_the_file_must_match_the_model(tmp_path):
    hf_timesformer().save_pretrained(tmp_path)
    with pytest.raises(WeightLoadError, match='heads'):
        init_from_pretrained_(TimeSformer(timesformer_tiny(num_heads=4)), tmp_path)


# ---------------------------------------------------------------------------------------------
# Their preprocessing


def frames_uint8(count=2, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, SIZE, SIZE, 3), dtype=np.uint8)


def test_a_folder_without_a_processor_gets_kinetics_settings(tmp_path):
    hf_timesformer().save_pretrained(tmp_path)
    preprocessing = load_model(tmp_path).preprocessing
    assert (preprocessing.mean, preprocessing.std) == ((0.45,) * 3, (0.225,) * 3)
    assert (preprocessing.num_frames, preprocessing.img_size, preprocessing.short_side) == (FRAMES, SIZE, SIZE)
    assert (preprocessing.frame_interval, preprocessing.num_clips, preprocessing.num_crops) == (4, 1, 1)


@pytest.mark.parametrize('processor, model', [
    (lambda: transformers.VideoMAEImageProcessor(image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.25, 0.3],
                                                 size={'shortest_edge': 40}, crop_size={'height': SIZE, 'width': SIZE}),
     'timesformer'),
    # ViViT's processor rescales to [-1, 1] (offset) and then normalises with mean = std = 0.5.
    (lambda: transformers.VivitImageProcessor(size={'shortest_edge': 40}, crop_size={'height': SIZE, 'width': SIZE}),
     'vivit'),
])
def test_a_processor_file_gives_its_normalisation_and_sizes(tmp_path, processor, model):
    processor = processor()
    (hf_timesformer() if model == 'timesformer' else hf_vivit()).save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    preprocessing = load_model(tmp_path).preprocessing
    assert (preprocessing.img_size, preprocessing.short_side) == (SIZE, 40)
    frames = frames_uint8()
    theirs = processor(list(frames), do_resize=False, do_center_crop=False, return_tensors='pt').pixel_values
    ours = normalize(torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255, preprocessing.mean, preprocessing.std)
    torch.testing.assert_close(ours[None], theirs.float(), atol=1e-5, rtol=1e-5)
    # A larger image size keeps the short side's ratio to it; the frames follow the model.
    resized = load_model(tmp_path, img_size=2 * SIZE, num_frames=2 * FRAMES).preprocessing
    assert (resized.img_size, resized.short_side, resized.num_frames) == (2 * SIZE, 80, 2 * FRAMES)


def test_the_video_processor_file_wins_as_in_transformers(tmp_path):
    hf_timesformer().save_pretrained(tmp_path)
    transformers.VideoMAEImageProcessor(image_mean=[0.1, 0.2, 0.3]).save_pretrained(tmp_path)
    settings = json.loads((tmp_path / 'preprocessor_config.json').read_text())
    (tmp_path / 'video_preprocessor_config.json').write_text(json.dumps({**settings, 'image_mean': [0.3, 0.2, 0.1]}))
    assert load_model(tmp_path).preprocessing.mean == pytest.approx((0.3, 0.2, 0.1))


# ---------------------------------------------------------------------------------------------
# Our transformers export


def test_hf_export_loads_in_transformers_and_back(tmp_path):
    model = randomise_(VideoClassifier(timesformer_tiny(num_classes=3), class_names=['a', 'b', 'c'])).eval()
    save_hf(model, tmp_path / 'hf')
    reference = transformers.TimesformerForVideoClassification.from_pretrained(tmp_path / 'hf').eval()
    assert reference.config.id2label == {0: 'a', 1: 'b', 2: 'c'}
    expected = convert_to_hf_timesformer(model.state_dict())
    assert all(torch.equal(value, expected[key]) for key, value in reference.state_dict().items())
    clip = video()
    with torch.no_grad():
        assert max_abs(reference(clip).logits, model(clip)) < 1e-4
    loaded = load_model(tmp_path / 'hf')
    assert all(torch.equal(value, loaded.state_dict()[key]) for key, value in model.state_dict().items())


def test_hf_export_keeps_the_preprocessing(tmp_path, caplog):
    """Fails if -hf drops the data settings: transformers then normalises with its 0.45 / 0.225 and
    our loader reads its short side, frame interval 4 and 1x1 views back."""
    config = timesformer_tiny(num_classes=3)
    trained = Preprocessing(num_frames=config.num_frames, frame_interval=3, img_size=SIZE, short_side=40,
                            mean=(0.5,) * 3, std=(0.5,) * 3, num_clips=2, num_crops=3)
    model = randomise_(VideoClassifier(config, preprocessing=trained)).eval()
    with caplog.at_level(logging.WARNING, logger='hf_export'):
        save_hf(model, tmp_path / 'hf')
    assert load_model(tmp_path / 'hf').preprocessing == trained
    [said] = caplog.messages
    assert 'frame interval 3' in said and '2x3 test views' in said and 'sampling_config.json' in said
    processor = transformers.AutoImageProcessor.from_pretrained(tmp_path / 'hf')
    assert (processor.size['shortest_edge'], processor.crop_size) == (40, {'height': SIZE, 'width': SIZE})
    # Frames already at the short side: transformers' centre crop and normalisation against ours.
    frames = np.random.default_rng(0).integers(0, 256, (FRAMES, 40, 56, 3), dtype=np.uint8)
    theirs = processor(list(frames), do_resize=False, return_tensors='pt').pixel_values
    [centre] = spatial_crops(torch.from_numpy(frames).permute(0, 3, 1, 2), SIZE)
    torch.testing.assert_close(normalize(centre, trained.mean, trained.std)[None], theirs.float(), atol=1e-5, rtol=0)


@pytest.mark.parametrize('preset', [timesformer_base_patch16_224, timesformer_hr_patch16_448,
                                    timesformer_large_patch16_224])
def test_every_timesformer_preset_can_be_written_for_transformers(preset):
    config = transformers.TimesformerConfig(**hf_timesformer_config(preset()))
    assert config.layer_norm_eps == 1e-6


def test_the_export_command_writes_both_folders_and_asks_for_one_eps(tmp_path):
    """Our export and a transformers folder of a trained model; the original repository's two LayerNorm eps (1e-5
    and 1e-6) cannot go to transformers' one unless -set norm_eps chooses it. All in one process."""
    model = randomise_(VideoClassifier(timesformer_tiny(num_classes=3))).eval()
    save_weights(model, tmp_path / 'trained')
    seed = save_lightning(tmp_path / 'seed.ckpt', random_state(original_layout('divided_space_time')))
    heads = ['-num_heads', str(HEADS)]
    results = run_in_one_process('export_weights.py', {
        'ours': [tmp_path / 'trained', tmp_path / 'ours'], 'hf': [tmp_path / 'trained', tmp_path / 'hf', '-hf'],
        'seed refused': [seed, tmp_path / 'refused', *heads, '-hf'],
        'seed with one eps': [seed, tmp_path / 'original_hf', *heads, '-hf', '-set', 'norm_eps=1e-6']})
    for name in ('ours', 'hf'):
        assert results[name]['code'] == 0 and 'format videotransformer-pytorch' in results[name]['stderr'], name
    refused, chosen = results['seed refused'], results['seed with one eps']
    assert 'format original' in refused['stderr'] and 'format original' in chosen['stderr']
    assert refused['code'] == 2 and 'error: -hf: ' in refused['stderr'].splitlines()[-1]
    assert 'one LayerNorm eps' in refused['stderr'].splitlines()[-1]
    assert 'norm_eps=1e-06' in refused['stderr'].splitlines()[-1] and not (tmp_path / 'refused').exists()
    assert chosen['code'] == 0, chosen['stderr'][-2000:]
    clip = video()
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / 'ours')(clip), model(clip))
        reference = transformers.TimesformerForVideoClassification.from_pretrained(tmp_path / 'hf').eval()
        assert max_abs(reference(clip).logits, model(clip)) < 1e-4
        reference = transformers.TimesformerForVideoClassification.from_pretrained(tmp_path / 'original_hf').eval()
        expected = load_model(seed, num_heads=HEADS, norm_eps=1e-6)(clip)
        assert max_abs(reference(clip).logits, expected) < 1e-4
