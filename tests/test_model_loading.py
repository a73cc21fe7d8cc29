"""load_model: overrides, head counts, new heads, training checkpoints a real Trainer wrote, and the
preprocessing each source brings."""
import json
import logging

import pytest
import pytorch_lightning as pl
import torch
import yaml
from safetensors.torch import save_file

from data_trainer import VideoDataModule
from layouts import CLASSES, DIM, HEADS, original_layout, random_state, save_lightning, timm_layout, video, write_vit
from model_loading import load_model
from model_trainer import LitVideoClassifier
from our_format import save_weights
from preprocessing import DATA_STATICS, Preprocessing
from reference import randomise_
from video_transformer import VideoClassifier, timesformer_tiny, vivit_tiny, vjepa2_tiny
from weight_formats import WeightLoadError
from weight_init import init_from_pretrained_


def test_overrides_that_agree_are_hints_and_others_are_errors(tmp_path):
    path = save_lightning(tmp_path / 'seed.ckpt', random_state(original_layout('divided_space_time')))
    load_model(path, num_heads=HEADS, arch='timesformer', attention_type='divided_space_time',
               embed_dims=DIM, num_classes=CLASSES, dropout_p=0.1)
    for wrong in ({'embed_dims': 64}, {'attention_type': 'space_only'}, {'arch': 'vivit', 'conv_type': 'Conv3d'},
                  {'num_classes': 7}):
        with pytest.raises(WeightLoadError, match=str(path)):
            load_model(path, num_heads=HEADS, **wrong)
    for wrong in ('num_head', 'pretrained'):
        with pytest.raises(TypeError, match=wrong):
            load_model(path, num_heads=HEADS, **{wrong: 2})


def test_new_head_only_when_asked(tmp_path, caplog):
    path = save_lightning(tmp_path / 'seed.ckpt', random_state(original_layout('divided_space_time')))
    with pytest.raises(WeightLoadError, match='drop_head'):
        load_model(path, num_heads=HEADS, class_names=['a', 'b'])
    with caplog.at_level(logging.INFO, logger='model_loading'):
        model = load_model(path, num_heads=HEADS, class_names=['a', 'b'], drop_head=True)
    assert model.head.fc.out_features == 2 and model.class_names == ['a', 'b']
    assert 'format original' in caplog.text and "missing keys ['head.fc.bias', 'head.fc.weight']" in caplog.text


def test_a_bare_vjepa2_state_dict_is_told_by_its_pooler(tmp_path):
    """Our bare state dicts of the models without a class token: V-JEPA 2's is told by its attentive
    pooler (VideoMAE's by its q and v biases: tests/test_videomae_vjepa2.py; a per-frame or joint
    TimeSformer's is refused without its config.json: tests/test_weight_fitting.py). Fails if the
    pooler's keys are not recognised, or the pooler's depth is not read from them."""
    model = randomise_(VideoClassifier(vjepa2_tiny(num_pooler_layers=1))).eval()
    torch.save(model.state_dict(), tmp_path / 'bare.pt')
    loaded = load_model(tmp_path / 'bare.pt', num_heads=model.config.num_heads, num_frames=4, img_size=32)
    assert (loaded.config.arch, loaded.config.num_pooler_layers) == ('vjepa2', 1)
    with torch.no_grad():
        assert torch.equal(loaded(video()), model(video()))


def test_weights_without_a_head_say_they_are_a_starting_point_in_the_commands_terms(tmp_path):
    """Fails on the code that told model_inference.py and export_weights.py users to `pass
    drop_head=True`, a flag neither command has, for an encoder that cannot classify."""
    model = randomise_(VideoClassifier(timesformer_tiny()))
    save_file({key: value for key, value in model.state_dict().items() if not key.startswith('head.')},
              tmp_path / 'encoder.safetensors')
    (tmp_path / 'config.json').write_text(json.dumps({'format': 'videotransformer-pytorch',
                                                      'config': model.config.to_dict()}))
    with pytest.raises(WeightLoadError, match=r'encoder.safetensors: holds no classification head, so it cannot '
                                              r'classify: a starting point for fine-tuning \(model_pretrain.py '
                                              r'-pretrain; load_model\(\.\.\., drop_head=True, num_classes=N\)'):
        load_model(tmp_path / 'encoder.safetensors')


# ---------------------------------------------------------------------------------------------
# Head counts a file does not record


def test_an_unrecorded_head_count_is_a_warning_naming_the_guess_and_the_override(tmp_path, caplog):
    path = save_lightning(tmp_path / 'seed.ckpt', random_state(original_layout('divided_space_time', dim=128)))
    with caplog.at_level(logging.WARNING, logger='model_loading'):
        assert load_model(path).config.num_heads == 2
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and 'does not record its head count; taking num_heads=2' in warnings[0]
    assert 'pass num_heads=' in warnings[0] and str(path) in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger='model_loading'):
        assert load_model(path, num_heads=4).config.num_heads == 4
    assert not caplog.records


def test_our_bare_state_dict_warns_that_its_heads_are_a_guess(tmp_path, caplog):
    # The tiny preset has 2 heads of width 16; the file alone says width 32, so 1 head of 64 or less.
    model = randomise_(VideoClassifier(timesformer_tiny())).eval()
    torch.save(model.state_dict(), tmp_path / 'tiny.pt')
    with caplog.at_level(logging.WARNING, logger='model_loading'):
        guessed = load_model(tmp_path / 'tiny.pt')
    assert guessed.config.num_heads == 1 and 'taking num_heads=1' in caplog.text
    clip = video()
    with torch.no_grad():
        assert not torch.allclose(guessed(clip), model(clip), atol=1e-3)
        assert torch.equal(load_model(tmp_path / 'tiny.pt', num_heads=2)(clip), model(clip))
    with pytest.raises(WeightLoadError, match='tiny.pt: does not record its head count; give num_heads'):
        load_model(tmp_path / 'tiny.pt', guess_num_heads=False)


# ---------------------------------------------------------------------------------------------
# Training checkpoints written by a real Trainer


def train_and_save(demo_data, path, config, preprocessing=None, starting_point=None, **data):
    """One training step of the training command's LitVideoClassifier on the demo data (from the
    weights of `starting_point`, a VideoClassifier, when given), then Trainer.save_checkpoint."""
    datamodule = VideoDataModule(train_data_path=str(demo_data / 'train.txt'),
                                 class_map=str(demo_data / 'classmap.json'), batch_size=2, num_workers=0,
                                 **{'num_frames': config.num_frames, 'frame_interval': 4, 'img_size': config.img_size,
                                    **data})
    module = LitVideoClassifier(config, datamodule.class_names, preprocessing, optim_type='sgd', lr=0.01)
    if starting_point is not None:
        module.model.load_state_dict(starting_point.state_dict())
    trainer = pl.Trainer(accelerator='cpu', devices=1, max_steps=1, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=datamodule)
    trainer.save_checkpoint(path)
    return module.eval()


def test_a_training_checkpoint_loads_with_its_class_names_and_data_settings(demo_data, tmp_path):
    config = timesformer_tiny(num_classes=4)
    module = train_and_save(demo_data, tmp_path / 'last.ckpt', config, data_statics='imagenet', short_side=40,
                            num_clips=2, num_crops=1)
    loaded = load_model(tmp_path / 'last.ckpt')
    assert loaded.config == config and loaded.class_names == module.hparams.class_names
    assert len(set(loaded.class_names)) == 4
    # Without a preprocessing hyper-parameter, the DataModule's own hyper-parameters say it.
    assert loaded.preprocessing == Preprocessing(num_frames=4, frame_interval=4, img_size=32, short_side=40,
                                                 mean=DATA_STATICS['imagenet'][0], std=DATA_STATICS['imagenet'][1],
                                                 num_clips=2, num_crops=1)
    clip = video()
    with torch.no_grad():
        assert torch.equal(loaded(clip), module.model(clip))


def test_a_preprocessing_hyper_parameter_wins_and_travels_into_an_export(demo_data, tmp_path):
    config = vivit_tiny(num_classes=4)
    preprocessing = Preprocessing(num_frames=4, frame_interval=2, window_seconds=1.5, img_size=32, short_side=36,
                                  mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), num_clips=3, num_crops=3)
    train_and_save(demo_data, tmp_path / 'last.ckpt', config, preprocessing.to_dict())
    loaded = load_model(tmp_path / 'last.ckpt')
    assert loaded.preprocessing == preprocessing
    save_weights(loaded, tmp_path / 'export')
    assert json.loads((tmp_path / 'export' / 'config.json').read_text())['preprocessing'] == preprocessing.to_dict()
    assert load_model(tmp_path / 'export').preprocessing == preprocessing
    resized = load_model(tmp_path / 'export', num_frames=8, img_size=64).preprocessing
    assert resized == preprocessing.replace(num_frames=8, img_size=64, short_side=72)


def test_a_checkpoint_rebuilds_its_model_after_its_starting_point_is_gone(demo_data, tmp_path):
    vit_path = write_vit(random_state(timm_layout()), tmp_path, 'pth')
    config = timesformer_tiny(num_classes=4)
    model = VideoClassifier(config)
    init_from_pretrained_(model, vit_path)
    module = train_and_save(demo_data, tmp_path / 'last.ckpt', config, starting_point=model)
    vit_path.unlink()
    checkpoint = torch.load(tmp_path / 'last.ckpt', weights_only=True)
    rebuilt = LitVideoClassifier(**checkpoint['hyper_parameters'])
    rebuilt.load_state_dict(checkpoint['state_dict'])
    clip = video()
    with torch.no_grad():
        assert torch.equal(rebuilt.model.eval()(clip), module.model(clip))
        assert torch.equal(load_model(tmp_path / 'last.ckpt')(clip), module.model(clip))


def test_class_names_that_do_not_fit_the_head_are_left_out_with_a_warning(demo_data, tmp_path, caplog):
    # A checkpoint whose class names were edited, or written by another module: 3 names, 4 classes.
    train_and_save(demo_data, tmp_path / 'last.ckpt', timesformer_tiny(num_classes=4))
    checkpoint = torch.load(tmp_path / 'last.ckpt', weights_only=True)
    checkpoint['hyper_parameters']['class_names'] = ['x', 'y', 'z']
    torch.save(checkpoint, tmp_path / 'last.ckpt')
    with caplog.at_level(logging.WARNING):
        loaded = load_model(tmp_path / 'last.ckpt')
    assert loaded.class_names is None
    assert 'its 3 class names do not match its 4 classes' in caplog.text


# ---------------------------------------------------------------------------------------------
# Other sources' preprocessing


def test_original_checkpoints_get_the_original_settings(tmp_path):
    path = save_lightning(tmp_path / 'seed.ckpt', random_state(original_layout('divided_space_time')))
    expected = Preprocessing(num_frames=4, frame_interval=32, img_size=32, short_side=32, mean=(0.5,) * 3,
                             std=(0.5,) * 3, num_clips=1, num_crops=3)
    assert load_model(path, num_heads=HEADS).preprocessing == expected
    resized = load_model(path, num_heads=HEADS, num_frames=8, img_size=48).preprocessing
    assert resized == expected.replace(num_frames=8, img_size=48, short_side=48)


def test_official_timesformer_settings_come_from_its_cfg(tmp_path):
    """Fails if the .pyth's cfg is not read: every value it holds differs from the fallback (Kinetics
    statistics, 32 apart, 1 x 3 views)."""
    state = random_state(timm_layout('divided_space_time', prefix='model.'))
    # What slowfast's cfg.dump() writes: yacs dumps its nodes with yaml.safe_dump.
    cfg = yaml.safe_dump({'DATA': {'NUM_FRAMES': 4, 'SAMPLING_RATE': 4, 'MEAN': [0.4, 0.5, 0.6],
                                   'STD': [0.2, 0.25, 0.3], 'TEST_CROP_SIZE': 32},
                          'TEST': {'NUM_ENSEMBLE_VIEWS': 2, 'NUM_SPATIAL_CROPS': 1}, 'MODEL': {'ARCH': 'vit'}})
    torch.save({'epoch': 15, 'model_state': state, 'optimizer_state': {}, 'cfg': cfg}, tmp_path / 'with_cfg.pyth')
    torch.save({'epoch': 15, 'model_state': state}, tmp_path / 'without_cfg.pyth')
    fallback = Preprocessing(num_frames=4, frame_interval=32, img_size=32, short_side=32, num_clips=1, num_crops=3)
    from_cfg = fallback.replace(frame_interval=4, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3), num_clips=2,
                                num_crops=1)
    assert load_model(tmp_path / 'with_cfg.pyth', num_heads=HEADS).preprocessing == from_cfg
    assert load_model(tmp_path / 'without_cfg.pyth', num_heads=HEADS).preprocessing == fallback


def test_image_models_and_bare_state_dicts_bring_no_preprocessing(tmp_path):
    vit = write_vit(random_state(timm_layout()), tmp_path, 'pth')
    assert load_model(vit, num_heads=HEADS).preprocessing is None
    model = VideoClassifier(timesformer_tiny())
    torch.save(model.state_dict(), tmp_path / 'bare.pt')
    assert load_model(tmp_path / 'bare.pt', num_heads=2).preprocessing is None
    save_weights(model, tmp_path / 'export')
    assert load_model(tmp_path / 'export').preprocessing is None
    started = VideoClassifier(timesformer_tiny())
    init_from_pretrained_(started, vit)
    assert started.preprocessing is None
