"""model_pretrain.py under a careful user's mistakes and outside faults: resumes with other flags,
two runs of one experiment, a full disk, Ctrl-C; real processes and files throughout."""
import json
import re
import shlex
import signal
import subprocess
import sys

import pytest
import torch

from command_lines import run_in_one_process
from test_training_cli import REPOSITORY, TINY, demo_flags, run_dir, train, wait_for


def one_error_line(result):
    lines = [line for line in result['stderr'].splitlines() if line.strip()]
    assert result['code'] == 2 and 'Traceback' not in result['stderr'], result['stderr'][-2000:]
    assert len(lines) == 1 and lines[0].startswith('model_pretrain.py: error: '), lines
    return lines[0]


def test_a_resume_continues_its_checkpoint_and_refuses_flags_that_differ(demo_data, tmp_path):
    """Fails on the code that trained on with the checkpoint's lr 0.005 under a tag, hparams.yaml and
    checkpoint saying -lr 0.01, stopped -epoch and -num_frames below the checkpoint's with
    MisconfigurationException and size-mismatch tracebacks, and rewrote a finished run's summary."""
    flags = [*demo_flags(demo_data), *TINY, '-root_dir', tmp_path, '-epoch', '2']
    first = train(*flags)
    assert first.returncode == 0, first.stderr[-3000:]
    run = run_dir(tmp_path)
    last = run / 'ckpt' / 'last.ckpt'
    other_tag = run.name.replace('_lr_0.005_', '_lr_0.01_')
    cases = {
        'lr': ([*flags, '-resume', last, '-lr', '0.01'], f'-lr 0.01: the checkpoint {last} was trained with 0.005'),
        'epoch': ([*flags, '-resume', '-epoch', '1'], f'-epoch 1: the checkpoint {last} has trained 2 epochs'),
        'frames': ([*flags, '-resume', '-num_frames', '8'], f'-num_frames 8: the checkpoint {last} was trained '
                                                            f'with 4'),
        'other tag': ([*flags, '-resume', '-lr', '0.01'],
                      f'-resume: no checkpoint in {tmp_path / "results" / other_tag / "ckpt"}; the same experiment '
                      f'has one with -lr 0.005 (here 0.01): -resume {last}'),
    }
    before = sorted(path.name for path in (run / 'ckpt').iterdir())
    results = run_in_one_process('model_pretrain.py', {name: case for name, (case, _) in cases.items()})
    for name, (_, expected) in cases.items():
        assert expected in one_error_line(results[name]), name
    assert [path.name for path in (tmp_path / 'results').iterdir()] == [run.name]  # nothing started
    assert sorted(path.name for path in (run / 'ckpt').iterdir()) == before
    # Without the flags a resume takes the checkpoint's (frames, lr, batch size...), and says so.
    resumed = train(*demo_flags(demo_data), '-root_dir', tmp_path, '-pretrain', 'none', '-num_workers', '0',
                    '-accelerator', 'cpu', '-resume', last, '-epoch', '3')
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f'Resuming {last} after 2 epochs, 8 steps; training to epoch 3' in resumed.stdout
    assert json.loads((run / 'log' / 'summary.json').read_text())['steps'] == 12
    assert 'lr: 0.005' in (run / 'log' / 'csv' / 'version_1' / 'hparams.yaml').read_text()
    # Nothing left to train: the run stays as it is. The code before restored it, trained nothing and
    # rewrote summary.json with best_val_top1 null.
    summary = (run / 'log' / 'summary.json').read_bytes()
    assert json.loads(summary)['best_val_top1'] is not None
    again = train(*flags, '-resume', '-epoch', '3')
    assert again.returncode == 0 and 'Traceback' not in again.stderr, again.stderr[-3000:]
    assert again.stdout.splitlines()[-1] == (
        f"Nothing left to train: {last} has trained 3 epochs, 12 steps, of -epoch 3; the run's results stay in "
        f"{run} (a larger -epoch trains on)")
    assert (run / 'log' / 'summary.json').read_bytes() == summary


def test_a_second_run_of_a_live_experiment_stops_and_a_dead_ones_lock_is_free(demo_data, tmp_path):
    """Fails on the code where the second run moved the live first run's folder to <tag>.1 (the first
    then named a checkpoint that was not there) and died on the CSV logger."""
    flags = [*demo_flags(demo_data), *TINY, '-root_dir', tmp_path]
    first = train(*flags, '-epoch', '100', wait=False)
    try:
        wait_for('results/*/ckpt/last.ckpt', tmp_path, first)
        run = run_dir(tmp_path)
        second = train(*flags, '-epoch', '1')
        assert second.returncode == 2 and 'Traceback' not in second.stderr, second.stderr[-3000:]
        assert second.stderr.splitlines()[-1] == (
            f'model_pretrain.py: error: {run} is in use by a running training (PID {first.pid}); wait for it to '
            f'end, or give other flags or another -root_dir')
        assert [path.name for path in (tmp_path / 'results').iterdir()] == [run.name]
        assert first.poll() is None  # still training, in its own folder
    finally:
        first.kill()
        first.wait()
    # The kernel released the killed run's lock: a new run keeps its results beside its own.
    third = train(*flags, '-epoch', '1')
    assert third.returncode == 0, third.stderr[-3000:]
    assert (tmp_path / 'results' / f'{run.name}.1' / 'ckpt' / 'last.ckpt').is_file()
    assert json.loads((run / 'log' / 'summary.json').read_text())['steps'] == 4


# Where tmpfs cannot be mounted (no root), the full disk is this wrapper: model_pretrain.py run with
# open() giving, for checkpoint files below FOLDER, a file whose writes past BUDGET bytes raise
# ENOSPC as a full disk's write() does.
ENOSPC_AFTER_BUDGET = '''
import builtins, errno, os, runpy, sys
folder, budget = sys.argv.pop(1), int(sys.argv.pop(1))
written = [0]
real_open = builtins.open
class FillingFile:
    def __init__(self, handle):
        self._handle = handle
    def write(self, data):
        written[0] += len(data)
        if written[0] > budget:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._handle.write(data)
    def __getattr__(self, name):
        return getattr(self._handle, name)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        self._handle.close()
def filling_open(file, mode='r', *args, **kwargs):
    handle = real_open(file, mode, *args, **kwargs)
    below = isinstance(file, (str, os.PathLike)) and os.path.abspath(file).startswith(folder)
    return FillingFile(handle) if below and 'w' in mode and str(file).endswith('.partial') else handle
builtins.open = filling_open
sys.argv[0] = 'model_pretrain.py'
runpy.run_path('model_pretrain.py', run_name='__main__')
'''
# One tiny checkpoint is about 400 kB: the disk holds the first last.ckpt and the logs, not a second.
SMALL_DISK = 700 * 1024


@pytest.fixture
def full_disk_run(tmp_path):
    """(root_dir, a function running model_pretrain.py with flags): a real 700 KiB tmpfs where mounting
    is allowed, else ENOSPC_AFTER_BUDGET."""
    disk = tmp_path / 'disk'
    disk.mkdir()
    mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={SMALL_DISK}', 'tmpfs', str(disk)],
                             capture_output=True).returncode == 0
    if mounted:
        yield disk, train
        subprocess.run(['umount', str(disk)], check=True)
        return

    def wrapped(*flags):
        return subprocess.run([sys.executable, '-c', ENOSPC_AFTER_BUDGET, str(disk), str(SMALL_DISK),
                               *map(str, flags)], cwd=REPOSITORY, capture_output=True, text=True, timeout=600)
    yield disk, wrapped


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_last_checkpoint(demo_data, full_disk_run):
    """Fails on the code that stopped with a 50-line chained traceback (RuntimeError from torch's
    writer over OSError ENOSPC)."""
    disk, run = full_disk_run
    listed = ['-train_data_path', demo_data / 'train.txt', '-class_map', demo_data / 'classmap.json']
    result = run(*listed, *TINY, '-root_dir', disk, '-epoch', '3')
    assert result.returncode == 1 and 'Traceback' not in result.stderr, result.stderr[-3000:]
    last = run_dir(disk) / 'ckpt' / 'last.ckpt'
    line = result.stderr.splitlines()[-1]
    assert re.fullmatch(rf'model_pretrain\.py: cannot save {re.escape(str(last))}: No space left on device '
                        rf'\([\d.]+ MiB free there\); the previous last\.ckpt is kept', line), line
    assert torch.load(last, weights_only=True)['global_step'] == 4  # epoch 0's, whole
    assert not list(last.parent.glob('.*.partial'))


def test_ctrl_c_in_training_exits_130_naming_the_checkpoint_and_the_resume_command(demo_data, tmp_path):
    """Fails on the code where Ctrl-C exited 1 (Lightning's graceful shutdown) with no word of what
    to resume."""
    flags = [*demo_flags(demo_data), *TINY, '-root_dir', tmp_path, '-epoch', '100']
    running = train(*flags, wait=False)
    (last,) = wait_for('results/*/ckpt/last.ckpt', tmp_path, running)
    running.send_signal(signal.SIGINT)
    out, err = running.communicate(timeout=120)
    assert running.returncode == 130 and 'Traceback' not in err, err[-3000:]
    line = out.splitlines()[-1]
    prefix = f'Stopped by Ctrl-C; the checkpoints are kept, the newest {last}; continue with: '
    assert line.startswith(prefix), line
    command = shlex.split(line[len(prefix):])
    assert command[:2] == ['python', 'model_pretrain.py'] and command[-2:] == ['-resume', str(last)]
    assert command[2:-2] == list(map(str, flags))


def test_a_run_without_validation_or_test_data_says_so(demo_data, tmp_path):
    """Fails on the summary line 'best val top-1 n/a / top-5 n/a (epoch None); ... of None videos'."""
    result = train('-train_data_path', demo_data / 'train.txt', '-class_map', demo_data / 'classmap.json', *TINY,
                   '-root_dir', tmp_path, '-epoch', '1')
    assert result.returncode == 0, result.stderr[-3000:]
    (done,) = [line for line in result.stdout.splitlines() if line.startswith('Done in ')]
    log = run_dir(tmp_path) / 'log'
    assert done.split(': ', 1)[1] == f'no validation data; no test data; {log / "summary.json"}, {log / "curves.png"}'


# A Ctrl-C that lands while an object is freed: Python prints the KeyboardInterrupt raised in its
# __del__ as ignored and goes on. decord frees its video readers there, several times a step.
CTRL_C_IN_A_DESTRUCTOR = '''
import os, signal, sys, time
import pytorch_lightning as pl
import torch
from run_outputs import CtrlC

class Reader:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)

class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
    def training_step(self, batch, index):
        if self.global_step == 2:
            Reader()
        return self.layer(batch[0]).sum()
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(64, 1)), batch_size=1)
trainer = pl.Trainer(max_steps=40, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, callbacks=[CtrlC()] if sys.argv[1] == 'with' else [])
try:
    trainer.fit(Tiny(), data)
except SystemExit:
    pass
print('steps', trainer.global_step)
'''


def test_one_ctrl_c_stops_training_even_inside_a_destructor(tmp_path):
    """Fails without run_outputs.CtrlC (the code before it): the KeyboardInterrupt raised while a
    reader was freed was dropped and the run trained on."""
    steps = {}
    for callbacks in ('without', 'with'):
        done = subprocess.run([sys.executable, '-c', CTRL_C_IN_A_DESTRUCTOR, callbacks], cwd=REPOSITORY,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        steps[callbacks] = int(done.stdout.split('steps ')[-1])
    assert steps == {'without': 40, 'with': 3}
