"""What a training run shows and leaves behind: a lock on its folder, a progress bar with short
metric names, checkpoints written atomically, one more on SIGTERM, and its CSV logs read back and
drawn as curves in a PNG."""
import csv
import fcntl
import math
import os
import shutil
import signal
from pathlib import Path

import pytorch_lightning as pl
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities.exceptions import SIGTERMException

from utils import atomic_write


# The file in a run folder whose flock says a live process writes there, and which holds its PID.
RUN_LOCK = '.lock'


class RunFolderBusy(Exception):
    """Another live process holds the run folder's lock."""


def lock_run_folder(run_dir):
    """Hold run_dir's lock for the rest of this process: an flock on run_dir/RUN_LOCK, which the kernel
    releases when the process ends, however it ends. Returns the open lock file (keep a reference);
    RunFolderBusy naming the folder and the holder's PID when a live process has it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / RUN_LOCK, 'a+')
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or 'unknown'
        handle.close()
        raise RunFolderBusy(f'{run_dir} is in use by a running training (PID {holder}); wait for it to end, '
                            f'or give other flags or another -root_dir') from None
    handle.seek(0)
    handle.truncate()
    handle.write(f'{os.getpid()}\n')
    handle.flush()
    return handle


def holds_results(run_dir):
    """Whether run_dir holds anything but its lock file: an earlier run's results."""
    return run_dir.is_dir() and any(path.name != RUN_LOCK for path in run_dir.iterdir())


class CompactProgressBar(TQDMProgressBar):
    """Lightning's bar on one line: loss, top-1, the learning rate in scientific notation and the step
    time, where the default shows every logged name in full and rounds a small lr to 0.000."""

    SHOWN = {'train/loss': ('loss', '{:.3f}'), 'train/top1_step': ('top1', '{:.3f}'),
             'train/lr': ('lr', '{:.2e}'), 'train/step_time': ('step', '{:.2f}s')}

    def get_metrics(self, trainer, pl_module):
        metrics = super().get_metrics(trainer, pl_module)
        return {short: form.format(float(metrics[name])) for name, (short, form) in self.SHOWN.items()
                if name in metrics}

    def on_exception(self, trainer, pl_module, exception):
        # Lightning leaves its bars open when a run stops on an error or a signal: closing them ends
        # their line, so the line that says why the run stopped starts on its own.
        for bar in (self._train_progress_bar, self._val_progress_bar, self._test_progress_bar):
            if bar is not None:
                bar.close()


class CheckpointSaveError(Exception):
    """A checkpoint could not be written (a full disk, a lost mount); the message is one line."""


def _os_error(error):
    """The OSError behind `error` (torch's writer wraps a failed write in a RuntimeError), or None."""
    while error is not None and not isinstance(error, OSError):
        error = error.__cause__ or error.__context__
    return error


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint beside its destination, syncs it to disk, then renames it into place, so a
    crash, a kill or a full disk while saving never leaves a truncated file where a good one was; a
    write that fails is CheckpointSaveError naming the file and the free space. Reads with
    weights_only=True: a checkpoint holds tensors and plain types only."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        path = Path(path)
        try:
            with atomic_write(path, 'wb') as handle:
                torch.save(checkpoint, handle)
        except (OSError, RuntimeError) as error:
            cause = _os_error(error)
            if cause is None:
                raise
            free = shutil.disk_usage(path.parent).free
            kept = f'the previous {path.name} is kept' if path.exists() else 'the checkpoints written before are kept'
            raise CheckpointSaveError(f'cannot save {path}: {cause.strerror or cause} ({free / 2 ** 20:.1f} MiB '
                                      f'free there); {kept}') from None

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        return torch.load(path, map_location=map_location or 'cpu', weights_only=True)


class CheckpointOnSigterm(pl.Callback):
    """Saves a checkpoint to `path` when Lightning stops training on SIGTERM (a scheduler's
    preemption or `kill`), so `-resume` continues from the last finished step; `saved` says whether
    it did. Not while testing: the weights then are the best checkpoint's, not the run's last."""

    def __init__(self, path):
        self.path = str(path)
        self.saved = False

    def on_exception(self, trainer, pl_module, exception):
        if isinstance(exception, SIGTERMException) and trainer.state.fn == 'fit':
            trainer.save_checkpoint(self.path)
            self.saved = True


class CtrlC(pl.Callback):
    """Notes a Ctrl-C (`pressed`; Lightning turns it into exit status 1 and nothing is saved, as it
    may come in the middle of a step) and makes one Ctrl-C always stop the run: Python drops a
    KeyboardInterrupt raised inside a __del__ (decord frees its readers there, several times a
    step) with an 'Exception ignored' line, and training would go on; it is raised again at the
    end of the step."""

    def __init__(self):
        self.pressed = False
        self._previous = None

    def setup(self, trainer, pl_module, stage):
        self._previous = signal.signal(signal.SIGINT, self._press)

    def teardown(self, trainer, pl_module, stage):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _press(self, signum, frame):
        self.pressed = True
        raise KeyboardInterrupt

    def _stop_if_pressed(self, *args):
        if self.pressed:
            raise KeyboardInterrupt

    on_train_batch_end = on_validation_batch_end = on_test_batch_end = _stop_if_pressed


def read_metrics(path):
    """Rows of a Lightning CSVLogger metrics.csv as dicts of floats (absent values left out)."""
    with open(path, newline='') as handle:
        return [{key: float(value) for key, value in row.items() if value not in ('', None)}
                for row in csv.DictReader(handle)]


def read_run_metrics(csv_root):
    """The rows of every run of an experiment, from CSVLogger's csv_root/version_N/metrics.csv in
    order. A resumed run repeats the steps since its checkpoint: its rows replace the earlier run's
    from its first step on."""
    rows = []
    versions = Path(csv_root).glob('version_*/metrics.csv')
    for path in sorted(versions, key=lambda path: int(path.parent.name.removeprefix('version_'))):
        later = read_metrics(path)
        if later:
            first = min(row['step'] for row in later)
            rows = [row for row in rows if row['step'] < first] + later
    return rows


def epoch_means(rows, key):
    """The mean of key's values in each epoch of metrics rows (read_run_metrics), in epoch order."""
    by_epoch = {}
    for row in rows:
        if row.get(key) is not None:
            by_epoch.setdefault(int(row['epoch']), []).append(row[key])
    return [sum(values) / len(values) for _, values in sorted(by_epoch.items())]


def _series(rows, key, axis):
    points = [(row[axis], row[key]) for row in rows if key in row and axis in row]
    return [x for x, _ in points], [y for _, y in points]


def plot_curves(rows, png, top5=True):
    """Loss (train per step, val per epoch), accuracy (train and val top-1, val top-5 unless top5 is
    False, per epoch) and the learning rate from CSVLogger rows (read_run_metrics) -> a PNG of three
    panels."""
    figure = Figure(figsize=(15, 4))  # no pyplot: no GUI backend, nothing global
    loss_axis, accuracy_axis, lr_axis = figure.subplots(1, 3)
    for key, label in (('train/loss', 'train (step)'), ('val/loss', 'val')):
        steps, values = _series(rows, key, 'step')
        if values:
            loss_axis.plot(steps, values, label=label, marker='o' if key == 'val/loss' else None)
    loss_axis.set(title='loss', xlabel='step')
    for key, label in (('train/top1_epoch', 'train top-1'), ('val/top1', 'val top-1'), ('val/top5', 'val top-5')):
        if key == 'val/top5' and not top5:
            continue
        epochs, values = _series(rows, key, 'epoch')
        if values:
            accuracy_axis.plot([epoch + 1 for epoch in epochs], values, label=label, marker='o')
    accuracy_axis.set(title='accuracy', xlabel='epoch', ylim=(0, 1.02))
    accuracy_axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    steps, values = _series(rows, 'train/lr', 'step')
    lr_axis.plot(steps, values)
    lr_axis.set(title='learning rate', xlabel='step')
    for axis in (loss_axis, accuracy_axis):
        if axis.get_legend_handles_labels()[0]:
            axis.legend()
    figure.tight_layout()
    figure.savefig(png, dpi=100)


def percent(value):
    """A fraction as '87.5' for the summary line, or 'n/a'."""
    return 'n/a' if value is None or (isinstance(value, float) and math.isnan(value)) else f'{100 * value:.1f}'
