"""Our export folder, written atomically and read back exactly, and the export command's errors."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_export import hf_timesformer_config, save_hf
from layouts import HEADS, random_state, save_lightning, seed_layout, video
from model_loading import load_model
from our_format import save_weights
from preprocessing import Preprocessing
from reference import randomise_
from video_transformer import VideoClassifier, timesformer_tiny, vivit_tiny
from weight_formats import WeightLoadError

ROOT = Path(__file__).resolve().parents[1]


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


def test_what_transformers_cannot_express_is_named():
    with pytest.raises(WeightLoadError, match='one LayerNorm eps .*norm_eps=1e-06') as error:
        hf_timesformer_config(timesformer_tiny(norm_eps=1e-5, attention_type='space_only'))
    assert 'divided or joint attention' in str(error.value)


def export(tmp_path, checkpoint, output, *flags):
    return subprocess.run([sys.executable, 'export_weights.py', str(checkpoint), str(tmp_path / output), *flags],
                          cwd=ROOT, capture_output=True, text=True)


def test_the_export_command_never_writes_a_guessed_head_count(tmp_path):
    path = save_lightning(tmp_path / 'seed.ckpt', random_state(seed_layout('divided_space_time')))
    done = export(tmp_path, path, 'guessed')
    assert done.returncode == 1 and not (tmp_path / 'guessed').exists()
    assert done.stderr.splitlines()[-1] == (f'export_weights.py: {path}: does not record its head count; '
                                            f'give num_heads (heads of width 64 would be 1)')
    done = export(tmp_path, path, 'given', '-num_heads', str(HEADS))
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / 'given' / 'config.json').read_text())['config']['num_heads'] == HEADS
    clip = video()
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / 'given')(clip), load_model(path, num_heads=HEADS)(clip))


@pytest.mark.parametrize('flags, output, code, message', [
    (['-set', 'img_size'], 'out', 2, "argument -set/--set: takes FIELD=VALUE, got 'img_size'"),
    (['-set', 'dropout_ratio=0.1'], 'out', 2, "num_classes, head_dropout_p): ['dropout_ratio']"),
    (['-set', 'activation=nope'], 'out', 1, 'activation must be one of'),
    ([], 'taken/out', 1, 'taken/out'),  # a file where the output's parent folder should be
])
def test_export_command_errors_are_one_line(tmp_path, flags, output, code, message):
    path = save_lightning(tmp_path / 'seed.ckpt', random_state(seed_layout('space_only')))
    (tmp_path / 'taken').write_text('')
    done = export(tmp_path, path, output, '-num_heads', str(HEADS), *flags)
    errors = [line for line in done.stderr.splitlines() if line.startswith('export_weights.py')]
    assert done.returncode == code and len(errors) == 1 and message in errors[0], done.stderr
    assert 'Traceback' not in done.stderr
