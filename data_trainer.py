"""LightningDataModule for video clips; augmentation and normalisation run on the batch's device.

The CPU side (dataset.py) returns uint8 clips resized so their short side is `short_side`; for
validation and test the collate function cuts each clip's crops there, so a clip's views never
depend on the rest of its batch. After the batch reaches its device, `on_after_batch_transfer`
augments (training: random resized crop and the rest), normalises (`preprocessing.normalize`) and
mixes it, so the same code runs on a GPU or, without one, on CPU tensors.

Batch contract, a dict as the LightningModule's steps receive it:
- training: `video` float32 (B, T, 3, img_size, img_size), normalised; `label` int64 (B,), or
  float32 soft targets (B, num_classes) when mixup is on (no label smoothing: that is the loss's).
- validation and test: `video` float32 (B, V, T, 3, img_size, img_size), normalised, with V = 1
  for validation (the centre crop of the centre clip) and V = num_clips * num_crops for test,
  clip-major; `label` int64 (B,). Average the views' softmax:
  evaluation.average_views(model(video.flatten(0, 1)).view(B, V, -1)).
- always: `index` int64 (B,), the dataset items; `path` [str] (B,), their video files; `skipped`,
  a plain int, and `failed`, [(path, reason)], the unreadable videos met for the batch. Training
  replaces them by other items; evaluation leaves them out, so B may be smaller than the batch
  size, or 0 (`video` then has shape (0, V, T, 3, img_size, img_size)): skip such a batch. Add
  `SkippedVideos()` to the Trainer's callbacks to log the sum per epoch as `{stage}/skipped_videos`.

Seeding: call `pl.seed_everything(seed, workers=True)` before anything is built. Under DDP every
rank then holds the same seed, and Lightning's DDP and FSDP strategies reset every rank to it at
the start of each run (fit, validate, test, predict), so ranks would draw the same windows, crops
and mixes. `setup` therefore seeds each run with seed + global rank (`seed_rank`), the seed being
the one this DataModule met at its first setup: however often setup runs, the rank is added once.
The training loader (ResumableLoader) shuffles each epoch by one seed drawn from the run's RNG and
keeps that seed and the batches served in checkpoints, so a run resumed mid-epoch serves the rest
of the epoch. Lightning's samplers shard the training items; validation and test items are split
among the ranks without Lightning's padding (which repeats items to even out the ranks), so
metrics count each video once.

Hyper-parameters are saved as plain types (paths as strings), so a checkpoint's
`datamodule_hyper_parameters` load with `torch.load(weights_only=True)`; `preprocessing` gives the
data settings inference needs, as a `preprocessing.Preprocessing`.
"""
import itertools
import math
import os
import random
from collections import Counter
from functools import partial

import kornia.augmentation as K
import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

import preprocessing
from dataset import VideoDataset, check_skip_fraction, collate_clips, collate_views

# RandAugment magnitudes are on timm's scale, where 10 is the strongest level.
MAX_MAGNITUDE = 10
# Keys of timm's RandAugment strings that need no handling here: magnitudes are always drawn per
# clip between 0 and m (kornia's ranges), which subsumes timm's magnitude noise, and every op
# grows stronger with m, which is what 'inc' selects.
IGNORED_POLICY_KEYS = ('mstd', 'inc')


def parse_auto_augment(policy):
    """(num_ops, magnitude) from a timm-style RandAugment string such as 'rand-m9-n2-mstd0.5'."""
    parts = policy.split('-')
    if parts[0] != 'rand':
        raise ValueError(f'auto_augment {policy!r}: only RandAugment policies are supported, like "rand-m9-n2"')
    num_ops, magnitude = 2, None
    for part in parts[1:]:
        key = part.rstrip('0123456789.')
        value = part[len(key):]
        if key == 'm' and value:
            magnitude = float(value)
        elif key == 'n' and value.isdigit():
            num_ops = int(value)
        elif key not in IGNORED_POLICY_KEYS:
            raise ValueError(f'auto_augment {policy!r}: unknown part {part!r} (known: m<magnitude>, n<ops>, '
                             f'{", ".join(IGNORED_POLICY_KEYS)})')
    if magnitude is None or not 0 < magnitude <= MAX_MAGNITUDE:
        raise ValueError(f'auto_augment {policy!r}: needs a magnitude m in (0, {MAX_MAGNITUDE}], like "rand-m9"')
    return num_ops, magnitude


def rand_augment_ops(magnitude):
    """timm's RandAugment operations (without Invert and SolarizeAdd) at magnitude (0, 10], as kornia
    augmentations applied with probability 0.5 each, as timm does."""
    level = magnitude / MAX_MAGNITUDE
    p = 0.5
    # Strengths at the top level are timm's: rotate 30 degrees, shear 0.3 (17 degrees), translate
    # 45%, enhance by up to 0.9, posterize down to 4 bits.
    return [
        K.RandomAutoContrast(p=p),
        K.RandomEqualize(p=p),
        K.RandomRotation(30.0 * level, p=p),
        K.RandomPosterize(bits=max(1, round(8 - 4 * level)), p=p),
        K.RandomSolarize(thresholds=0.5 * level, additions=0.0, p=p),
        K.ColorJitter(saturation=0.9 * level, p=p),
        K.ColorJitter(contrast=0.9 * level, p=p),
        K.ColorJitter(brightness=0.9 * level, p=p),
        K.RandomSharpness(0.9 * level, p=p),
        K.RandomAffine(degrees=0.0, shear=(-17.0 * level, 17.0 * level, 0.0, 0.0), p=p),
        K.RandomAffine(degrees=0.0, shear=(0.0, 0.0, -17.0 * level, 17.0 * level), p=p),
        K.RandomAffine(degrees=0.0, translate=(0.45 * level, 0.0), p=p),
        K.RandomAffine(degrees=0.0, translate=(0.0, 0.45 * level), p=p),
    ]


def train_augmentation(img_size, crop_scale=(0.08, 1.0), hflip=0.5, color_jitter=0.4, auto_augment=None):
    """kornia pipeline for float (B, T, 3, H, W) in [0, 1] -> (B, T, 3, img_size, img_size).

    One draw of every parameter per clip, shared by its frames. Colour jitter applies only without
    auto_augment, as in timm (and so in the original repository). The RandAugment ops are picked once per batch,
    their strengths per clip: kornia's video container cannot pick ops per clip.
    """
    stages = [K.VideoSequential(K.RandomResizedCrop((img_size, img_size), scale=crop_scale),
                                K.RandomHorizontalFlip(p=hflip), data_format='BTCHW', same_on_frame=True)]
    if auto_augment:
        num_ops, magnitude = parse_auto_augment(auto_augment)
        stages.append(K.VideoSequential(*rand_augment_ops(magnitude), data_format='BTCHW', same_on_frame=True,
                                        random_apply=num_ops))
    elif color_jitter:
        stages.append(K.VideoSequential(K.ColorJitter(color_jitter, color_jitter, color_jitter),
                                        data_format='BTCHW', same_on_frame=True))
    return torch.nn.Sequential(*stages)


def mix_clips(video, label, num_classes, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5):
    """Mixup or CutMix of each clip with the batch in reverse order, one draw per batch as in timm.

    video float (B, T, 3, H, W), label int64 (B,) -> mixed video, soft targets float (B, num_classes)
    that sum to 1. A CutMix box covers the same pixels in every frame of a clip.
    """
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or random.random() < switch_prob)
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    lam = random.betavariate(alpha, alpha)
    partner = video.flip(0)
    if use_cutmix:
        height, width = video.shape[-2:]
        cut_height, cut_width = int(height * math.sqrt(1 - lam)), int(width * math.sqrt(1 - lam))
        centre_y, centre_x = random.randrange(height), random.randrange(width)
        top, bottom = max(centre_y - cut_height // 2, 0), min(centre_y + cut_height // 2, height)
        left, right = max(centre_x - cut_width // 2, 0), min(centre_x + cut_width // 2, width)
        video = video.clone()
        video[..., top:bottom, left:right] = partner[..., top:bottom, left:right]
        # The box may be clipped at the border; the label follows the area actually pasted.
        lam = 1 - (bottom - top) * (right - left) / (height * width)
    else:
        video = video * lam + partner * (1 - lam)
    target = F.one_hot(label, num_classes).float()
    return video, target * lam + target.flip(0) * (1 - lam)


def seed_rank(seed, rank):
    """Seed torch, random and numpy with seed + rank, so that ranks seeded alike draw differently."""
    torch.manual_seed(seed + rank)
    random.seed(seed + rank)
    # numpy takes 32-bit seeds, as seed_everything gives.
    np.random.seed((seed + rank) % 2**32)


class ResumableBatchSampler(BatchSampler):
    """A BatchSampler whose passes start `skip` batches in: the skipped indices are drawn, not read.
    Set by ResumableLoader at each epoch (a worker iterator asks for a pass twice as it starts)."""

    def __init__(self, sampler, batch_size, drop_last):
        super().__init__(sampler, batch_size, drop_last)
        self.skip = 0

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.skip, None)


class ResumableLoader(DataLoader):
    """The training DataLoader, resumable mid-epoch from its `state_dict()`.

    Each epoch draws one seed from torch's global RNG (which seed_everything seeds and the
    LightningModule's checkpoints restore); `generator` (the RandomSampler's and the workers' base
    seed) is reseeded with it, so the seed fixes the epoch's order. The state is that seed and the
    batches served; a loader given it (`resume=` or `load_state_dict`) shuffles its next epoch the same
    way and skips the batches served, drawing nothing from the global RNG, so a run resumed from a
    mid-epoch checkpoint serves the rest of the epoch and continues the random draws of the main process
    (crops, flips, mixes, and the frame windows without workers). Loader workers draw their windows
    from their own generators, which start afresh: one warning line says so. A state with no batch
    served, or every batch, starts a new epoch. Under DDP, Lightning's DistributedSampler (seeded by
    the run's seed and the epoch) orders the items, and each rank resumes its own share at the same batch.

    Lightning saves this state in its checkpoints and loads it into a loader built after it restores
    its loops; a module that asks for the epoch length in configure_optimizers (as LitVideoClassifier
    does) builds the loader before that, and Lightning never loads the state (Lightning issue #20550):
    VideoDataModule.state_dict carries it for those.
    """

    def __init__(self, *args, resume=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._resume = resume
        self._seed, self._served = None, 0

    def state_dict(self):
        """{'seed': the epoch's seed, 'served': batches of it served so far}."""
        return {'seed': self._seed, 'served': self._served}

    def load_state_dict(self, state):
        self._resume = state

    def __iter__(self):
        # A generator: its body runs at the first batch, after Lightning has restored the checkpoint
        # and set the sampler's epoch (which it does after building this iterator when a run starts).
        return self._epoch()

    def _epoch(self):
        state, self._resume = self._resume, None
        resumed = bool(state) and 0 < state['served'] < len(self)
        self._seed = state['seed'] if resumed else int(torch.randint(2**62, ()))
        self._served = state['served'] if resumed else 0
        if resumed and self.num_workers > 0:
            rank_zero_warn(f'resuming at batch {self._served} of {len(self)} of the epoch: the same clips follow, '
                           'but the loader workers draw their frame windows afresh (exact with -num_workers 0)')
        self.generator.manual_seed(self._seed)
        self.batch_sampler.skip = self._served
        for batch in super().__iter__():
            self._served += 1
            yield batch


def _plain(value):
    """Paths as strings, also in a list (of videos), so that hyper-parameters load back under
    weights_only=True."""
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return os.fspath(value) if isinstance(value, os.PathLike) else value


class VideoDataModule(pl.LightningDataModule):
    """Train, val and test loaders over annotation sources, with device-side augmentation.

    Arguments follow the original repository's flags (num_frames, frame_interval, img_size, num_classes,
    batch_size, num_workers, data_statics, root_dir, *_data_path, mixup, auto_augment). sampling 'segments'
    picks one frame per equal part of each video instead of a window of frames frame_interval apart.
    root_dir is the folder relative video paths are joined to. class_map is a class map file or a list of
    names; without it the classes come from the first annotation source. (Prediction is inference.py's:
    it reads VideoDataset's predict mode itself.) labelled=False: every split may be unlabelled (a folder
    of videos or a list of paths; labels -1), for self-supervised pretraining.
    """

    def __init__(self, train_data_path=None, val_data_path=None, test_data_path=None,
                 root_dir=None, class_map=None, num_classes=None, num_samples_per_cls=None,
                 num_frames=8, frame_interval=32, window_seconds=None, sampling='interval', num_clips=1, num_crops=3,
                 img_size=224, short_side=None, batch_size=8, num_workers=4, pin_memory=True,
                 persistent_workers=True, prefetch_factor=2, decoder='decord', max_skip_fraction=0.5,
                 data_statics='kinetics', crop_scale=(0.08, 1.0), hflip=0.5, color_jitter=0.4,
                 auto_augment=None, mixup=False, mixup_alpha=0.8, cutmix_alpha=1.0, labelled=True):
        super().__init__()
        # save_hyperparameters reads these locals: store paths as strings, which weights_only reads.
        train_data_path, val_data_path, test_data_path, root_dir, class_map = map(
            _plain, (train_data_path, val_data_path, test_data_path, root_dir, class_map))
        self.save_hyperparameters()
        mean, std = preprocessing.data_statics(data_statics)
        self.preprocessing = preprocessing.Preprocessing(
            num_frames=num_frames, frame_interval=frame_interval, window_seconds=window_seconds, sampling=sampling,
            img_size=img_size, short_side=short_side, mean=mean, std=std, num_clips=num_clips, num_crops=num_crops)
        check_skip_fraction(max_skip_fraction)
        if mixup and mixup_alpha <= 0 and cutmix_alpha <= 0:
            raise ValueError('mixup needs mixup_alpha > 0 or cutmix_alpha > 0')
        self.sources = {'train': train_data_path, 'val': val_data_path, 'test': test_data_path}
        # The views each evaluation split cuts: validation one, the centre crop of the centre clip.
        self.views = {'val': self.preprocessing.replace(num_clips=1, num_crops=1), 'test': self.preprocessing}
        self.train_augment = train_augmentation(img_size, crop_scale, hflip, color_jitter, auto_augment)
        self.datasets = {}
        self._class_names = None
        self._seed = None
        self._train_state = None  # a checkpoint's training loader position, for the next train_dataloader

    @property
    def class_names(self):
        """Class names in index order: the class map's, or those of the first annotation source."""
        if self._class_names is None:
            first = next((split for split, path in self.sources.items() if path is not None), None)
            if first is None:
                raise ValueError('no annotation source: give train, val or test data paths')
            self.dataset(first)
        return self._class_names

    @property
    def num_classes(self):
        return len(self.class_names)

    def dataset(self, split):
        """The VideoDataset of split ('train', 'val' or 'test'), built on first use.
        Every split after the first reuses its class names, so indices agree across splits."""
        if split not in self.datasets:
            if self.sources[split] is None:
                raise ValueError(f'no {split} data: give {split}_data_path')
            hp = self.hparams
            self.datasets[split] = VideoDataset.from_preprocessing(
                self.sources[split], self.preprocessing, mode=split, root_dir=hp.root_dir,
                class_map=self._class_names if self._class_names is not None else hp.class_map,
                num_classes=hp.num_classes, decoder=hp.decoder,
                # Training clips only, as in the original: evaluation reads every video listed.
                num_samples_per_cls=hp.num_samples_per_cls if split == 'train' else None,
                max_skip_fraction=hp.max_skip_fraction, labelled=None if hp.labelled else False)
            self._class_names = self.datasets[split].class_names
        return self.datasets[split]

    def setup(self, stage=None):
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:
            # See the module doc. Loader workers draw their seeds from this process's torch RNG, so
            # they differ by rank too.
            if self._seed is None:
                self._seed = torch.initial_seed()
            seed_rank(self._seed, trainer.global_rank)
        splits = {'fit': ('train', 'val'), 'validate': ('val',), 'test': ('test',)}
        for split in splits.get(stage, ('train', 'val', 'test')):
            if self.sources[split] is not None:
                self.dataset(split)

    def _loader(self, split):
        hp = self.hparams
        dataset = self.dataset(split)
        options = dict(
            num_workers=hp.num_workers,
            # Pinned memory only helps copies to a GPU; without one torch warns and ignores it.
            pin_memory=hp.pin_memory and torch.cuda.is_available(),
            persistent_workers=hp.persistent_workers and hp.num_workers > 0,
            prefetch_factor=hp.prefetch_factor if hp.num_workers > 0 else None)
        if split != 'train':
            return DataLoader(dataset, batch_size=hp.batch_size, sampler=self._evaluation_sampler(split),
                              collate_fn=partial(collate_views, preprocessing=self.views[split]), **options)
        resume, self._train_state = self._train_state, None
        if resume and self.trainer is not None:
            # Workers' seeds differ by rank (rank 0's saved seed + rank): each rank's sampler order comes
            # from the DistributedSampler; the workers' frame draws after a resume are warned about.
            resume = {**resume, 'seed': resume['seed'] + self.trainer.global_rank}
        generator = torch.Generator()
        batches = ResumableBatchSampler(RandomSampler(dataset, generator=generator), hp.batch_size, drop_last=True)
        return ResumableLoader(dataset, batch_sampler=batches, generator=generator, collate_fn=collate_clips,
                               resume=resume, **options)

    def _evaluation_sampler(self, split):
        """Under DDP, each validation or test item on one rank only (ranks may differ by one batch:
        evaluation has no gradient to synchronise); None otherwise, for Lightning to decide."""
        trainer, dataset = self.trainer, self.dataset(split)
        if split not in ('val', 'test') or trainer is None or trainer.world_size == 1:
            return None
        if len(dataset) < trainer.world_size:
            rank_zero_warn(f'{split}: {len(dataset)} videos for {trainer.world_size} ranks; Lightning repeats some '
                           'so that every rank has one, and the metrics count the repeats')
            return None
        return UnrepeatedDistributedSampler(dataset, num_replicas=trainer.world_size, rank=trainer.global_rank,
                                            shuffle=False)

    def train_dataloader(self):
        return self._loader('train')

    def state_dict(self):
        """The training loader's state (ResumableLoader) while an epoch runs, saved in checkpoints and
        restored before any loader is built, which Lightning's own restoring of it misses here."""
        trainer = self.trainer
        loader = trainer.train_dataloader if trainer is not None else None
        # An epoch the trainer has finished (every batch, or those limit_train_batches allows) is not resumed.
        if not isinstance(loader, ResumableLoader) or loader.state_dict()['served'] >= trainer.num_training_batches:
            return {}
        return {'train_loader': loader.state_dict()}

    def load_state_dict(self, state):
        self._train_state = state.get('train_loader')

    def val_dataloader(self):
        # No validation source: an empty list tells Lightning to skip validation.
        return self._loader('val') if self.sources['val'] is not None else []

    def test_dataloader(self):
        return self._loader('test')

    def transform_batch(self, batch, stage):
        """Augment (stage 'train'), normalise and mix (training, with mixup) a collated batch on its
        device (see the module doc); evaluation views arrive cropped (collate_views)."""
        hp = self.hparams
        video = batch['video'].float().div_(255)
        training = stage == 'train'
        if training:
            video = self.train_augment(video)
        video = preprocessing.normalize(video, self.preprocessing.mean, self.preprocessing.std)
        label = batch['label']
        if training and hp.mixup:
            video, label = mix_clips(video, label, self.num_classes, hp.mixup_alpha, hp.cutmix_alpha)
        return {**batch, 'video': video, 'label': label}

    def on_after_batch_transfer(self, batch, dataloader_idx):
        return self.transform_batch(batch, 'train' if self.trainer.training else 'eval')


class SkippedVideos(pl.Callback):
    """Sums the batches' `skipped` counts (videos replaced in training, left out in evaluation); logs
    `{stage}/skipped_videos` and warns once per epoch."""

    def __init__(self):
        self.counts = Counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.counts['train'] += batch['skipped']

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.counts['val'] += batch['skipped']

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.counts['test'] += batch['skipped']

    def on_train_epoch_end(self, trainer, pl_module):
        self._report('train', trainer, pl_module)

    def on_validation_epoch_end(self, trainer, pl_module):
        self._report('val', trainer, pl_module)

    def on_test_epoch_end(self, trainer, pl_module):
        self._report('test', trainer, pl_module)

    def _report(self, stage, trainer, pl_module):
        count = self.counts.pop(stage, 0)
        pl_module.log(f'{stage}/skipped_videos', float(count), reduce_fx='sum', sync_dist=True)
        if count:
            fate = 'replaced by others' if stage == 'train' else 'left out'
            rank_zero_warn(f'epoch {trainer.current_epoch} {stage}: {count} unreadable videos were {fate} '
                           f'(logged above with their paths)')
