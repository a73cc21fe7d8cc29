"""Train a video transformer.

    python model_pretrain.py                       # a small TimeSformer on the demo dataset, a few minutes on a CPU
    python model_pretrain.py -lr 0.005 -epoch 15 -batch_size 8 -num_class 600 -frame_interval 32 \\
        -root_dir WORKSPACE -train_data_path train.txt -val_data_path val.txt -pretrain vit

Flags keep the original repository's single-dash spelling; `--flag` works too. Without
-train_data_path the demo dataset is used (generated into demo/data on first use) with the demo's
recipe; with it, the defaults are the original's Kinetics recipe (-recipe picks either explicitly).
Any flag overrides the recipe's defaults.
Results go to ROOT_DIR/results/<experiment tag>/{ckpt,log}.
"""
from python_check import check_python

check_python()  # before anything else, so an old Python stops with one line (keep this file 3.6-parseable)

import argparse  # noqa: E402  (after the Python check, as every later import)
import logging
import shlex
import signal
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.strategies import DDPStrategy, FSDPStrategy
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import MisconfigurationException, SIGTERMException

from command_line import Parser, UsageError, add_flag, error_line
from data_trainer import SkippedVideos, VideoDataModule
from dataset import UnreadableDatasetError
from demo.make_demo_dataset import make_demo_dataset
from evaluation import write_report
from frame_sampling import SAMPLINGS
from model_trainer import (EVAL_METRICS, LR_SCHEDULES, NONFINITE_POLICIES, OPTIMIZERS, LitVideoClassifier,
                           NonFiniteLossError, fsdp_settings, recompute_blocks_in_backward)
from pretrain_outputs import build_pretraining, check_pretraining_flags, report_pretraining
from pretrain_trainer import ReconstructionPictures
from run_checkpoints import continue_checkpoint, interrupted_line, latest_checkpoint, other_checkpoints
from run_outputs import (RUN_LOCK, AtomicCheckpointIO, CheckpointOnSigterm, CheckpointSaveError, CompactProgressBar,
                         CtrlC, RunFolderBusy, holds_results, lock_run_folder, percent, plot_curves, read_run_metrics)
from run_settings import (OBJECTIVES, PRETRAIN_FILES, RECIPES, apply_recipe, batch_scaled_lr, choose_precision,
                          count_devices, experiment_tag, milestones_line, resolve_devices)
from transformer import CONV_TYPES
from inference import resolve_weights
from preprocessing import DATA_STATICS
from utils import counted, write_json
from video_decoding import DECODERS
from video_transformer import ARCHITECTURES, VideoTransformerConfig
from weight_formats import WeightLoadError
from weight_init import init_from_pretrained_

REPOSITORY = Path(__file__).resolve().parent
DEMO_DIR = REPOSITORY / 'demo' / 'data'
ATTENTION_TYPES = tuple(dict.fromkeys(name for architecture in ARCHITECTURES.values()
                                      for name in architecture.attention_types))


def str_to_bool(text):
    """The original's `-mixup True` spelling, and a bare `-mixup`."""
    if text.lower() in ('true', '1', 'yes'):
        return True
    if text.lower() in ('false', '0', 'no'):
        return False
    raise argparse.ArgumentTypeError(f'expected True or False, got {text!r}')


def parse_args(argv=None):
    parser = Parser(description=__doc__.split('\n\n')[0], allow_abbrev=False,
                    formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split('\n\n', 1)[1])
    # Every flag whose default depends on the recipe (demo or Kinetics) defaults to None here.
    seed = parser.add_argument_group("the original repository's flags")
    for name, kind, text in (
            ('lr', float, 'base learning rate (not scaled by the batch size)'),
            ('epoch', int, 'epochs to train'),
            ('batch_size', int, 'clips per device and step'),
            ('num_workers', int, 'loader processes per device'),
            ('log_interval', int, 'steps between log rows'),
            ('num_samples_per_cls', int, 'at most this many training clips per class'),
            ('pretrain', str, 'starting point: none, vit, mae, kinetics (files in ROOT_DIR/pretrain_model), a path '
                              'or a Hugging Face Hub id'),
            ('frame_interval', int, 'frames between sampled frames'),
            ('seed', int, 'random seed'),
            ('root_dir', str, 'workspace: pretrain_model/ and results/ live here')):
        add_flag(seed, name, type=kind, help=text)
    add_flag(seed, 'num_class', type=int, dest='num_classes',
             help='classes; inferred from the class map or the labels when not given')
    add_flag(seed, 'gpus', type=int, nargs='+',
             help='GPU ids, or -1 for all (same as -accelerator gpu -devices)')
    add_flag(seed, 'train_data_path', help='training list, Kinetics CSV or folder per class; '
                                           'without it, the demo dataset')
    for split in ('val', 'test'):
        add_flag(seed, f'{split}_data_path', help=f'{split} annotations')

    model = parser.add_argument_group('model and data')
    add_flag(model, 'arch', choices=tuple(ARCHITECTURES))
    add_flag(model, 'attention_type', choices=ATTENTION_TYPES)
    add_flag(model, 'conv_type', choices=CONV_TYPES,
             help='patch embedding: per frame (Conv2d) or per tubelet of tube_size frames (Conv3d); '
                  "default: the arch's own (TimeSformer Conv2d, the others Conv3d)")
    for name, kind, text in (
            ('num_frames', int, 'frames per clip'), ('img_size', int, 'crop size in pixels'),
            ('patch_size', int, 'patch size in pixels'), ('embed_dims', int, 'width'),
            ('num_heads', int, 'attention heads'),
            ('depth', int, 'blocks (the spatial encoder for ViViT fact_encoder)'),
            ('num_time_layers', int, "ViViT fact_encoder's temporal blocks"),
            ('tube_size', int, 'tubelet depth in frames with -conv_type Conv3d'),
            ('drop_path', float, 'stochastic depth rate of the last block'),
            ('num_clips', int, 'test clips per video'), ('num_crops', int, 'test crops per clip (1 or 3)'),
            ('window_seconds', float, 'sample a window of this many seconds instead of num_frames x frame_interval')):
        add_flag(model, name, type=kind, help=text)
    add_flag(model, 'sampling', choices=SAMPLINGS, default='interval',
             help="interval: num_frames frames -frame_interval apart in a window; segments: one frame per equal part "
                  "of the whole video (Something-Something v2's protocol)")
    add_flag(model, 'data_statics', choices=tuple(DATA_STATICS),
             help='normalisation statistics (the original used inception: mean = std = 0.5)')
    add_flag(model, 'class_map', help='JSON name -> index, or one name per line')
    add_flag(model, 'data_root', help="folder the lists' relative video paths start from "
                                      "(default: the list's own folder)")
    add_flag(model, 'decoder', choices=DECODERS)

    recipe = parser.add_argument_group('recipe')
    add_flag(recipe, 'recipe', choices=tuple(RECIPES),
             help="whose defaults the other flags take: the demo's, the original's Kinetics recipe, "
                  "VideoMAE's fine-tuning or its pretraining (default: demo without -train_data_path, kinetics "
                  'with it, videomae with it and -arch videomae, videomae_pretrain with -objective videomae; '
                  'videomae_pretrain without -train_data_path: the demo pretraining)')
    add_flag(recipe, 'optim_type', choices=OPTIMIZERS)
    add_flag(recipe, 'lr_schedule', choices=LR_SCHEDULES)
    add_flag(recipe, 'milestones', type=int, nargs='+',
             help="multistep: epochs where lr drops 10x (default: the recipe's, scaled to -epoch)")
    for name, kind, text in (
            ('momentum', float, 'SGD momentum (nesterov)'), ('weight_decay', float, 'not on norms, biases, '
                                                                                      'class token, position tables'),
            ('warmup_epochs', float, 'linear warmup'), ('min_lr', float, 'cosine floor'),
            ('layer_decay', float, 'lr x layer_decay per block from the top (1: off)'),
            ('clip_grad', float, 'clip the gradient norm to this (0: off)'),
            ('label_smoothing', float, 'label smoothing of the loss'),
            ('mixup_alpha', float, 'mixup Beta(alpha, alpha)'), ('cutmix_alpha', float, 'CutMix Beta(alpha, alpha)'),
            ('color_jitter', float, 'colour jitter strength without auto_augment (0: off)'),
            ('freeze_blocks', int, 'partial fine-tune: freeze the patch embedding and the first N blocks'),
            ('head_init_scale', float, "with -pretrain: the new head's initial weights x this")):
        add_flag(recipe, name, type=kind, help=text)
    add_flag(recipe, 'crop_scale', type=float, nargs=2, metavar=('MIN', 'MAX'),
             help='area range of the random resized crop')
    add_flag(recipe, 'mixup', type=str_to_bool, nargs='?', const=True,
             help='mixup / CutMix of training clips')
    add_flag(recipe, 'auto_augment', help='RandAugment policy, e.g. rand-m9-n2')
    add_flag(recipe, 'eval_metrics', choices=EVAL_METRICS, default='finetune',
             help='linear_prob: train the head only, the backbone frozen in eval mode')
    add_flag(recipe, 'nonfinite_loss', choices=NONFINITE_POLICIES, default='stop',
             help='on a NaN or infinite loss: stop naming the last checkpoint, or skip the step')

    pretraining = parser.add_argument_group('self-supervised pretraining')
    add_flag(pretraining, 'objective', choices=OBJECTIVES,
             help="classify (default), or videomae: masked autoencoding of unlabelled clips (-train_data_path "
                  "a folder of videos or a list; -val_data_path, if given, a held-out reconstruction loss)")
    add_flag(pretraining, 'mask_ratio', type=float, help="videomae: share of each frame's patches hidden, the same "
                                                         'in every frame of a clip (tube masking)')
    add_flag(pretraining, 'decoder_depth', type=int, help='videomae: decoder blocks')
    add_flag(pretraining, 'decoder_dim', type=int, help='videomae: decoder width (heads of 64 channels)')
    add_flag(pretraining, 'norm_pix_loss', type=str_to_bool, nargs='?', const=True,
             help="videomae: predict each patch's pixels normalised by their own mean and std (True, False)")

    lightning = parser.add_argument_group('Lightning')
    add_flag(lightning, 'accelerator', default='auto', help='cpu, gpu, auto')
    add_flag(lightning, 'devices', help='number of devices, or auto (every GPU); default: '
                                        'auto, 1 for the demo')
    add_flag(lightning, 'num_nodes', type=int, default=1)
    add_flag(lightning, 'strategy', choices=('auto', 'ddp', 'fsdp'), default='auto')
    add_flag(lightning, 'activation_checkpointing', action='store_true',
             help='recompute each block in backward (less memory, about a third slower), any strategy')
    add_flag(lightning, 'precision', choices=('32-true', '16-mixed', 'bf16-mixed'),
             help='default: bf16-mixed (or 16-mixed) on GPUs, 32-true on CPUs')
    add_flag(lightning, 'accumulate_grad_batches', type=int, default=1)
    add_flag(lightning, 'max_steps', type=int, default=-1)
    add_flag(lightning, 'val_check_interval', type=float,
             help='validate every this many steps (> 1) or fraction of an epoch (<= 1)')
    add_flag(lightning, 'save_ckpt_freq', type=int, help='also save every this many steps '
                                                         '(0: at epoch ends only)')
    add_flag(lightning, 'resume', nargs='?', const='last',
             help="continue the experiment's last checkpoint, or the one given")
    add_flag(lightning, 'compile', action='store_true', help='torch.compile the model')
    args = parser.parse_args(argv)
    # Flags the user gave (a value other than the parser's default): a resume refuses those that
    # differ from its checkpoint and takes the checkpoint's for the others.
    args.given = frozenset(name for name, value in vars(args).items() if value != parser.get_default(name))
    try:
        apply_recipe(args)
    except UsageError as error:
        parser.error(str(error))
    return args


def check_writable(root_dir):
    """Create ROOT_DIR/results and prove a file can be written there."""
    results = Path(root_dir) / 'results'
    try:
        results.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=results):
            pass
    except OSError as error:
        raise UsageError(f'-root_dir {root_dir}: cannot write results there ({error.strerror or error})') from None


def resolve_pretrain(args):
    """The starting-point file or folder of -pretrain (a Hugging Face Hub id is fetched into its
    cache), or None for 'none'."""
    if args.pretrain == 'none':
        return None
    if args.pretrain in PRETRAIN_FILES:
        path = Path(args.root_dir) / 'pretrain_model' / PRETRAIN_FILES[args.pretrain]
    else:
        try:
            path = resolve_weights(args.pretrain)
        except WeightLoadError as error:
            raise UsageError(f'-pretrain {error} (use -pretrain none to start from scratch)') from None
    if not path.exists():
        raise UsageError(f'-pretrain {args.pretrain}: no such file {path} (use -pretrain none to start from scratch)')
    return path


def build_data(args):
    """The DataModule, its annotation files parsed (not decoded), so list mistakes stop the run here."""
    if args.train_data_path is None:
        if not (DEMO_DIR / 'classmap.json').is_file():  # written last
            logging.info('Generating the demo dataset in %s', DEMO_DIR)
            make_demo_dataset(DEMO_DIR, seed=0)
        paths = {split: str(DEMO_DIR / f'{split}.txt') for split in ('train', 'val', 'test')}
        class_map = args.class_map or str(DEMO_DIR / 'classmap.json')
        if args.objective != 'classify':  # pretraining reads no labels and has no test
            paths['test'], class_map = None, None
    else:
        paths = {'train': args.train_data_path, 'val': args.val_data_path, 'test': args.test_data_path}
        class_map = args.class_map
    for split, path in paths.items():
        if path is not None and not Path(path).exists():
            raise UsageError(f'-{split}_data_path {path}: no such file or folder')
    if class_map is not None and not Path(class_map).is_file():
        raise UsageError(f'-class_map {class_map}: no such file')
    try:
        data = VideoDataModule(
            train_data_path=paths['train'], val_data_path=paths['val'], test_data_path=paths['test'],
            root_dir=args.data_root, class_map=class_map, num_classes=args.num_classes,
            num_samples_per_cls=args.num_samples_per_cls, num_frames=args.num_frames,
            frame_interval=args.frame_interval, window_seconds=args.window_seconds, num_clips=args.num_clips,
            num_crops=args.num_crops, img_size=args.img_size, batch_size=args.batch_size, num_workers=args.num_workers,
            sampling=args.sampling,
            persistent_workers=False, data_statics=args.data_statics, crop_scale=tuple(args.crop_scale),
            color_jitter=args.color_jitter, auto_augment=args.auto_augment, mixup=args.mixup,
            mixup_alpha=args.mixup_alpha, cutmix_alpha=args.cutmix_alpha, labelled=args.objective == 'classify',
            **({'decoder': args.decoder} if args.decoder else {}))
        for split, path in paths.items():
            if path is not None:
                data.dataset(split)
    except ValueError as error:  # AnnotationError, or a data setting out of range
        raise UsageError(error) from None
    return data


def build_config(args, num_classes):
    conv_type = args.conv_type or ARCHITECTURES[args.arch].arch_defaults.get('conv_type', 'Conv2d')
    try:
        return VideoTransformerConfig.for_arch(
            args.arch, attention_type=args.attention_type, num_frames=args.num_frames,
            img_size=args.img_size, patch_size=args.patch_size, embed_dims=args.embed_dims,
            num_heads=args.num_heads, num_transformer_layers=args.depth,
            num_time_transformer_layers=args.num_time_layers,
            drop_path_rate=args.drop_path, num_classes=num_classes, conv_type=conv_type,
            tube_size=args.tube_size)
    except ValueError as error:  # the config names the field, which is the flag without its dash
        raise UsageError(error) from None


def build_trainer(args, accelerator, devices, callbacks, loggers):
    cuda = torch.cuda.is_available()
    precision = choose_precision(args.precision, accelerator, cuda, cuda and torch.cuda.is_bf16_supported())
    strategy = args.strategy
    if strategy == 'ddp':
        strategy = DDPStrategy(find_unused_parameters=False)  # backward reaches every parameter
    elif strategy == 'fsdp':
        if args.clip_grad:  # Lightning's FSDP precision plugins refuse it at the first step
            raise UsageError('-clip_grad with -strategy fsdp: Lightning cannot clip FSDP gradients; leave one out')
        strategy = FSDPStrategy(**fsdp_settings(args.activation_checkpointing))
    val_check = args.val_check_interval
    settings = f'-accelerator {accelerator} -devices {devices} -strategy {args.strategy} -precision {precision}'
    try:
        return pl.Trainer(
            accelerator=accelerator, devices=devices, num_nodes=args.num_nodes, strategy=strategy, precision=precision,
            max_epochs=args.epoch, max_steps=args.max_steps, accumulate_grad_batches=args.accumulate_grad_batches,
            gradient_clip_val=args.clip_grad or None,
            val_check_interval=int(val_check) if val_check is not None and val_check > 1 else val_check,
            log_every_n_steps=args.log_interval, plugins=[AtomicCheckpointIO()], logger=loggers,
            callbacks=[SkippedVideos(), CompactProgressBar(), *callbacks], enable_model_summary=False)
    except (ValueError, MisconfigurationException) as error:  # Lightning refuses the devices asked for
        raise UsageError(f'{settings}: {error_line(error)}') from None


def checkpoint_callbacks(args, ckpt_dir, validating):
    """(best, last, steps) ModelCheckpoints: best.ckpt by val top-1 (by the lowest val loss when pretraining;
    None without validation data),
    last.ckpt at every epoch end, step checkpoints every -save_ckpt_freq steps (None at 0). last.ckpt
    has a callback of its own: Lightning's save_last writes it only when its callback saves, for
    best.ckpt only when val top-1 improves."""
    monitor, mode = ('val/top1', 'max') if args.objective == 'classify' else ('val/loss', 'min')
    best = ModelCheckpoint(ckpt_dir, filename='best', monitor=monitor, mode=mode,
                           enable_version_counter=False) if validating else None
    last = ModelCheckpoint(ckpt_dir, filename='last', enable_version_counter=False)
    steps = ModelCheckpoint(ckpt_dir, filename='step{step:07d}', auto_insert_metric_name=False,
                            every_n_train_steps=args.save_ckpt_freq, save_top_k=-1) if args.save_ckpt_freq else None
    return best, last, steps


def main(argv=None):
    started = time.perf_counter()
    args = parse_args(argv)
    pl.seed_everything(args.seed, workers=True, verbose=False)
    check_writable(args.root_dir)
    accelerator, devices = resolve_devices(args)
    devices_per_node = count_devices(accelerator, devices)
    if args.lr is None:  # the videomae recipes' lr follows the effective batch
        args.lr, line = batch_scaled_lr(args, devices_per_node)
        logging.info(line)
    results = Path(args.root_dir) / 'results'
    resume = None
    if args.resume not in (None, 'last'):  # the checkpoint's flags first: they name the experiment
        resume = Path(args.resume)
        if not resume.is_file():
            raise UsageError(f'-resume {resume}: no such checkpoint')
        trained = continue_checkpoint(args, resume)
    run_dir = results / experiment_tag(args, devices_per_node)
    ckpt_dir, log_dir = run_dir / 'ckpt', run_dir / 'log'
    if args.resume == 'last':
        resume = latest_checkpoint(ckpt_dir)
        if resume is None:
            elsewhere = other_checkpoints(results, ckpt_dir, args, devices_per_node)
            raise UsageError(f'-resume: no checkpoint in {ckpt_dir}{elsewhere}')
        trained = continue_checkpoint(args, resume)
    if resume is not None and (trained[0] >= args.epoch or 0 < args.max_steps <= trained[1]):
        # Lightning would restore, train nothing and test: the run's summary would lose its scores.
        say(f'Nothing left to train: {resume} has trained {counted(trained[0], "epoch")}, '
            f'{counted(trained[1], "step")}, of -epoch '
            f'{args.epoch}{f" -max_steps {args.max_steps}" if args.max_steps > 0 else ""}; the run\'s results stay '
            f'in {run_dir} (a larger -epoch trains on)')
        return 0
    data = build_data(args)
    pretrain = resolve_pretrain(args)
    config = build_config(args, data.num_classes)
    if args.objective == 'videomae':
        check_pretraining_flags(args, config)
    # Rank zero holds the folder for the run: a second run of the tag stops here, and a folder a live
    # run holds is never moved.
    lock = lock_run_folder(run_dir) if rank_zero_only.rank == 0 else None
    if resume is None and lock is not None and holds_results(run_dir):
        keep_earlier_run(run_dir)
        lock = lock_run_folder(run_dir)
    if resume is None and milestones_line(args):  # a resume keeps its checkpoint's
        logging.warning(milestones_line(args))
    if resume is not None:
        say(f'Resuming {resume} after {counted(trained[0], "epoch")}, {counted(trained[1], "step")}; training to '
            f'epoch {args.epoch} with its settings')

    best, last, steps = checkpoint_callbacks(args, ckpt_dir, validating=data.sources['val'] is not None)
    sigterm, ctrl_c = CheckpointOnSigterm(ckpt_dir / 'last.ckpt'), CtrlC()
    # A CSV version per run (a resumed run adds one): Lightning's CSVLogger empties a folder it reuses.
    loggers = [CSVLogger(log_dir, name='csv'), TensorBoardLogger(log_dir, name='tensorboard', version='')]
    # best first: the Trainer's checkpoint_callback, which ckpt_path='best' reads.
    callbacks = [callback for callback in (best, last, steps, sigterm, ctrl_c) if callback is not None]
    if args.objective == 'videomae':
        callbacks.append(ReconstructionPictures(log_dir / 'reconstructions.png'))
    trainer = build_trainer(args, accelerator, devices, callbacks, loggers)
    module = build_pretraining(args, config, data) if args.objective == 'videomae' else LitVideoClassifier(
        config, data.class_names, data.preprocessing.to_dict(), optim_type=args.optim_type, lr=args.lr,
        momentum=args.momentum, weight_decay=args.weight_decay, lr_schedule=args.lr_schedule,
        warmup_epochs=args.warmup_epochs, min_lr=args.min_lr, milestones=args.milestones,
        layer_decay=args.layer_decay, label_smoothing=args.label_smoothing, freeze_blocks=args.freeze_blocks,
        freeze_backbone=args.eval_metrics == 'linear_prob', nonfinite_loss=args.nonfinite_loss)
    if pretrain is not None and resume is None:
        init_from_pretrained_(module.model, pretrain, head_init_scale=args.head_init_scale)
    recomputing = ''
    if args.activation_checkpointing:  # FSDP wraps its blocks itself
        recomputing = '; FSDP recomputes each block in backward' if args.strategy == 'fsdp' else \
            f'; {recompute_blocks_in_backward(module)} blocks recomputed in backward'
    if args.compile:
        module.model.compile()

    task = f'{config.num_classes} classes' if args.objective == 'classify' else f'{args.objective} pretraining'
    say(f'Training {config.arch} {config.attention_type} ({config.num_transformer_layers} blocks of width '
        f'{config.embed_dims}, {config.num_frames}x{config.img_size}, {task}) on '
        f'{len(data.dataset("train"))} clips; precision {trainer.precision}, {trainer.num_devices} device(s) x '
        f'{trainer.num_nodes} node(s){recomputing}; results in {run_dir}')
    try:
        trainer.fit(module, data, ckpt_path=resume, weights_only=True)
        # Testing the best checkpoint restores its callbacks' state too: note what they hold first.
        best_path = best.best_model_path if best else ''
        best_score = float(best.best_model_score) if best and best.best_model_score is not None else None
        last_path = last.best_model_path  # last.ckpt: its callback saves without a monitor
        tested = trainer.test(module, data, ckpt_path='best' if best_path else None,
                              verbose=False, weights_only=True) if data.sources['test'] is not None else [{}]
    except SIGTERMException:
        say(f'Stopped by SIGTERM; saved {sigterm.path}; continue with the same flags and -resume' if sigterm.saved
            else 'Stopped by SIGTERM while testing; the checkpoints are complete')
        return 128 + signal.SIGTERM
    except SystemExit:  # Lightning's answer to Ctrl-C, after its own line
        if not ctrl_c.pressed:
            raise
        say(interrupted_line(latest_checkpoint(ckpt_dir), argv))
        return 128 + signal.SIGINT
    test = tested[0] if tested else {}
    if args.objective == 'videomae':
        report_pretraining(args, trainer, best_score, best_path or last_path, last_path, log_dir, run_dir,
                           time.perf_counter() - started)
        return 0
    report(args, module, trainer, data, best_score, best_path or last_path, last_path, test, log_dir, run_dir,
           time.perf_counter() - started)
    return 0


def keep_earlier_run(run_dir):
    """Move an earlier run's results out of the way of a new run of the same tag, said in one line."""
    number = 1
    while run_dir.with_name(f'{run_dir.name}.{number}').exists():
        number += 1
    kept = run_dir.rename(run_dir.with_name(f'{run_dir.name}.{number}'))
    (kept / RUN_LOCK).unlink(missing_ok=True)  # this process's lock on it, which it gives up
    logging.warning('%s holds an earlier run (not resumed: no -resume); moved it to %s', run_dir, kept)


def first_video(data):
    split = next(split for split in ('test', 'val', 'train') if data.sources[split] is not None)
    return data.dataset(split).path(0)


@rank_zero_only
def report(args, module, trainer, data, best_score, checkpoint, last_checkpoint, test, log_dir, run_dir, seconds):
    """The one-line summary, summary.json and curves.png beside the logs, the test's report in log/test
    (metrics.json, per_class_accuracy.csv, confusion_matrix.png, as model_inference.py -eval writes them
    from the same metrics), and the next command."""
    rows = read_run_metrics(log_dir / 'csv')
    val_top5, best_epoch = None, None
    from_rows = [row for row in rows if best_score is not None and row.get('val/top1') == best_score]
    if from_rows:
        val_top5, best_epoch = from_rows[0].get('val/top5'), int(from_rows[0]['epoch'])
    views = data.preprocessing.num_views
    summary = {
        'experiment': run_dir.name, 'best_val_top1': best_score, 'best_val_top5': val_top5, 'best_epoch': best_epoch,
        'test_top1_1view': test.get('test/top1_1view'), 'test_top5_1view': test.get('test/top5_1view'),
        'test_top1': test.get('test/top1'), 'test_top5': test.get('test/top5'), 'test_views': views,
        'test_videos': int(test['test/videos']) if 'test/videos' in test else None,
        'epochs': trainer.current_epoch, 'steps': trainer.global_step, 'skipped_steps': module.skipped_steps,
        'seconds': round(seconds, 1), 'checkpoint': checkpoint, 'last_checkpoint': last_checkpoint,
    }
    write_json(summary, log_dir / 'summary.json')
    views_name = f'{data.preprocessing.num_clips}x{data.preprocessing.num_crops}'
    if module.test_results is not None and trainer.is_global_zero:
        write_report(module.test_results, data.class_names, log_dir / 'test', views_name)
    if rows:
        # With five classes or fewer, top-5 is 100% by construction: not worth a line.
        plot_curves(rows, log_dir / 'curves.png', top5=len(data.class_names) > 5)
    validated = 'no validation data' if best_score is None else (
        f'best val top-1 {percent(best_score)} / top-5 {percent(val_top5)}'
        f'{f" (epoch {best_epoch})" if best_epoch is not None else ""}')
    tested = (f'test top-1 {percent(summary["test_top1_1view"])} / top-5 {percent(summary["test_top5_1view"])} at '
              f'1 view, {percent(summary["test_top1"])} / {percent(summary["test_top5"])} at '
              f'{views_name} views of {counted(summary["test_videos"], "video")} (per class: {log_dir / "test"})'
              if summary['test_videos'] is not None else 'no test data')
    say(f'Done in {seconds / 60:.1f} min: {validated}; {tested}; {log_dir / "summary.json"}, {log_dir / "curves.png"}')
    say(f'Next: python model_inference.py -pretrain {shlex.quote(str(summary["checkpoint"]))} '
        f'-video_path {shlex.quote(str(first_video(data)))}')


def say(message):
    """A line for the user on standard output, from rank zero only."""
    rank_zero_only(print)(message, flush=True)


if __name__ == '__main__':
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    try:
        code = main()
    except (UsageError, WeightLoadError, RunFolderBusy) as error:  # a flag, a path or a file the user gave
        print(f'model_pretrain.py: error: {error}', file=sys.stderr)
        code = 2
    except (NonFiniteLossError, UnreadableDatasetError, CheckpointSaveError) as error:  # the run itself went wrong
        print(f'model_pretrain.py: {error_line(error)}', file=sys.stderr)
        code = 1
    except KeyboardInterrupt:  # before training started: nothing written yet
        print('model_pretrain.py: interrupted', file=sys.stderr)
        code = 128 + signal.SIGINT
    sys.exit(code)
