"""Our export folder, written atomically and read back exactly, and the export command's errors."""
import json
import os
import re
import stat

import pytest
import torch

from command_lines import run_in_one_process
from hf_export import hf_timesformer_config, save_hf
from layouts import HEADS, original_layout, random_state, save_lightning, video
from model_loading import load_model
from our_format import save_weights
from preprocessing import Preprocessing
from reference import randomise_
from video_transformer import VideoClassifier, timesformer_tiny, vivit_tiny
from weight_formats import WeightLoadError


def test_export_round_trip_is_exact(tmp_path):
    preprocessing = Preprocessing(num_frames=4, img_size=32, frame_interval=2)
    model = randomise_(VideoClassifier(vivit_tiny(attention_type='fact_dot_product', num_classes=3),
                                       class_names=['a', 'b', 'c'], preprocessing=preprocessing)).eval()
    save_weights(model, tmp_path / 'export')
    loaded = load_model(tmp_path / 'export')
    assert loaded.config == model.config and loaded.class_names == ['a', 'b', 'c']
    assert loaded.preprocessing == preprocessing
    assert all(torch.equal(value, loaded.state_dict()[key]) for key, value in model.state_dict().items())
    clip = video()
    with torch.no_grad():
        assert torch.equal(loaded(clip), model(clip))
    assert json.loads((tmp_path / 'export' / 'config.json').read_text())['format'] == 'videotransformer-pytorch'


def test_an_export_of_an_earlier_version_still_loads(tmp_path):
    # Its config.json recorded `pretrained` and no preprocessing.
    model = randomise_(VideoClassifier(timesformer_tiny())).eval()
    save_weights(model, tmp_path / 'export')
    meta = json.loads((tmp_path / 'export' / 'config.json').read_text())
    del meta['preprocessing']
    meta['config']['pretrained'] = '/gone/vit_base_patch16_224.pth'
    (tmp_path / 'export' / 'config.json').write_text(json.dumps(meta))
    loaded = load_model(tmp_path / 'export')
    assert loaded.config == model.config and loaded.preprocessing is None


def test_an_export_with_fields_this_version_does_not_know_is_refused(tmp_path):
    """Fails if a field of a newer version's config.json is dropped silently instead of named."""
    save_weights(randomise_(VideoClassifier(timesformer_tiny())), tmp_path / 'export')
    meta = json.loads((tmp_path / 'export' / 'config.json').read_text())
    meta['config'].update(rope_theta=10000.0, layer_scale=0.1)
    (tmp_path / 'export' / 'config.json').write_text(json.dumps(meta))
    with pytest.raises(WeightLoadError, match=r"model.safetensors: its config has fields this version does not "
                                              r"know: \['layer_scale', 'rope_theta'\]$"):
        load_model(tmp_path / 'export')


def test_failed_export_leaves_the_previous_one_intact(tmp_path):
    model = randomise_(VideoClassifier(timesformer_tiny())).eval()
    save_weights(model, tmp_path / 'ours')
    save_hf(model, tmp_path / 'hf')
    before = {path: path.read_bytes() for path in tmp_path.rglob('*') if path.is_file()}
    # Tied weights: safetensors refuses tensors that share memory, after the export has begun.
    tied = randomise_(VideoClassifier(timesformer_tiny(), class_names=list('abcd'))).eval()
    tied.backbone.blocks[1].ffn.fc1.weight = tied.backbone.blocks[0].ffn.fc1.weight
    for save, folder in ((save_weights, 'ours'), (save_hf, 'hf')):
        with pytest.raises(RuntimeError, match='share memory'):
            save(tied, tmp_path / folder)
    assert {path: path.read_bytes() for path in tmp_path.rglob('*') if path.is_file()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ['hf', 'ours']  # no staging left
    (tmp_path / 'file').write_text('keep')
    with pytest.raises(WeightLoadError, match='file: exists and is not a folder'):
        save_weights(model, tmp_path / 'file')
    assert (tmp_path / 'file').read_text() == 'keep'


def test_a_hand_edited_config_json_of_the_wrong_shape_is_one_clear_error(tmp_path):
    """Fails on the code where a config.json whose `config` is not an object, or whose field has the
    wrong type ("img_size": "32"), ended in an AttributeError or TypeError (`'32' % 8`) instead of a
    WeightLoadError naming the file and the field."""
    save_weights(randomise_(VideoClassifier(timesformer_tiny())), tmp_path / 'export')
    meta = json.loads((tmp_path / 'export' / 'config.json').read_text())
    for config, message in (([1], 'its config is list [1], not the fields of a model'),
                            ({**meta['config'], 'img_size': '32'}, "img_size must be an integer, got '32'"),
                            ({**meta['config'], 'pos_emb_type': None}, 'pos_emb_type must be a string, got None')):
        (tmp_path / 'export' / 'config.json').write_text(json.dumps({**meta, 'config': config}))
        with pytest.raises(WeightLoadError, match=re.escape(f'model.safetensors: {message}')):
            load_model(tmp_path / 'export')
    # An integer where the field is a number is one: configs saved with mlp_ratio 4 still load.
    (tmp_path / 'export' / 'config.json').write_text(json.dumps({**meta, 'config': {**meta['config'], 'mlp_ratio': 4}}))
    assert load_model(tmp_path / 'export').config.mlp_ratio == 4.0


def test_what_transformers_cannot_express_is_named():
    with pytest.raises(WeightLoadError, match='one LayerNorm eps .*norm_eps=1e-06') as error:
        hf_timesformer_config(timesformer_tiny(norm_eps=1e-5, attention_type='space_only'))
    assert 'divided or joint attention' in str(error.value)


def test_export_command_errors_are_one_line_and_exit_2(tmp_path):
    """Every case in one process (tests/command_lines.py). Fails on the code where refusals exited 1 as
    `export_weights.py: ...` (-hf on the Quick start's Conv3d model among them), not in the usage-error
    form, merged an export into any folder, wrote a guessed head count as a fact (a checkpoint
    without one is refused unless -num_heads gives it), took `-set img_size=abc` to a traceback, or
    refused a folder in the way only after loading (and, with -onnx, exporting) the weights."""
    seed = save_lightning(tmp_path / 'seed.ckpt', random_state(original_layout('divided_space_time')))
    path = save_lightning(tmp_path / 'space_only.ckpt', random_state(original_layout('space_only')))
    (tmp_path / 'taken').write_text('')
    (tmp_path / 'mine').mkdir()
    (tmp_path / 'mine' / 'notes.txt').write_text('keep')
    quick_start = save_weights(randomise_(VideoClassifier(timesformer_tiny(conv_type='Conv3d'))), tmp_path / 'conv3d')
    heads = ['-num_heads', str(HEADS)]
    cases = {
        'guessed': ([seed, tmp_path / 'guessed'], f'{seed}: does not record its head count; give num_heads '
                                                  f'(heads of width 64 would be 1)'),
        'no FIELD=VALUE': ([path, tmp_path / 'out', *heads, '-set', 'img_size'],
                           "argument -set/--set: takes FIELD=VALUE, got 'img_size'"),
        'not a field': ([path, tmp_path / 'out', *heads, '-set', 'dropout_ratio=0.1'],
                        "argument -set/--set: not a config field (one of arch, "),
        'bad value': ([path, tmp_path / 'out', *heads, '-set', 'activation=nope'], 'activation must be one of'),
        # Not an integer: the config's own check ran `'abc' % 8` and ended in a TypeError's traceback.
        'not an integer': ([path, tmp_path / 'out', *heads, '-set', 'img_size=abc'],
                           f"{path}: img_size must be an integer, got 'abc'"),
        'not a boolean': ([path, tmp_path / 'out', *heads, '-set', 'use_learnable_pos_emb=1'],
                          f'{path}: use_learnable_pos_emb must be true or false, got 1'),
        'a file in the way': ([path, tmp_path / 'taken' / 'out', *heads], f'{tmp_path / "taken"}'),
        'a folder of other files': ([path, tmp_path / 'mine', *heads], f'{tmp_path / "mine"}: not empty and not an '
                                                                       f'earlier export (it holds notes.txt)'),
        'conv3d to transformers': ([quick_start, tmp_path / 'out', '-hf'],
                                   '-hf: transformers TimeSformer needs Conv2d patches (this model has Conv3d '
                                   'tubelets of 2 frames)'),
        'extra argument': ([path, tmp_path / 'out', 'more'], 'unrecognized arguments: more'),
    }
    results = run_in_one_process('export_weights.py', {'given': [seed, tmp_path / 'given', *heads],
                                                        **{name: case for name, (case, _) in cases.items()}})
    assert results['given']['code'] == 0, results['given']['stderr'][-2000:]
    for name, (_, message) in cases.items():
        lines = [line for line in results[name]['stderr'].splitlines() if line.startswith('export_weights.py')]
        assert results[name]['code'] == 2 and len(lines) == 1, (name, results[name]['stderr'][-2000:])
        assert lines[0].startswith('export_weights.py: error: ') and message in lines[0], (name, lines)
        assert 'Traceback' not in results[name]['stderr'], name
    assert not (tmp_path / 'out').exists() and (tmp_path / 'mine' / 'notes.txt').read_text() == 'keep'
    # A folder in the way is refused before the weights are read (an ONNX export of a large model takes
    # minutes): no summary line of a load came first.
    for name in ('a file in the way', 'a folder of other files'):
        assert 'Loaded' not in results[name]['stderr'], (name, results[name]['stderr'])
    assert not (tmp_path / 'guessed').exists()
    assert json.loads((tmp_path / 'given' / 'config.json').read_text())['config']['num_heads'] == HEADS
    clip = video()
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / 'given')(clip), load_model(seed, num_heads=HEADS)(clip))


def test_an_export_replaces_an_earlier_one_whole_with_the_usual_permissions(tmp_path):
    """Fails on the code that merged a new export into the files of an earlier one and wrote
    model.safetensors 0600 beside a 0644 config.json."""
    model = randomise_(VideoClassifier(timesformer_tiny(), preprocessing=Preprocessing(num_frames=4, img_size=32)))
    save_hf(model, tmp_path / 'out')
    assert (tmp_path / 'out' / 'preprocessor_config.json').is_file()
    save_weights(model, tmp_path / 'out')
    assert sorted(path.name for path in (tmp_path / 'out').iterdir()) == ['config.json', 'model.safetensors']
    assert [path.name for path in tmp_path.iterdir()] == ['out']  # no staging folder left
    mask = os.umask(0o022)
    os.umask(mask)
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in (tmp_path / 'out', *(tmp_path / 'out').iterdir())}
    assert modes == {'out': 0o777 & ~mask, 'config.json': 0o666 & ~mask, 'model.safetensors': 0o666 & ~mask}


def test_a_pretraining_checkpoint_is_exported_only_as_it_was_trained(tmp_path):
    """Fails on the code where `-hf -set ...` or `-hf -num_heads` on a masked-autoencoding checkpoint
    was dropped without a word (the folder written with the trained sizes), and where the export
    without -hf told the user to pass `drop_head=True`, which the command has no flag for."""
    from pretrain_trainer import LitMaskedAutoencoder
    from video_transformer import videomae_tiny
    module = LitMaskedAutoencoder(videomae_tiny(), Preprocessing(num_frames=4, img_size=32).to_dict(),
                                  decoder_dim=16, decoder_depth=1, decoder_num_heads=2)
    checkpoint = tmp_path / 'pretrained.ckpt'
    torch.save({'state_dict': module.state_dict(), 'hyper_parameters': dict(module.hparams)}, checkpoint)
    cases = {
        'as ours': ([checkpoint, tmp_path / 'ours'], f'{checkpoint}: a masked-autoencoding checkpoint '
                                                     f'(model_pretrain.py -objective videomae) holds no classifier: '
                                                     f'-hf writes it as a transformers VideoMAEForPreTraining folder'),
        'onnx': ([checkpoint, tmp_path / 'ours', '-onnx'], f'{checkpoint}: a masked-autoencoding checkpoint'),
        '-set': ([checkpoint, tmp_path / 'hf', '-hf', '-set', 'img_size=64'],
                 '-set: a masked-autoencoding checkpoint is written to transformers as it was trained'),
        '-num_heads': ([checkpoint, tmp_path / 'hf', '-hf', '-num_heads', '4'],
                       '-num_heads: a masked-autoencoding checkpoint is written to transformers as it was trained'),
        'hf': ([checkpoint, tmp_path / 'hf', '-hf'], None),
    }
    results = run_in_one_process('export_weights.py', {name: flags for name, (flags, _) in cases.items()})
    for name, (_, message) in cases.items():
        result = results[name]
        assert 'Traceback' not in result['stderr'], (name, result['stderr'][-2000:])
        if message is None:
            assert result['code'] == 0, result['stderr'][-2000:]
            continue
        lines = result['stderr'].strip().splitlines()
        assert result['code'] == 2 and lines == [line for line in lines if line.startswith('export_weights.py')]
        assert len(lines) == 1 and lines[0].startswith(f'export_weights.py: error: {message}'), (name, lines)
    assert not (tmp_path / 'ours').exists()
    assert json.loads((tmp_path / 'hf' / 'config.json').read_text())['image_size'] == 32


def test_every_activation_has_one_transformers_name_read_back_as_itself():
    """One table each way in weight_formats: fails if an activation of ours has no transformers name
    (save_hf would end in a KeyError), if the name written reads back as another activation, or on the
    code where the pretraining export refused every activation but GELU that the classifier export wrote."""
    from pretraining_export import hf_videomae_pretraining_config
    from transformer import ACTIVATIONS
    from video_transformer import videomae_tiny
    from weight_formats import FROM_HF_ACTIVATION, TO_HF_ACTIVATION
    assert set(TO_HF_ACTIVATION) == set(ACTIVATIONS)
    for activation, name in TO_HF_ACTIVATION.items():
        assert FROM_HF_ACTIVATION[name] == activation
        config = hf_videomae_pretraining_config(videomae_tiny(activation=activation), 16, 1, 2, True)
        assert config['hidden_act'] == name
