"""The training command's settings, function by function (run_settings, run_checkpoints): recipes
against the README, milestones, precision, devices, the experiment tag and the flags a checkpoint
records. The command itself runs in tests/test_training_cli.py."""
import argparse
import os
import re
from pathlib import Path

import pytest

from run_checkpoints import checkpoint_flags
from run_settings import (LR_PER_256, RECIPES, apply_recipe, batch_scaled_lr, choose_precision, count_devices,
                          experiment_tag, milestones_line, resolve_devices, scale_milestones)
from video_transformer import timesformer_base_patch16_224, videomae_base_patch16_224

README = Path(__file__).resolve().parents[1] / 'README.md'
# The flags the functions read besides the recipes' own, at model_pretrain.py's parser defaults.
OTHER_FLAGS = dict(recipe=None, objective=None, train_data_path=None, seed=None, gpus=None, accelerator='auto',
                   num_nodes=1, accumulate_grad_batches=1, conv_type=None, sampling='interval', window_seconds=None)


def settings(**given):
    """The flags as model_pretrain.parse_args leaves them when the user gives `given`: every other one
    at its parser default, then the recipe's defaults applied."""
    recipe_flags = {name: None for recipe in RECIPES.values() for name in recipe}
    return apply_recipe(argparse.Namespace(**{**recipe_flags, **OTHER_FLAGS, **given}, given=frozenset(given)))


def readme_recipes():
    """{recipe: {row: cell}} from the README's recipe table, a column per recipe (its header's first word)."""
    lines = README.read_text().splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith('| | demo | kinetics'))
    names = [cell.split()[0] for cell in lines[start].strip('|').split('|')[1:]]
    recipes = {name: {} for name in names}
    for line in lines[start + 2:]:
        if not line.startswith('|'):
            break
        row, *cells = [cell.strip() for cell in line.strip('|').split('|')]
        for name, cell in zip(names, cells):
            recipes[name][row] = cell
    return recipes


def numbers(pattern, text):
    """The numbers pattern's groups capture in text, or None where it does not occur."""
    found = re.search(pattern, text)
    return None if found is None else [float(group) for group in found.groups()]


# flag: (table row, pattern whose groups are the flag's value, how a value reads as the flag's)
NUMERIC_CELLS = {
    'lr': ('optimiser', r'\blr ([\d.e-]+)', float),
    'weight_decay': ('optimiser', r'weight decay ([\d.e-]+)', float),
    'momentum': ('optimiser', r'momentum ([\d.]+)', float),
    'milestones': ('optimiser', r'at epochs (\d+) and (\d+)', lambda values: [int(value) for value in values]),
    'warmup_epochs': ('optimiser', r'warmup (\d+) epochs', float),
    'min_lr': ('optimiser', r'cosine to ([\d.e-]+)', float),
    'epoch': ('optimiser', r'(\d+) epochs(?: \(|$)', int),
    'layer_decay': ('optimiser', r'layer decay ([\d.]+)', float),
    'num_frames': ('clips', r'(\d+) frames', int),
    'frame_interval': ('clips', r'frames (\d+) apart', int),
    'num_clips': ('clips', r'test (\d+) clips?', int),
    'num_crops': ('clips', r'x (\d+) crops', int),
    'batch_size': ('batch', r'^(\d+) clips', int),
    'num_workers': ('batch', r'(\d+) loader workers?', int),
    'crop_scale': ('augmentation', r'crops of (\d+)-(\d+)%', lambda values: [value / 100 for value in values]),
    'color_jitter': ('augmentation', r'colour jitter ([\d.]+)', float),
    'drop_path': ('augmentation', r'drop path ([\d.]+)', float),
    'label_smoothing': ('augmentation', r'label smoothing ([\d.]+)', float),
    'mixup_alpha': ('augmentation', r'mixup ([\d.]+)', float),
    'cutmix_alpha': ('augmentation', r'CutMix ([\d.]+)', float),
    'depth': ('model', r'(\d+) blocks', int),
    'embed_dims': ('model', r'width (\d+)', int),
    'num_heads': ('model', r'(\d+) heads', int),
    'img_size': ('model', r'(\d+) px', int),
    'patch_size': ('model', r'patches of (\d+)', int),
    'tube_size': ('model', r'tubelets of (\d+) frames', int),
    'head_init_scale': ('model', r"head's initial weights x ([\d.]+)", float),
}


@pytest.mark.parametrize('recipe', ['demo', 'kinetics', 'videomae'])
def test_recipe_defaults_are_the_readmes_table(recipe):
    """Every number and choice the README's recipe table states is the flag's default under -recipe.
    Fails if a recipe default or the table changes without the other."""
    cells = readme_recipes()[recipe]
    args = settings(recipe=recipe)
    checked = set()
    for flag, (row, pattern, read) in NUMERIC_CELLS.items():
        values = numbers(pattern, cells[row])
        if values is None:
            continue
        expected = read(values) if flag in ('milestones', 'crop_scale') else read(values[0])
        if flag == 'lr' and recipe == 'videomae':  # per 256 clips of effective batch, scaled when run
            assert args.lr is None and LR_PER_256[recipe] == pytest.approx(expected), cells[row]
        else:
            assert getattr(args, flag) == pytest.approx(expected), (flag, cells[row])
        checked.add(flag)
    optimiser, model = cells['optimiser'], cells['model']
    assert args.optim_type == ('sgd' if optimiser.startswith('SGD') else 'adamw' if optimiser.startswith('AdamW')
                               else None)
    assert args.lr_schedule == ('cosine' if 'cosine' in optimiser else 'multistep')
    statics = {'mean = std = 0.5 (`inception`)': 'inception', 'Kinetics mean / std': 'kinetics',
               'ImageNet mean / std': 'imagenet'}
    assert args.data_statics == statics[cells['normalisation']]
    assert args.devices == ('auto' if 'every GPU' in cells['batch'] else '1')
    augmentation = cells['augmentation']
    assert args.mixup == ('mixup' in augmentation)
    assert args.auto_augment == ('rand-m7-n4' if 'RandAugment m7-n4' in augmentation else None)
    if recipe == 'videomae':
        preset = videomae_base_patch16_224()
        assert args.arch == 'videomae' and model.startswith('VideoMAE-B/16') and args.pretrain == 'none'
        assert (args.embed_dims, args.depth, args.num_heads, args.patch_size, args.tube_size) == \
            (preset.embed_dims, preset.num_transformer_layers, preset.num_heads, preset.patch_size, preset.tube_size)
        assert len(checked) >= 14, sorted(checked)
        return
    assert args.arch == 'timesformer' and model.startswith('TimeSformer')
    if model.startswith('TimeSformer-B/16'):  # the preset's sizes, and its starting point
        preset = timesformer_base_patch16_224()
        assert (args.embed_dims, args.depth, args.num_heads, args.patch_size) == \
            (preset.embed_dims, preset.num_transformer_layers, preset.num_heads, preset.patch_size)
        assert f'`-pretrain {args.pretrain}`' in model
    else:
        assert args.pretrain == 'none' and args.conv_type == 'Conv3d' and '(`Conv3d`)' in model
    # The table is read, not skipped: most of its numbers were found and compared.
    assert len(checked) >= 14, sorted(checked)


def test_the_kinetics_milestones_scale_with_epoch_and_say_so():
    """-recipe kinetics -epoch 40 drops the lr at epochs 13 and 29 (5 and 11 of 15), said in one line
    when the run starts; given milestones and the recipe's own 15 epochs are kept. Fails if the
    milestones stay at 5 and 11 whatever -epoch says (lr 100x lower for 29 of 40 epochs), silently."""
    args = settings(recipe='kinetics', epoch=40)
    assert args.milestones == [13, 29]
    assert milestones_line(args).startswith("-milestones 13 29: the recipe's 5 and 11 of 15 epochs scaled to -epoch 40")
    for kept in ({'epoch': 40, 'milestones': [5, 11]}, {}, {'epoch': 30, 'lr_schedule': 'cosine'}):
        args = settings(recipe='kinetics', **kept)
        assert args.milestones == [5, 11] and milestones_line(args) is None, kept
    assert scale_milestones([5, 11], 3) == [1, 2]  # never epoch 0: the first lr is the given one


def test_precision_is_bf16_on_gpus_that_have_it_16_on_older_ones_32_on_cpus():
    """Fails if a GPU run trains in 32 bits by default, or an old GPU gets bf16 it lacks."""
    assert choose_precision(None, 'auto', cuda_available=True, bf16_supported=True) == 'bf16-mixed'
    assert choose_precision(None, 'gpu', cuda_available=True, bf16_supported=False) == '16-mixed'
    assert choose_precision(None, 'cuda', cuda_available=True, bf16_supported=True) == 'bf16-mixed'
    assert choose_precision(None, 'auto', cuda_available=False, bf16_supported=False) == '32-true'
    assert choose_precision(None, 'cpu', cuda_available=True, bf16_supported=True) == '32-true'
    assert choose_precision('16-mixed', 'cpu', cuda_available=False, bf16_supported=False) == '16-mixed'


@pytest.mark.parametrize('flags, accelerator, devices, count', [
    ({'gpus': [0, 1]}, 'gpu', [0, 1], 2),
    ({'gpus': [3]}, 'gpu', [3], 1),
    ({'devices': '0,1'}, 'auto', [0, 1], 2),
    ({'devices': '4', 'accelerator': 'gpu'}, 'gpu', 4, 4),
    ({'devices': 'auto', 'accelerator': 'cpu'}, 'cpu', 'auto', 1),
    ({'devices': '-1', 'accelerator': 'cpu'}, 'cpu', -1, os.cpu_count()),
    ({'gpus': [-1], 'devices': '2'}, 'gpu', -1, None),  # the original's -gpus wins
])
def test_device_flags_become_the_trainers_devices_and_the_tags_count(flags, accelerator, devices, count):
    """Fails if -gpus ids, -gpus -1, -devices ids or counts reach the Trainer otherwise, or the tag
    counts other devices than the Trainer will use."""
    args = settings(**flags)
    assert resolve_devices(args) == (accelerator, devices)
    if count is not None:
        assert count_devices(accelerator, devices) == count
        assert f'_gpus_{count}_' in experiment_tag(args, count_devices(accelerator, devices))


def test_the_experiment_tag_counts_the_devices_of_every_node():
    """Two nodes of 8 devices are 16 in the tag; fails if -num_nodes is left out of it."""
    args = settings(num_nodes=2, devices='8', accelerator='gpu')
    accelerator, devices = resolve_devices(args)
    tag = experiment_tag(args, count_devices(accelerator, devices))
    assert tag == 'arch_timesformer_lr_0.001_pretrain_none_seed_0_gpus_16_bs_8_nw_1_frame_interval_4'
    assert '_gpus_8_' in experiment_tag(settings(devices='8', accelerator='gpu'), 8)


def test_a_checkpoint_records_eval_metrics_by_its_mode_or_by_the_old_name():
    """-eval_metrics is saved as the module's freeze_backbone; checkpoints from before kept eval_metrics
    itself. Fails if a resume of either reads no -eval_metrics (it would fine-tune a linear probe's
    checkpoint without a word) or reads it the wrong way round."""
    for module, expected in (({'freeze_backbone': True}, 'linear_prob'), ({'freeze_backbone': False}, 'finetune'),
                             ({'eval_metrics': 'linear_prob'}, 'linear_prob'), ({}, None)):
        assert checkpoint_flags({'hyper_parameters': module}).get('eval_metrics') == expected, module


def test_the_videomae_recipes_scale_their_lr_with_the_whole_effective_batch():
    """1e-3 (fine-tuning) and 1.5e-4 (pretraining) per 256 clips: 8 clips x 4 devices x 2 nodes x 4
    accumulated steps are 256. Fails if a factor (devices, nodes, accumulation) is left out of the batch."""
    for recipe, per_256 in (('videomae', 1e-3), ('videomae_pretrain', 1.5e-4)):
        # With a training list: without one, videomae_pretrain is the demo's pretraining, of a fixed lr.
        args = settings(recipe=recipe, train_data_path='train.txt', batch_size=8, num_nodes=2,
                        accumulate_grad_batches=4)
        assert args.lr is None
        assert batch_scaled_lr(args, 4) == (pytest.approx(per_256), f'-lr {per_256:.3g}: the {recipe} recipe takes '
                                            f'{per_256:g} per 256 clips of effective batch, here 256')
        alone = settings(recipe=recipe, train_data_path='train.txt', batch_size=8)
        assert batch_scaled_lr(alone, 1)[0] == pytest.approx(per_256 / 32)
