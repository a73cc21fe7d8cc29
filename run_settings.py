"""The training command's settings beyond its flags: the recipes whose defaults the flags take, the
milestones scaled to -epoch, the lr of the videomae recipes, devices, precision and the experiment tag.

Functions read the parsed flags, an argparse Namespace (model_pretrain.parse_args) whose `given` holds
the names of the flags the user gave.
"""
import os
import re
from pathlib import Path

import torch

from command_line import UsageError
from video_transformer import ARCHITECTURES

# The original's `-pretrain vit|mae` name files in ROOT_DIR/pretrain_model; `kinetics` is a released
# video checkpoint there (the original's TimeSformer-B Kinetics-600).
PRETRAIN_FILES = {
    'vit': 'vit_base_patch16_224.pth',
    'mae': 'pretrain_mae_vit_base_mask_0.75_400e.pth',
    'kinetics': 'timesformer_k600.ckpt',
}
# The original's README recipe on Kinetics: TimeSformer-B/16, 8 frames 32 apart, SGD with nesterov
# momentum, lr 0.005 divided by 10 at epochs 5 and 11 of 15, mean = std = 0.5, three test crops.
KINETICS_RECIPE = dict(
    lr=0.005, epoch=15, batch_size=8, num_workers=4, log_interval=30, num_samples_per_cls=10000,
    pretrain='vit', frame_interval=32, root_dir='.', arch='timesformer', attention_type='divided_space_time',
    num_frames=8, img_size=224, patch_size=16, embed_dims=768, num_heads=12, depth=12, num_time_layers=4,
    tube_size=2, data_statics='inception', num_clips=1, num_crops=3, optim_type='sgd', momentum=0.9,
    weight_decay=1e-4, lr_schedule='multistep', warmup_epochs=0.0, min_lr=1e-6, milestones=[5, 11],
    layer_decay=1.0, freeze_blocks=0, clip_grad=0.0, label_smoothing=0.0, mixup_alpha=0.8, cutmix_alpha=1.0,
    drop_path=0.1, crop_scale=[0.08, 1.0], color_jitter=0.4, save_ckpt_freq=1000, devices='auto', mixup=False,
    objective='classify', head_init_scale=1.0,
)
# The demo: a small TimeSformer (0.6 M parameters, 2-frame tubelets) learns the motion classes of
# demo/make_demo_dataset.py from scratch; on two CPU cores validation passes 90% in epoch 4 to 6 of 20 (seeds 0-2).
DEMO_RECIPE = dict(
    KINETICS_RECIPE, lr=1e-3, epoch=20, batch_size=8, num_workers=1, log_interval=8, pretrain='none',
    frame_interval=4, root_dir='runs/demo', num_frames=8, img_size=32, patch_size=8, embed_dims=128, num_heads=4,
    depth=2, conv_type='Conv3d', data_statics='kinetics', num_clips=2, num_crops=3, optim_type='adamw',
    weight_decay=0.05, lr_schedule='cosine', warmup_epochs=2.0, min_lr=1e-5, label_smoothing=0.1, drop_path=0.0,
    crop_scale=[0.5, 1.0], color_jitter=0.0, save_ckpt_freq=0, devices='1',
)
# MCG-NJU VideoMAE's fine-tuning (run_class_finetuning.py, Kinetics-400 ViT-B): AdamW, a base lr of 1e-3
# per 256 clips of effective batch, layer decay 0.75, 5 warmup epochs then cosine, label smoothing 0.1,
# mixup 0.8 / CutMix 1.0, RandAugment m7-n4, drop path 0.1, 16 frames 4 apart, ImageNet statistics,
# 5 clips x 3 crops at test time; starts from -pretrain (a VideoMAE pretraining or fine-tuned file), its new
# head's initial weights x 0.001 (init_scale).
VIDEOMAE_RECIPE = dict(
    KINETICS_RECIPE, lr=None, epoch=75, pretrain='none', frame_interval=4, arch='videomae',
    attention_type='joint_space_time', num_frames=16, tube_size=2, data_statics='imagenet', num_clips=5, num_crops=3,
    optim_type='adamw', weight_decay=0.05, lr_schedule='cosine', warmup_epochs=5.0, min_lr=1e-6, layer_decay=0.75,
    label_smoothing=0.1, mixup=True, mixup_alpha=0.8, cutmix_alpha=1.0, auto_augment='rand-m7-n4', color_jitter=0.0,
    drop_path=0.1, crop_scale=[0.08, 1.0], head_init_scale=1e-3,
)
# MCG-NJU VideoMAE's pretraining (run_mae_pretraining.py, Kinetics-400 ViT-B): tube masking of 90%, a
# decoder of 4 blocks of 384, per-patch normalised pixels, AdamW (betas 0.9, 0.95) at 1.5e-4 per 256 clips
# of effective batch, weight decay 0.05, 40 warmup epochs then cosine to 1e-5 over 800, 16 frames 4
# apart, multi-scale crops (sides 1 to 0.66 of the short side: areas 0.44 to 1) and flips, no drop path.
VIDEOMAE_PRETRAIN_RECIPE = dict(
    VIDEOMAE_RECIPE, objective='videomae', epoch=800, warmup_epochs=40.0, min_lr=1e-5, layer_decay=1.0,
    label_smoothing=0.0, mixup=False, auto_augment=None, drop_path=0.0, crop_scale=[0.44, 1.0], num_clips=1,
    num_crops=1, head_init_scale=1.0, mask_ratio=0.9, decoder_depth=4, decoder_dim=384, norm_pix_loss=True,
)
# The demo's pretraining: a 2-block VideoMAE of width 64 reconstructs the demo's training clips (their
# labels unread) at 64x64 from 8 frames 4 apart; the demo's validation clips give a held-out loss.
DEMO_PRETRAIN_RECIPE = dict(
    VIDEOMAE_PRETRAIN_RECIPE, lr=1e-3, epoch=10, warmup_epochs=2.0, batch_size=16, num_workers=1, log_interval=8,
    root_dir='runs/demo', num_frames=8, img_size=64, patch_size=8, embed_dims=64, num_heads=2, depth=2,
    data_statics='kinetics', save_ckpt_freq=0, devices='1', decoder_depth=1, decoder_dim=64,
)
# The videomae recipes' lr when -lr is not given: this much per 256 clips of effective batch (MCG-NJU's
# linear scaling).
LR_PER_256 = {'videomae': 1e-3, 'videomae_pretrain': 1.5e-4}
RECIPES = {'demo': DEMO_RECIPE, 'kinetics': KINETICS_RECIPE, 'videomae': VIDEOMAE_RECIPE,
           'videomae_pretrain': VIDEOMAE_PRETRAIN_RECIPE}
OBJECTIVES = ('classify', 'videomae')
# The experiment tag's fields (experiment_tag) and the flags that set them.
TAG = re.compile(r'arch_(?P<arch>.+)_lr_(?P<lr>.+)_pretrain_(?P<pretrain>.+)_seed_(?P<seed>.+)_gpus_(?P<devices>.+)'
                 r'_bs_(?P<batch_size>.+)_nw_(?P<num_workers>.+)_frame_interval_(?P<frame_interval>.+)')


def apply_recipe(args):
    """Fill in place the flags of `args` left None with their recipe's defaults (-recipe, or the one
    the other flags imply), the multistep milestones scaled to -epoch unless given, an attention type
    the arch has, and seed 0. UsageError for an -objective the recipe is not for."""
    if args.recipe is None:
        args.recipe = 'videomae_pretrain' if args.objective == 'videomae' else 'demo' if args.train_data_path is None \
            else 'videomae' if args.arch == 'videomae' else 'kinetics'
    recipe = RECIPES[args.recipe]
    if args.recipe == 'videomae_pretrain' and args.train_data_path is None:
        recipe = DEMO_PRETRAIN_RECIPE
    if args.objective is not None and args.objective != recipe['objective']:
        raise UsageError(f'-objective {args.objective} with -recipe {args.recipe}, a recipe of -objective '
                         f'{recipe["objective"]}')
    for name, value in recipe.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.lr_schedule == 'multistep' and 'milestones' not in args.given:
        args.milestones = scale_milestones(args.milestones, args.epoch)
    architecture = ARCHITECTURES[args.arch]
    if 'attention_type' not in args.given and args.attention_type not in architecture.attention_types:
        args.attention_type = architecture.arch_defaults['attention_type']  # the recipe's is another arch's
    if 'head_init_scale' in args.given and (args.pretrain == 'none' or args.objective != 'classify'):
        raise UsageError('-head_init_scale scales the new head of a classifier started from -pretrain; give -pretrain')
    if args.sampling == 'segments' and args.window_seconds is not None:
        raise UsageError('-window_seconds is a window of -sampling interval; -sampling segments spreads the frames '
                         'over the whole video')
    if args.seed is None:
        args.seed = 0
    return args


def scale_milestones(milestones, epochs):
    """The recipe's milestones, epochs of the original's 15, at the same fractions of `epochs` (never
    epoch 0)."""
    original = KINETICS_RECIPE['epoch']
    return milestones if epochs == original else [max(1, round(milestone * epochs / original))
                                                  for milestone in milestones]


def milestones_line(args):
    """The line a run says when its milestones were scaled from the recipe's (scale_milestones), or None."""
    recipe = RECIPES[args.recipe].get('milestones')
    if args.lr_schedule != 'multistep' or 'milestones' in args.given or args.milestones == recipe:
        return None
    return (f"-milestones {' '.join(map(str, args.milestones))}: the recipe's {' and '.join(map(str, recipe))} of "
            f"{KINETICS_RECIPE['epoch']} epochs scaled to -epoch {args.epoch} (give -milestones to set them)")


def batch_scaled_lr(args, devices_per_node):
    """(lr, the line saying so) of a videomae recipe left without -lr: LR_PER_256 per 256 clips of the
    effective batch, -batch_size on every device of every node times -accumulate_grad_batches."""
    effective_batch = args.batch_size * devices_per_node * args.num_nodes * args.accumulate_grad_batches
    lr = LR_PER_256[args.recipe] * effective_batch / 256
    return lr, (f'-lr {lr:.3g}: the {args.recipe} recipe takes {LR_PER_256[args.recipe]:g} per 256 clips of '
                f'effective batch, here {effective_batch}')


def resolve_devices(args):
    """(accelerator, devices) for the Trainer; the original's -gpus ids (or -1) win."""
    if args.gpus is not None:
        return 'gpu', (-1 if args.gpus == [-1] else args.gpus)
    devices = args.devices
    if devices == 'auto':
        return args.accelerator, devices
    try:  # a count (-1: all), or device ids as Lightning takes them: 0,1
        return args.accelerator, [int(index) for index in devices.split(',') if index] if ',' in devices \
            else int(devices)
    except ValueError:
        raise UsageError(f'-devices {devices}: expected a number of devices, ids such as 0,1, or auto') from None


def count_devices(accelerator, devices):
    """How many devices the Trainer will use, for the experiment tag, before it is built."""
    if isinstance(devices, list):
        return len(devices)
    gpus = torch.cuda.device_count() if accelerator in ('gpu', 'cuda', 'auto') else 0
    if devices in ('auto', -1):
        return max(1, gpus) if devices == 'auto' or gpus else os.cpu_count()
    return int(devices)


def choose_precision(requested, accelerator, cuda_available, bf16_supported):
    """-precision as given, else bf16-mixed on GPUs that have bf16 (16-mixed on older ones) and
    32-true on CPUs."""
    if requested is not None:
        return requested
    on_gpu = accelerator in ('gpu', 'cuda') or (accelerator == 'auto' and cuda_available)
    return ('bf16-mixed' if bf16_supported else '16-mixed') if on_gpu else '32-true'


def experiment_tag(args, devices_per_node):
    """The original's tag: what most often differs between runs of one workspace; its device count
    is over all -num_nodes."""
    pretrain = Path(args.pretrain).stem if args.pretrain not in PRETRAIN_FILES else args.pretrain
    num_devices = devices_per_node * args.num_nodes
    objective = '' if args.objective == 'classify' else f'{args.objective}_pretraining_'
    return (f'{objective}arch_{args.arch}_lr_{args.lr}_pretrain_{pretrain}_seed_{args.seed}_gpus_{num_devices}_'
            f'bs_{args.batch_size}_nw_{args.num_workers}_frame_interval_{args.frame_interval}')
