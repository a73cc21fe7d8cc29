"""Our export folder, written atomically and read back exactly, and the export command's errors."""
import json

import pytest
import torch

from command_lines import run_in_one_process
from layouts import HEADS, random_state, save_lightning, seed_layout, video
from model_loading import load_model
from preprocessing import Preprocessing
from reference import randomise_
from video_transformer import VideoClassifier, timesformer_tiny, vivit_tiny
from weight_export import hf_timesformer_config, save_hf_timesformer, save_weights
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


def test_failed_export_leaves_the_previous_one_intact(tmp_path):
    model = randomise_(VideoClassifier(timesformer_tiny())).eval()
    save_weights(model, tmp_path / 'ours')
    save_hf_timesformer(model, tmp_path / 'hf')
    before = {path: path.read_bytes() for path in tmp_path.rglob('*') if path.is_file()}
    # Tied weights: safetensors refuses tensors that share memory, after the export has begun.
    tied = randomise_(VideoClassifier(timesformer_tiny(), class_names=list('abcd'))).eval()
    tied.backbone.blocks[1].ffn.fc1.weight = tied.backbone.blocks[0].ffn.fc1.weight
    for save, folder in ((save_weights, 'ours'), (save_hf_timesformer, 'hf')):
        with pytest.raises(RuntimeError, match='share memory'):
            save(tied, tmp_path / folder)
    assert {path: path.read_bytes() for path in tmp_path.rglob('*') if path.is_file()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ['hf', 'ours']  # no staging left
    (tmp_path / 'file').write_text('keep')
    with pytest.raises(WeightLoadError, match='file: exists and is not a folder'):
        save_weights(model, tmp_path / 'file')
    assert (tmp_path / 'file').read_text() == 'keep'


def test_what_transformers_cannot_express_is_named():
    with pytest.raises(WeightLoadError, match='one LayerNorm eps .*norm_eps=1e-06') as error:
        hf_timesformer_config(timesformer_tiny(norm_eps=1e-5, attention_type='space_only'))
    assert 'divided or joint attention' in str(error.value)


def test_the_export_command_never_guesses_and_says_mistakes_in_one_line(tmp_path):
    """Every case in one process (tests/command_lines.py). A checkpoint without its head count is
    refused unless -num_heads gives it (a guess is never written as a fact); bad -set values and an
    output below a file are one line with their exit status."""
    seed = save_lightning(tmp_path / 'seed.ckpt', random_state(seed_layout('divided_space_time')))
    space_only = save_lightning(tmp_path / 'space_only.ckpt', random_state(seed_layout('space_only')))
    (tmp_path / 'taken').write_text('')
    given = ['-num_heads', str(HEADS)]
    cases = {  # name: (arguments, exit status, the error line's text)
        'guessed': ([seed, tmp_path / 'guessed'], 1, f'export_weights.py: {seed}: does not record its head count; '
                                                     f'give num_heads (heads of width 64 would be 1)'),
        'given': ([seed, tmp_path / 'given', *given], 0, None),
        'set without a value': ([space_only, tmp_path / 'out', *given, '-set', 'img_size'], 2,
                                "argument -set/--set: takes FIELD=VALUE, got 'img_size'"),
        'set of no field': ([space_only, tmp_path / 'out', *given, '-set', 'dropout_ratio=0.1'], 2,
                            "argument -set/--set: 'dropout_ratio' is not a config field"),
        'set of a bad value': ([space_only, tmp_path / 'out', *given, '-set', 'activation=nope'], 1,
                               'activation must be one of'),
        'output below a file': ([space_only, tmp_path / 'taken' / 'out', *given], 1, 'taken/out'),
    }
    results = run_in_one_process('export_weights.py', {name: arguments for name, (arguments, _, _) in cases.items()})
    for name, (_, code, message) in cases.items():
        result = results[name]
        errors = [line for line in result['stderr'].splitlines() if line.startswith('export_weights.py')]
        assert result['code'] == code and 'Traceback' not in result['stderr'], (name, result['stderr'][-2000:])
        if message is None:
            assert errors == [], name
        else:
            assert len(errors) == 1 and message in errors[0], (name, errors)
    assert not (tmp_path / 'guessed').exists() and not (tmp_path / 'out').exists()
    assert results['guessed']['stderr'].splitlines()[-1] == cases['guessed'][2]
    assert json.loads((tmp_path / 'given' / 'config.json').read_text())['config']['num_heads'] == HEADS
    clip = video()
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / 'given')(clip), load_model(seed, num_heads=HEADS)(clip))
