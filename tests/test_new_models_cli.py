"""VideoMAE and V-JEPA 2 through the commands as a user runs them: a short real fit, classifying with its
checkpoint, evaluating, and exporting. Each command runs its cases for both models in one process."""
import json

import pytest
import torch

from command_lines import run_in_one_process
from model_loading import load_model
from test_training_cli import TINY, demo_flags

ARCHS = ('videomae', 'vjepa2')


@pytest.fixture(scope='module')
def trained(demo_data, tmp_path_factory):
    """{arch: last.ckpt} of a 3-step fit of each architecture on the demo clips."""
    root = tmp_path_factory.mktemp('runs')
    flags = [*TINY, '-embed_dims', '48', *demo_flags(demo_data), '-epoch', '1', '-max_steps', '3', '-recipe', 'demo']
    results = run_in_one_process('model_pretrain.py', {
        arch: [*flags, '-arch', arch, '-root_dir', root / arch] for arch in ARCHS})
    checkpoints = {}
    for arch, result in results.items():
        assert result['code'] == 0, result['stderr'][-3000:]
        assert f'Training {arch} joint_space_time' in result['stdout']
        (checkpoints[arch],) = (root / arch / 'results').glob('*/ckpt/last.ckpt')
    return checkpoints


def test_the_new_models_train_and_their_checkpoints_load(trained):
    """Fails if a fit of either model does not run, or its checkpoint does not rebuild the model."""
    for arch, checkpoint in trained.items():
        model = load_model(checkpoint)
        assert model.config.arch == arch and model.config.embed_dims == 48
        assert model.preprocessing.num_frames == 4
        with torch.no_grad():
            assert torch.isfinite(model(torch.rand(1, 4, 3, 32, 32))).all()


def test_the_new_models_classify_evaluate_and_export(trained, demo_data, tmp_path):
    """Inference, -eval and the export of each model's checkpoint: fails if any command refuses a new
    model, or an export's logits differ from its checkpoint's."""
    video = next((demo_data / 'test').rglob('*.mp4'))
    cases = {}
    for arch, checkpoint in trained.items():
        cases[f'{arch}-video'] = ['-pretrain', checkpoint, '-video_path', video, '-json']
        cases[f'{arch}-eval'] = ['-pretrain', checkpoint, '-eval', demo_data / 'test.txt', '-out', tmp_path / arch]
        cases[f'{arch}-attention'] = ['-pretrain', checkpoint, '-video_path', video, '-save_vis',
                                      tmp_path / f'{arch}.png', '-attention']
    results = run_in_one_process('model_inference.py', cases)
    for name, result in results.items():
        assert result['code'] == 0, (name, result['stderr'][-3000:])
    for arch in ARCHS:
        record = json.loads(results[f'{arch}-video']['stdout'].splitlines()[0])
        assert len(record['labels']) == 4 and abs(sum(record['probabilities']) - 1) < 1e-4
        metrics = json.loads((tmp_path / arch / 'metrics.json').read_text())
        assert metrics['videos'] == 4
        assert (tmp_path / f'{arch}.png').stat().st_size > 10_000
    # transformers' VideoMAE has one fc_norm eps, 1e-5: a model trained with MCG-NJU's 1e-6 is written with it.
    hf_flags = {'videomae': ['-set', 'final_norm_eps=1e-5'], 'vjepa2': []}
    cases = {}
    for arch, checkpoint in trained.items():
        cases[arch] = [checkpoint, tmp_path / f'{arch}-export']
        cases[f'{arch}-hf'] = [checkpoint, tmp_path / f'{arch}-hf', '-hf', *hf_flags[arch]]
    exports = run_in_one_process('export_weights.py', cases)
    clip = torch.rand(2, 4, 3, 32, 32)
    for name, result in exports.items():
        assert result['code'] == 0, (name, result['stderr'][-3000:])
    for arch, checkpoint in trained.items():
        with torch.no_grad():
            assert torch.equal(load_model(tmp_path / f'{arch}-export')(clip), load_model(checkpoint)(clip))
            hf = load_model(tmp_path / f'{arch}-hf')
            torch.testing.assert_close(hf(clip), load_model(checkpoint, **hf_overrides(arch))(clip), atol=1e-5, rtol=0)
        assert hf.class_names == load_model(checkpoint).class_names


def hf_overrides(arch):
    return {'final_norm_eps': 1e-5} if arch == 'videomae' else {}
