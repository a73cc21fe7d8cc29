"""model_pretrain.py as users run it: real processes, real checkpoints, real signals."""
import csv
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from command_lines import run_in_one_process
from demo.make_demo_dataset import CLASSES
from layouts import original_layout, random_state, save_lightning, timm_layout
from model_loading import load_model
from run_outputs import epoch_means, read_metrics, read_run_metrics

REPOSITORY = Path(__file__).resolve().parents[1]
# A small, fast recipe on the session's demo clips (4 train clips per class).
TINY = ['-num_frames', '4', '-frame_interval', '2', '-img_size', '32', '-patch_size', '8', '-embed_dims', '32',
        '-num_heads', '2', '-depth', '2', '-batch_size', '4', '-num_workers', '0', '-num_clips', '1',
        '-num_crops', '3', '-log_interval', '1', '-accelerator', 'cpu', '-pretrain', 'none']


def demo_flags(demo_data):
    return ['-train_data_path', str(demo_data / 'train.txt'), '-val_data_path', str(demo_data / 'val.txt'),
            '-test_data_path', str(demo_data / 'test.txt'), '-class_map', str(demo_data / 'classmap.json')]


def train(*flags, wait=True, **options):
    command = [sys.executable, str(REPOSITORY / 'model_pretrain.py'), *map(str, flags)]
    if not wait:
        return subprocess.Popen(command, cwd=REPOSITORY, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True, timeout=600, **options)


def run_dir(root):
    (found,) = (root / 'results').iterdir()
    return found


def test_the_demo_recipe_learns_motion_and_its_next_command_classifies(demo_run):
    # The session's demo run: the demo recipe on the demo's training clips, a quarter of its val
    # clips, 32 steps an epoch. The README says it passes 90% in epoch 4 to 6 of its 20.
    log = demo_run.log
    rows = read_run_metrics(log / 'csv')
    losses, val_top1 = epoch_means(rows, 'train/loss'), epoch_means(rows, 'val/top1')
    assert len(losses) == len(val_top1) == 20
    assert losses[-1] < losses[0] - 0.1, losses  # from ln 4 = 1.39 at the start
    assert max(val_top1) >= 0.9, val_top1  # chance is 0.25 on the 32 balanced val clips
    summary = json.loads((log / 'summary.json').read_text())
    assert summary['best_val_top1'] == max(val_top1) and summary['test_views'] == 6
    assert (log / 'curves.png').stat().st_size > 10_000
    # The test's report, as model_inference.py -eval writes it, from the same metrics as the summary.
    report = json.loads((log / 'test' / 'metrics.json').read_text())
    assert report['top1'] == pytest.approx(summary['test_top1']) and report['views'] == '2x3'
    per_class = list(csv.DictReader((log / 'test' / 'per_class_accuracy.csv').open()))
    assert [row['class'] for row in per_class] == list(CLASSES) and \
        sum(int(row['videos']) for row in per_class) == summary['test_videos']
    assert (log / 'test' / 'confusion_matrix.png').stat().st_size > 1000
    # The command the run prints last runs as printed and names a demo class.
    (next_line,) = [line for line in demo_run.stdout.splitlines() if line.startswith('Next: python ')]
    command = shlex.split(next_line[len('Next: python '):])
    classified = subprocess.run([sys.executable, *command], cwd=REPOSITORY, capture_output=True, text=True,
                                timeout=300)
    assert classified.returncode == 0, classified.stderr[-3000:]
    assert any(f'1. {name}' in classified.stdout for name in CLASSES), classified.stdout


def test_bad_flags_and_paths_stop_with_one_line_and_exit_2(demo_data, tmp_path):
    numbered = tmp_path / 'numbered.txt'
    numbered.write_text(''.join(f'{demo_data}/train/{name}/train_0000.mp4 {index}\n' for index, name in
                                enumerate(['moving_up', 'moving_down', 'growing', 'shrinking'])))
    blocker = tmp_path / 'a_file'
    blocker.write_text('')
    listed = demo_flags(demo_data)
    cases = {
        'missing list': (['-train_data_path', tmp_path / 'missing.txt'], 'missing.txt: no such file'),
        'num_class below a label': (['-train_data_path', numbered, '-num_class', '2'],
                                    'label 2 is out of range for 2 classes'),
        'unknown arch': (['-arch', 'resnet'], "argument -arch/--arch: invalid choice: 'resnet'"),
        'attention of another arch': ([*listed, '-attention_type', 'fact_encoder'],
                                      "attention_type must be one of"),
        'frames and tubelets': ([*listed, '-arch', 'vivit', '-attention_type', 'fact_encoder', '-num_frames', '5'],
                                'num_frames 5 is not a multiple of tube_size 2'),
        'root_dir not writable': ([*listed, '-root_dir', blocker / 'workspace'], f'-root_dir {blocker / "workspace"}'),
        'resume without checkpoint': ([*listed, '-root_dir', tmp_path / 'fresh', '-resume'], '-resume: no checkpoint'),
        'missing starting point': ([*listed, '-pretrain', tmp_path / 'vit.pth'], 'vit.pth'),
        'not a number': (['-lr', 'fast'], "argument -lr/--lr: invalid float value: 'fast'"),
        'fsdp on cpus': ([*listed, '-strategy', 'fsdp', '-devices', '2'],
                         '-accelerator cpu -devices 2 -strategy fsdp -precision 32-true: The strategy `fsdp` '
                         'requires a GPU accelerator'),
        'fsdp and clipping': ([*listed, '-strategy', 'fsdp', '-clip_grad', '1'], '-clip_grad with -strategy fsdp'),
        'devices in words': ([*listed, '-devices', 'two'], '-devices two: expected a number of devices'),
    }
    # Every case writes below tmp_path unless it names a -root_dir of its own (argparse keeps the last).
    results = run_in_one_process('model_pretrain.py', {name: [*TINY, '-root_dir', tmp_path / 'fresh', *flags]
                                                       for name, (flags, _) in cases.items()})
    for name, (_, expected) in cases.items():
        result = results[name]
        assert result['code'] == 2, (name, result['stderr'][-2000:])
        assert 'Traceback' not in result['stderr'], name
        lines = [line for line in result['stderr'].splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith('model_pretrain.py: error: ') and expected in lines[0], \
            (name, lines)
        assert not any((tmp_path / 'fresh' / 'results').glob('*/ckpt/*')), name  # stopped before training


def mae_encoder(state):
    """A timm-layout ViT as MAE-pytorch's pre-training checkpoint holds its encoder: `encoder.` keys,
    q and v biases apart, no class token and no position table (MAE's is fixed)."""
    encoder = {f'encoder.{key}': value for key, value in state.items()
               if not key.startswith(('head.', 'cls_token', 'pos_embed'))}
    for key in [key for key in encoder if key.endswith('.attn.qkv.bias')]:
        q_bias, _, v_bias = encoder.pop(key).chunk(3)
        encoder[key.replace('qkv.bias', 'q_bias')], encoder[key.replace('qkv.bias', 'v_bias')] = q_bias, v_bias
    return {'model': encoder}


def test_starting_points_bf16_and_failed_runs_through_the_command(demo_data, tmp_path):
    """-pretrain vit, mae and kinetics read the original's file names in ROOT_DIR/pretrain_model and
    start from them (with -lr 0 the run's checkpoint holds the file's weights); -precision
    bf16-mixed trains on a CPU and its checkpoint loads with load_model, logits finite; a non-finite
    loss and a training list of unreadable videos stop the run with one line and exit status 1.
    Fails if a -pretrain name looks elsewhere or is ignored, bf16 does not run, or a failed run ends
    in a traceback or another status."""
    vit = random_state(timm_layout())
    seed = random_state(original_layout('divided_space_time'))
    files = {'vit': ('vit_base_patch16_224.pth', vit, 'format timm'),
             'mae': ('pretrain_mae_vit_base_mask_0.75_400e.pth', mae_encoder(vit), 'format mae'),
             'kinetics': ('timesformer_k600.ckpt', None, 'format original')}
    for name, (file, state, _) in files.items():
        (tmp_path / name / 'pretrain_model').mkdir(parents=True)
        if state is None:
            save_lightning(tmp_path / name / 'pretrain_model' / file, seed)
        else:
            torch.save(state, tmp_path / name / 'pretrain_model' / file)
    broken = tmp_path / 'broken'
    broken.mkdir()
    (broken / 'train.txt').write_text(''.join(f'{broken}/{index}.mp4\t{CLASSES[index % 4]}\n' for index in range(8)))
    for index in range(8):
        (broken / f'{index}.mp4').write_bytes(b'not a video')
    train_only = ['-train_data_path', demo_data / 'train.txt', '-class_map', demo_data / 'classmap.json']
    cases = {name: [*train_only, *TINY, '-epoch', '1', '-lr', '0', '-pretrain', name, '-root_dir', tmp_path / name]
             for name in files}
    cases['bf16'] = [*demo_flags(demo_data), *TINY, '-epoch', '1', '-optim_type', 'adamw', '-precision', 'bf16-mixed',
                     '-root_dir', tmp_path / 'bf16']
    cases['nonfinite'] = [*train_only, *TINY, '-epoch', '1', '-lr', '1e30', '-momentum', '0',
                          '-root_dir', tmp_path / 'nonfinite']
    cases['unreadable'] = ['-train_data_path', broken / 'train.txt', '-class_map', demo_data / 'classmap.json', *TINY,
                           '-epoch', '1', '-root_dir', tmp_path / 'unreadable']
    results = run_in_one_process('model_pretrain.py', cases)
    for name, (file, _, detected) in files.items():
        result = results[name]
        assert result['code'] == 0, (name, result['stderr'][-3000:])
        assert f'from {tmp_path / name / "pretrain_model" / file}: {detected}' in result['stderr'], name
        (checkpoint,) = (tmp_path / name).glob('results/*/ckpt/last.ckpt')
        weights = torch.load(checkpoint, weights_only=True)['state_dict']
        started = weights['model.backbone.blocks.1.ffn.fc1.weight']
        expected = seed['model.transformer_layers.layers.1.ffns.0.layers.0.0.weight'] if name == 'kinetics' \
            else vit['blocks.1.mlp.fc1.weight']
        assert torch.equal(started, expected), name
    assert results['bf16']['code'] == 0, results['bf16']['stderr'][-3000:]
    assert 'precision bf16-mixed' in results['bf16']['stdout']
    summary = json.loads(next((tmp_path / 'bf16').glob('results/*/log/summary.json')).read_text())
    model = load_model(summary['checkpoint'])
    with torch.no_grad():
        assert torch.isfinite(model(torch.rand(2, 4, 3, 32, 32))).all()
    for name, expected in (('nonfinite', r'model_pretrain\.py: loss is (nan|inf) at step 1 \(epoch 0\); last good '),
                           ('unreadable', f'model_pretrain\\.py: {re.escape(str(broken / "train.txt"))}: 32 of 32 '
                                          'videos read could not be decoded')):
        result = results[name]
        assert result['code'] == 1 and 'Traceback' not in result['stderr'], (name, result['stderr'][-3000:])
        ours = [line for line in result['stderr'].splitlines() if line.startswith('model_pretrain.py')]
        assert len(ours) == 1 and re.match(expected, ours[0]) and result['stderr'].splitlines()[-1] == ours[0], \
            (name, ours)


@pytest.mark.slow
def test_compile_trains_through_the_command_and_its_checkpoint_loads(demo_data, tmp_path):
    """-compile: TorchDynamo traces the model (TORCH_LOGS=graph_code prints each graph it compiles), two
    steps train, and the checkpoint keeps the plain keys load_model reads. Fails if -compile is
    ignored or leaves the compiled wrapper's prefix in the checkpoint. About 1.5 min on 2 CPU cores,
    most of it compiling."""
    # TINY with later flags overriding it (argparse keeps the last): one block of width 16, 2 frames of 16 px.
    result = train('-train_data_path', demo_data / 'train.txt', '-class_map', demo_data / 'classmap.json', *TINY,
                   '-depth', '1', '-embed_dims', '16', '-num_frames', '2', '-img_size', '16', '-epoch', '1',
                   '-max_steps', '2', '-compile', '-root_dir', tmp_path, env={**os.environ, 'TORCH_LOGS': 'graph_code'})
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'TRACED GRAPH' in result.stderr
    summary = json.loads((run_dir(tmp_path) / 'log' / 'summary.json').read_text())
    assert summary['steps'] == 2
    model = load_model(summary['checkpoint'])
    assert model.config.num_transformer_layers == 1
    with torch.no_grad():
        assert torch.isfinite(model(torch.rand(2, 2, 3, 16, 16))).all()


def wait_for(path_glob, root, process, timeout=300):
    """Poll until a file matching path_glob exists below root; fail if the process ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(root.glob(path_glob))
        if found:
            return found
        if process.poll() is not None:
            pytest.fail(f'the run ended ({process.returncode}) before {path_glob}: {process.communicate()[1][-3000:]}')
        time.sleep(0.05)
    pytest.fail(f'no {path_glob} after {timeout} s')


def logged_steps(run):
    """The training steps a run's CSV logs hold, each once, over all its versions (resumed runs)."""
    return sorted(int(row['step']) for row in read_run_metrics(run / 'log' / 'csv') if 'train/loss' in row)


def test_killed_and_terminated_runs_resume_and_finish(demo_data, tmp_path):
    run_flags = [*demo_flags(demo_data), *TINY, '-root_dir', tmp_path]
    flags = [*run_flags, '-epoch', '3', '-save_ckpt_freq', '2']
    # SIGKILL once the first step checkpoint is on disk: at most the steps since it are lost.
    first = train(*flags, wait=False)
    wait_for('results/*/ckpt/step0000002.ckpt', tmp_path, first)
    first.kill()
    first.wait()
    ckpt = run_dir(tmp_path) / 'ckpt'
    assert torch.load(ckpt / 'step0000002.ckpt', weights_only=True)['global_step'] == 2
    # SIGTERM after the next step checkpoint: Lightning stops at the end of the step and we save.
    second = train(*flags, '-resume', wait=False)
    wait_for('results/*/ckpt/step0000006.ckpt', tmp_path, second)
    second.send_signal(signal.SIGTERM)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert 'Stopped by SIGTERM' in out and 'Traceback' not in err
    stopped_at = torch.load(ckpt / 'last.ckpt', weights_only=True)['global_step']
    assert stopped_at >= 6
    third = train(*flags, '-resume')
    assert third.returncode == 0, third.stderr[-3000:]
    run = run_dir(tmp_path)
    summary = json.loads((run / 'log' / 'summary.json').read_text())
    assert summary['steps'] == 3 * 4 and summary['epochs'] == 3  # 16 clips in batches of 4, 3 epochs
    # Each run went on from the last: three CSV versions, and every step logged once over them.
    second_steps = [row['step'] for row in read_metrics(run / 'log' / 'csv' / 'version_1' / 'metrics.csv')
                    if 'train/loss' in row]
    assert min(second_steps) == 2 and logged_steps(run) == list(range(12))
    # last.ckpt is the run's end, whether or not the last epochs improved val top-1.
    assert torch.load(ckpt / 'last.ckpt', weights_only=True)['global_step'] == 12
    assert summary['last_checkpoint'] == str(ckpt / 'last.ckpt')
    # A new run of the same tag without -resume keeps the earlier run's results beside its own.
    fourth = train(*run_flags, '-epoch', '1')
    assert fourth.returncode == 0, fourth.stderr[-3000:]
    assert f'moved it to {run}.1' in fourth.stderr
    assert json.loads((tmp_path / 'results' / f'{run.name}.1' / 'log' / 'summary.json').read_text())['steps'] == 12
    assert json.loads((run / 'log' / 'summary.json').read_text())['steps'] == 4


INTERRUPTED_SAVE = '''
import resource, signal, sys
import pytorch_lightning as pl
from data_trainer import VideoDataModule
from model_trainer import LitVideoClassifier
from run_outputs import AtomicCheckpointIO
from video_transformer import timesformer_tiny
demo, path = sys.argv[1:]
data = VideoDataModule(train_data_path=f'{demo}/train.txt', class_map=f'{demo}/classmap.json', num_frames=4,
                       frame_interval=2, img_size=32, batch_size=4, num_workers=0)
module = LitVideoClassifier(timesformer_tiny(), data.class_names, data.preprocessing.to_dict())
trainer = pl.Trainer(accelerator='cpu', max_steps=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, plugins=[AtomicCheckpointIO()])
trainer.fit(module, data)
trainer.save_checkpoint(path)
print('saved', module.model.head.fc.weight.sum().item(), flush=True)
module.model.head.fc.weight.data += 1  # what the next save holds differs from the saved one
# The next save is killed by the kernel (SIGXFSZ) half-way through writing its file.
size = __import__('os').path.getsize(path)
resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, size // 2))
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it to raise EFBIG; let the kernel kill
trainer.save_checkpoint(path)
print('not reached', flush=True)
'''


def test_a_save_killed_mid_write_leaves_the_previous_checkpoint(demo_data, tmp_path):
    path = tmp_path / 'last.ckpt'
    result = subprocess.run([sys.executable, '-c', INTERRUPTED_SAVE, str(demo_data), str(path)], cwd=REPOSITORY,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == -signal.SIGXFSZ, result.stderr[-3000:]
    assert 'not reached' not in result.stdout
    saved_sum = float(result.stdout.split('saved ')[1].split()[0])
    assert list(tmp_path.glob('.last.ckpt.partial'))  # the truncated write, beside the good file
    model = load_model(path)
    assert model.head.fc.weight.sum().item() == pytest.approx(saved_sum, abs=1e-6)


def test_two_process_ddp_fit_on_cpu(demo_data, tmp_path):
    # Odd numbers of val and test videos: Lightning's own sampler would repeat one to even out the ranks.
    # The second val video, rank 1's only one, cannot be read: rank 1 must still join the metrics' sync.
    # -activation_checkpointing without FSDP recomputes the blocks under DDP (it was ignored before).
    lines = {split: [f'{demo_data}/{line}' for line in (demo_data / f'{split}.txt').read_text().splitlines()]
             for split in ('train', 'val', 'test')}
    (tmp_path / 'broken.mp4').write_bytes(b'not a video')
    (tmp_path / 'val.txt').write_text('\n'.join([lines['val'][0], f'{tmp_path / "broken.mp4"}\tgrowing',
                                                 lines['val'][2]]) + '\n')
    (tmp_path / 'test.txt').write_text('\n'.join(lines['test'] + lines['val'][:1]) + '\n')
    result = train(*demo_flags(demo_data), '-val_data_path', tmp_path / 'val.txt', '-test_data_path',
                   tmp_path / 'test.txt', *TINY, '-epoch', '1', '-devices', '2', '-strategy', 'ddp',
                   '-activation_checkpointing', '-root_dir', tmp_path / 'runs')
    assert result.returncode == 0, result.stderr[-3000:]
    assert '; 2 blocks recomputed in backward; ' in result.stdout
    assert 'gpus_2' in run_dir(tmp_path / 'runs').name
    log = run_dir(tmp_path / 'runs') / 'log'
    summary = json.loads((log / 'summary.json').read_text())
    assert summary['steps'] == 2  # 16 clips over 2 ranks in batches of 4
    # Each val and test video read counted once over both ranks.
    assert [row['val/videos'] for row in read_run_metrics(log / 'csv') if 'val/videos' in row] == [2]
    assert summary['test_videos'] == 5 and 'views of 5 videos' in result.stdout
    assert load_model(summary['checkpoint']).class_names == ['moving_up', 'moving_down', 'growing', 'shrinking']
