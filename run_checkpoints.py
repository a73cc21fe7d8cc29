"""A training run's checkpoints: the newest to resume, the flags a checkpoint records and a resume
continues, and the command that continues an interrupted run."""
import shlex
import sys
from pathlib import Path

from command_line import UsageError
from run_settings import TAG, experiment_tag
from utils import counted
from weight_files import read_file

# The flags a checkpoint records, by where: the module's hyper-parameters, its model config
# (flag -> config field) and the DataModule's hyper-parameters.
MODULE_FLAGS = ('optim_type', 'lr', 'momentum', 'weight_decay', 'lr_schedule', 'warmup_epochs', 'min_lr',
                'milestones', 'layer_decay', 'label_smoothing', 'freeze_blocks', 'eval_metrics', 'nonfinite_loss')
CONFIG_FLAGS = {'arch': 'arch', 'attention_type': 'attention_type', 'conv_type': 'conv_type',
                'num_frames': 'num_frames', 'img_size': 'img_size', 'patch_size': 'patch_size',
                'embed_dims': 'embed_dims', 'num_heads': 'num_heads', 'depth': 'num_transformer_layers',
                'num_time_layers': 'num_time_transformer_layers', 'drop_path': 'drop_path_rate',
                'tube_size': 'tube_size'}
DATA_FLAGS = ('batch_size', 'num_samples_per_cls', 'frame_interval', 'window_seconds', 'sampling', 'num_clips',
              'num_crops', 'data_statics', 'crop_scale', 'color_jitter', 'auto_augment', 'mixup', 'mixup_alpha',
              'cutmix_alpha')


def latest_checkpoint(ckpt_dir):
    """The experiment's newest checkpoint to resume from: last.ckpt (epoch ends, SIGTERM) or a step one."""
    candidates = [path for path in Path(ckpt_dir).glob('*.ckpt') if not path.name.startswith('best')]
    return max(candidates, key=lambda path: path.stat().st_mtime, default=None)


def checkpoint_flags(checkpoint):
    """{flag: value} of the flags a Lightning checkpoint of model_pretrain.py records (MODULE_FLAGS,
    CONFIG_FLAGS, DATA_FLAGS, and -eval_metrics from freeze_backbone); those it lacks are left out."""
    module = checkpoint.get('hyper_parameters') or {}
    data = checkpoint.get('datamodule_hyper_parameters') or {}
    config = module.get('config') or {}
    flags = {name: module[name] for name in MODULE_FLAGS if name in module}
    if 'freeze_backbone' in module:  # the mode -eval_metrics picks, named for what it does (older: eval_metrics)
        flags['eval_metrics'] = 'linear_prob' if module['freeze_backbone'] else 'finetune'
    flags.update({flag: config[field] for flag, field in CONFIG_FLAGS.items() if field in config})
    flags.update({name: data[name] for name in DATA_FLAGS if name in data})
    return {name: list(value) if isinstance(value, tuple) else value for name, value in flags.items()}


def epochs_trained(checkpoint):
    """Epochs whose training batches a Lightning checkpoint has all seen."""
    loops = checkpoint.get('loops') or {}
    progress = (loops.get('fit_loop') or {}).get('epoch_progress', {}).get('current', {})
    return progress.get('processed', checkpoint.get('epoch', 0))


def continue_checkpoint(args, path):
    """Set the flags of `args` the user left out to the checkpoint's values; UsageError for one the
    user gave that differs, naming both values, and for an -epoch it has already passed. Returns
    (epochs trained, steps trained)."""
    checkpoint = read_file(path)
    if not isinstance(checkpoint, dict) or 'hyper_parameters' not in checkpoint:
        raise UsageError(f'-resume {path}: not a checkpoint of model_pretrain.py (no hyper-parameters)')
    for name, recorded in checkpoint_flags(checkpoint).items():
        value = list(getattr(args, name)) if isinstance(getattr(args, name), tuple) else getattr(args, name)
        if value == recorded:
            continue
        if name in args.given:
            raise UsageError(f'-{name} {value}: the checkpoint {path} was trained with {recorded}; a resume '
                             f'continues it as it was (leave -{name} out, or start a new run without -resume)')
        setattr(args, name, recorded)
    epochs, steps = epochs_trained(checkpoint), checkpoint.get('global_step', 0)
    if args.epoch < epochs:
        raise UsageError(f'-epoch {args.epoch}: the checkpoint {path} has trained {counted(epochs, "epoch")} already; '
                         f'a resume can only add epochs (give -epoch {epochs} or more)')
    return epochs, steps


def other_checkpoints(results, ckpt_dir, args, devices_per_node):
    """A line naming the newest checkpoint of the other experiment tags in `results` and the flags
    that differ from `args`, or '' when there is none."""
    found = [(path, folder) for folder in results.iterdir() if folder / 'ckpt' != ckpt_dir and folder.is_dir()
             for path in [latest_checkpoint(folder / 'ckpt')] if path is not None]
    if not found:
        return ''
    path, folder = max(found, key=lambda item: item[0].stat().st_mtime)
    match, mine = TAG.fullmatch(folder.name), TAG.fullmatch(experiment_tag(args, devices_per_node))
    differ = [f'-{name} {value} (here {mine[name]})' for name, value in match.groupdict().items()
              if value != mine[name]] if match and mine else []
    flags = f' with {", ".join(differ)}' if differ else ''
    return f'; the same experiment has one{flags}: -resume {path}'


def interrupted_line(checkpoint, argv=None):
    """What a Ctrl-C leaves: the newest checkpoint and the command that continues it."""
    if checkpoint is None:
        return 'Stopped by Ctrl-C before the first checkpoint; nothing to resume'
    given, flags = list(sys.argv[1:] if argv is None else argv), []
    while given:  # an earlier -resume [PATH] gives way to the newest checkpoint
        flag = given.pop(0)
        if flag in ('-resume', '--resume'):
            if given and not given[0].startswith('-'):
                given.pop(0)
        elif not flag.startswith(('-resume=', '--resume=')):
            flags.append(flag)
    command = shlex.join(['python', 'model_pretrain.py', *flags, '-resume', str(checkpoint)])
    return f'Stopped by Ctrl-C; the checkpoints are kept, the newest {checkpoint}; continue with: {command}'
