"""The DataModule under a real Lightning Trainer, and the device-side augmentation's contract."""
import random
import warnings
from collections import defaultdict
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import RandomSampler, SequentialSampler

from data_trainer import SkippedVideos, VideoDataModule, mix_clips, parse_auto_augment, train_augmentation
from dataset import spatial_crops
from ddp_fit import run_on_two_ranks
from demo.make_demo_dataset import CLASSES
from preprocessing import DATA_STATICS, Preprocessing


class TinyVideoModel(pl.LightningModule):
    """A linear layer over frame-averaged colours: enough to drive Lightning through every loader."""

    def __init__(self, num_classes):
        super().__init__()
        self.head = torch.nn.Linear(3, num_classes)
        self.seen = defaultdict(list)

    def forward(self, video):
        """(N, T, 3, H, W) -> logits (N, num_classes)."""
        return self.head(video.mean(dim=(1, 3, 4)))

    def record(self, stage, batch):
        self.seen[stage].append({key: (value.shape, value.dtype) if torch.is_tensor(value) else value
                                 for key, value in batch.items()})

    def training_step(self, batch, batch_idx):
        self.record('train', batch)
        return F.cross_entropy(self(batch['video']), batch['label'])

    def averaged_logits(self, batch):
        """(B, V, T, 3, H, W) views -> logits (B, num_classes) averaged over the views."""
        batch_size, views = batch['video'].shape[:2]
        return self(batch['video'].flatten(0, 1)).view(batch_size, views, -1).mean(1)

    def validation_step(self, batch, batch_idx):
        self.record('val', batch)
        if len(batch['video']):
            self.averaged_logits(batch)

    def test_step(self, batch, batch_idx):
        self.record('test', batch)
        if len(batch['video']):
            self.averaged_logits(batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def write_list(path, lines):
    path.write_text(''.join(f'{line}\n' for line in lines))
    return path


def quiet_trainer(**options):
    return pl.Trainer(accelerator='cpu', devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, **options)


def small_module(demo_data, **overrides):
    settings = dict(train_data_path=demo_data / 'train.txt', val_data_path=demo_data / 'val.txt',
                    test_data_path=demo_data / 'test.txt', class_map=demo_data / 'classmap.json',
                    num_frames=4, frame_interval=4, img_size=32, batch_size=4, num_workers=0, color_jitter=0.0)
    return VideoDataModule(**{**settings, **overrides})


def test_trainer_runs_every_stage_with_two_workers(demo_data, tmp_path):
    # Six good videos and two missing ones: two batches of four read every line once.
    good = (demo_data / 'train.txt').read_text().splitlines()[:6]
    lines = [f'{demo_data / path}\t{label}' for path, label in (line.split('\t') for line in good)]
    train_list = tmp_path / 'train.txt'
    train_list.write_text('\n'.join(lines + ['gone/a.mp4\tgrowing', 'gone/b.mp4\tshrinking']) + '\n')
    data = small_module(demo_data, train_data_path=train_list, num_workers=2, mixup=True,
                        auto_augment='rand-m9-mstd0.5-inc1', num_clips=2, num_crops=3)
    model = TinyVideoModel(data.num_classes)
    trainer = quiet_trainer(max_epochs=1, limit_val_batches=2, num_sanity_val_steps=0, callbacks=[SkippedVideos()])
    with pytest.warns(UserWarning, match=r'epoch 0 train: \d+ unreadable videos were replaced'):
        trainer.fit(model, datamodule=data)
    assert trainer.callback_metrics['train/skipped_videos'] >= 2
    assert sum(batch['skipped'] for batch in model.seen['train']) >= 2
    trainer.test(model, datamodule=data)
    assert trainer.callback_metrics['test/skipped_videos'] == 0

    assert len(model.seen['train']) == 2
    for batch in model.seen['train']:
        assert batch['video'] == ((4, 4, 3, 32, 32), torch.float32)
        assert batch['label'] == ((4, len(CLASSES)), torch.float32)
    assert model.seen['val'][0]['video'] == ((4, 1, 4, 3, 32, 32), torch.float32)
    assert model.seen['test'][0]['video'] == ((4, 2 * 3, 4, 3, 32, 32), torch.float32)
    for stage in ('val', 'test'):
        assert model.seen[stage][0]['label'] == ((4,), torch.int64)
        assert model.seen[stage][0]['index'] == ((4,), torch.int64)
        paths = model.seen[stage][0]['path']
        assert len(paths) == 4 and all(Path(path).is_file() for path in paths)


def test_fit_without_validation_data(demo_data):
    data = small_module(demo_data, val_data_path=None)
    model = TinyVideoModel(data.num_classes)
    quiet_trainer(max_steps=2).fit(model, datamodule=data)
    assert len(model.seen['train']) == 2 and not model.seen['val']


def test_loaders_leave_sampling_to_lightning(demo_data):
    data = small_module(demo_data, num_workers=2, prefetch_factor=3)
    data.setup('fit')
    train, val = data.train_dataloader(), data.val_dataloader()
    assert isinstance(train.batch_sampler.sampler, RandomSampler) and train.batch_sampler.drop_last
    assert isinstance(val.sampler, SequentialSampler) and not val.drop_last
    assert train.persistent_workers and train.prefetch_factor == 3 and train.num_workers == 2
    assert train.pin_memory == torch.cuda.is_available()


class IndexRecorder(TinyVideoModel):
    """Keeps the dataset indices of every training batch, in order. As LitVideoClassifier, it asks for
    the epoch length in configure_optimizers, and its checkpoints carry torch's RNG state."""

    def __init__(self, *args):
        super().__init__(*args)
        self.indices = []

    def training_step(self, batch, batch_idx):
        self.indices.append(batch['index'].tolist())
        return super().training_step(batch, batch_idx)

    def on_save_checkpoint(self, checkpoint):
        checkpoint['torch_rng'] = torch.get_rng_state()

    def on_load_checkpoint(self, checkpoint):
        torch.set_rng_state(checkpoint['torch_rng'])

    def configure_optimizers(self):
        self.total_steps = self.trainer.estimated_stepping_batches  # builds the training loader now
        return super().configure_optimizers()


def fit_recording_indices(demo_data, tmp_path, name, num_workers=0, ckpt_path=None, **trainer_options):
    """Indices of the training batches of a fit saving a checkpoint at every step in tmp_path / name."""
    pl.seed_everything(0, workers=True)
    data = small_module(demo_data, val_data_path=None, num_workers=num_workers, persistent_workers=False)
    model = IndexRecorder(len(data.class_names))
    steps = pl.callbacks.ModelCheckpoint(tmp_path / name, filename='{step}', every_n_train_steps=1, save_top_k=-1)
    trainer = pl.Trainer(accelerator='cpu', devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, callbacks=[steps], **trainer_options)
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path, weights_only=True)
    return model.indices


@pytest.mark.parametrize('num_workers', [0, 1])
def test_a_mid_epoch_checkpoint_resumes_the_loader_at_its_next_batch(demo_data, tmp_path, num_workers):
    """Fails if a run resumed from a step checkpoint serves the epoch from its first batch, or in a
    new order (the training loader before it had a state): it must serve the batches not yet served."""
    straight = fit_recording_indices(demo_data, tmp_path, 'straight', num_workers, max_epochs=1)
    assert len(straight) == 4 and len({index for batch in straight for index in batch}) == 16
    checkpoint = torch.load(tmp_path / 'straight' / 'step=1.ckpt', weights_only=True)
    assert checkpoint['VideoDataModule']['train_loader']['served'] == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        resumed = fit_recording_indices(demo_data, tmp_path, 'resumed', num_workers, max_epochs=1,
                                        ckpt_path=tmp_path / 'straight' / 'step=1.ckpt')
    assert resumed == straight[1:]
    afresh = [str(warning.message) for warning in caught if 'draw their frame windows afresh' in str(warning.message)]
    assert afresh == (['resuming at batch 1 of 4 of the epoch: the same clips follow, but the loader workers draw '
                       'their frame windows afresh (exact with -num_workers 0)'] if num_workers else [])


def test_an_epoch_cut_short_by_limit_train_batches_is_not_resumed(demo_data, tmp_path):
    """Fails if the loader's position at the end of an epoch that limit_train_batches cut short is
    resumed: the next epoch would serve the rest of the old one instead of a new order."""
    straight = fit_recording_indices(demo_data, tmp_path, 'straight', max_epochs=2, limit_train_batches=2)
    checkpoint = torch.load(tmp_path / 'straight' / 'step=2.ckpt', weights_only=True)
    assert 'VideoDataModule' not in checkpoint
    resumed = fit_recording_indices(demo_data, tmp_path, 'resumed', max_epochs=2, limit_train_batches=2,
                                    ckpt_path=tmp_path / 'straight' / 'step=2.ckpt')
    assert resumed == straight[2:]


def test_class_names_from_the_class_map_or_the_lists(demo_data):
    assert small_module(demo_data).class_names == list(CLASSES)
    data = small_module(demo_data, class_map=None, num_classes=None)
    assert data.class_names == sorted(CLASSES) and data.num_classes == 4
    data.setup('fit')
    assert data.dataset('val').class_names == data.class_names


def test_num_samples_per_cls_caps_training_clips_only(demo_data):
    """Fails if -num_samples_per_cls also caps validation and test (16 of 64 test videos)."""
    listed = demo_data / 'train.txt'  # 4 clips per class in every split
    data = small_module(demo_data, num_samples_per_cls=1, val_data_path=listed, test_data_path=listed)
    assert [len(data.dataset(split)) for split in ('train', 'val', 'test')] == [4, 16, 16]


def test_datamodule_argument_errors(demo_data):
    with pytest.raises(ValueError, match='data_statics must be one of'):
        small_module(demo_data, data_statics='k400')
    with pytest.raises(ValueError, match='short_side 28 is smaller than img_size 32'):
        small_module(demo_data, short_side=28)
    with pytest.raises(ValueError, match='mixup needs'):
        small_module(demo_data, mixup=True, mixup_alpha=0.0, cutmix_alpha=0.0)
    with pytest.raises(ValueError, match='num_crops must be a positive integer, got 0'):
        small_module(demo_data, num_crops=0)
    with pytest.raises(ValueError, match='max_skip_fraction must be at least 0 and below 1, got 1'):
        small_module(demo_data, max_skip_fraction=1)
    with pytest.raises(ValueError, match='no test data'):
        small_module(demo_data, test_data_path=None).dataset('test')


def test_checkpoint_hyper_parameters_load_with_weights_only(demo_data, tmp_path):
    # Paths given as Path objects were pickled as PosixPath, which weights_only refuses.
    data = small_module(demo_data, root_dir=demo_data, data_statics='imagenet')
    model = TinyVideoModel(data.num_classes)
    trainer = quiet_trainer(max_steps=1, limit_val_batches=1, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=data)
    trainer.save_checkpoint(tmp_path / 'last.ckpt')
    saved = torch.load(tmp_path / 'last.ckpt', weights_only=True)['datamodule_hyper_parameters']
    assert saved['train_data_path'] == str(demo_data / 'train.txt') and saved['root_dir'] == str(demo_data)
    assert saved['class_map'] == str(demo_data / 'classmap.json')
    assert 'label_smoothing' not in saved
    rebuilt = VideoDataModule.load_from_checkpoint(tmp_path / 'last.ckpt', weights_only=True)
    assert rebuilt.preprocessing == data.preprocessing and rebuilt.class_names == data.class_names
    # Checkpoints from before the DataModule lost its predict split record a predict_data_path: still read.
    checkpoint = torch.load(tmp_path / 'last.ckpt', weights_only=True)
    checkpoint['datamodule_hyper_parameters']['predict_data_path'] = str(demo_data / 'test.txt')
    torch.save(checkpoint, tmp_path / 'older.ckpt')
    rebuilt = VideoDataModule.load_from_checkpoint(tmp_path / 'older.ckpt', weights_only=True)
    assert rebuilt.preprocessing == data.preprocessing and 'predict_data_path' not in rebuilt.hparams


def test_preprocessing_carries_the_data_settings(demo_data):
    data = small_module(demo_data, frame_interval=3, window_seconds=0.5, data_statics='inception', num_clips=2,
                        num_crops=1)
    assert data.preprocessing == Preprocessing(num_frames=4, frame_interval=3, window_seconds=0.5, img_size=32,
                                               short_side=37, mean=(0.5,) * 3, std=(0.5,) * 3, num_clips=2,
                                               num_crops=1)
    assert Preprocessing.from_dict(data.preprocessing.to_dict()) == data.preprocessing


def test_evaluation_leaves_unreadable_videos_out(demo_data, tmp_path):
    # Val: two good videos and two missing ones; test: only missing ones, so its one batch is empty.
    good = (demo_data / 'val.txt').read_text().splitlines()[:2]
    lines = [f'{demo_data / path}\t{name}' for path, name in (line.split('\t') for line in good)]
    val_list = write_list(tmp_path / 'val.txt', [lines[0], 'gone/a.mp4\tgrowing', lines[1], 'gone/b.mp4\tgrowing'])
    test_list = write_list(tmp_path / 'test.txt', ['gone/c.mp4\tgrowing', 'gone/d.mp4\tshrinking'])
    data = small_module(demo_data, val_data_path=val_list, test_data_path=test_list, num_clips=2, num_crops=3)
    model = TinyVideoModel(data.num_classes)
    trainer = quiet_trainer(callbacks=[SkippedVideos()])
    with pytest.warns(UserWarning, match=r'epoch 0 val: 2 unreadable videos were left out'):
        trainer.validate(model, datamodule=data)
    assert trainer.callback_metrics['val/skipped_videos'] == 2
    [batch] = model.seen['val']
    assert batch['video'] == ((2, 1, 4, 3, 32, 32), torch.float32)
    assert batch['path'] == [str(demo_data / line.split('\t')[0]) for line in good]
    assert [path for path, _ in batch['failed']] == [str(tmp_path / 'gone' / name) for name in ('a.mp4', 'b.mp4')]
    with pytest.warns(UserWarning, match=r'epoch 0 test: 2 unreadable videos were left out'):
        trainer.test(model, datamodule=data)
    [batch] = model.seen['test']
    assert batch['video'] == ((0, 2 * 3, 4, 3, 32, 32), torch.float32) and batch['label'] == ((0,), torch.int64)
    assert batch['skipped'] == 2 and batch['path'] == []


# ---------------------------------------------------------------- device-side augmentation

def uint8_batch(batch_size=3, clips=None, frames=4, height=40, width=50, seed=0):
    """Random uint8 (B, T, 3, H, W) clips, or (B, clips, T, 3, H, W), whose frames are all alike."""
    generator = torch.Generator().manual_seed(seed)
    shape = (batch_size,) + ((clips,) if clips else ()) + (1, 3, height, width)
    video = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    return {'video': video.expand(*shape[:-4], frames, 3, height, width).clone(),
            'label': torch.arange(batch_size) % 4, 'index': torch.arange(batch_size), 'skipped': 0}


def test_train_batches_get_one_crop_per_clip(demo_data):
    data = small_module(demo_data, color_jitter=0.4, auto_augment='rand-m9-n3')
    batch = uint8_batch()
    # The same clip three times: different crops across the batch, one crop within a clip.
    batch['video'] = batch['video'][:1].expand(3, -1, -1, -1, -1).clone()
    torch.manual_seed(0)
    random.seed(0)
    out = data.transform_batch(batch, 'train')
    video = out['video']
    assert video.shape == (3, 4, 3, 32, 32) and video.dtype == torch.float32 and torch.isfinite(video).all()
    assert out['label'].dtype == torch.int64 and out['index'] is batch['index'] and out['skipped'] == 0
    for clip in video:
        assert torch.allclose(clip, clip[:1].expand_as(clip), atol=1e-5)
    assert not torch.allclose(video[0], video[1]) and not torch.allclose(video[1], video[2])


def test_train_augmentation_with_colour_jitter_keeps_frames_together():
    augment = train_augmentation(24, color_jitter=0.4)
    video = uint8_batch(batch_size=2, frames=5)['video'].float() / 255
    torch.manual_seed(1)
    out = augment(video)
    assert out.shape == (2, 5, 3, 24, 24)
    assert all(torch.allclose(clip, clip[:1].expand_as(clip), atol=1e-5) for clip in out)


def items(batch):
    """A collated batch back to the dataset items it could have come from."""
    return [{'video': video, 'label': int(label), 'index': int(index), 'path': f'{int(index)}.mp4', 'failed': []}
            for video, label, index in zip(batch['video'], batch['label'], batch['index'])]


@pytest.mark.parametrize('statics', sorted(DATA_STATICS))
def test_val_batches_are_the_normalised_centre_crop(demo_data, statics):
    data = small_module(demo_data, data_statics=statics, num_clips=2, num_crops=3)
    batch = uint8_batch(clips=1)
    out = data.transform_batch(data.val_dataloader().collate_fn(items(batch)), 'val')
    mean, std = (torch.tensor(values).view(3, 1, 1) for values in DATA_STATICS[statics])
    expected = (batch['video'][..., 4:36, 9:41].float() / 255 - mean) / std
    assert out['video'].shape == (3, 1, 4, 3, 32, 32)
    assert torch.allclose(out['video'], expected, atol=1e-6)
    assert torch.equal(out['label'], batch['label'])


def test_test_batches_stack_clips_by_crops(demo_data):
    data = small_module(demo_data, num_clips=2, num_crops=3, data_statics='inception')
    batch = uint8_batch(batch_size=2, clips=2)
    out = data.transform_batch(data.test_dataloader().collate_fn(items(batch)), 'test')
    assert out['video'].shape == (2, 6, 4, 3, 32, 32)
    # View v * num_crops + k is clip v, crop k: left, centre and right along the long side.
    for view, (clip, left) in enumerate((clip, left) for clip in range(2) for left in (0, 9, 18)):
        expected = batch['video'][:, clip, ..., 4:36, left:left + 32].float() / 255 * 2 - 1
        assert torch.allclose(out['video'][:, view], expected, atol=1e-6)


@pytest.mark.parametrize('split', ['val', 'test'])
def test_a_clips_views_do_not_depend_on_its_batch(demo_data, split):
    # A wide clip batched with a narrower one keeps the crops it gets alone.
    data = small_module(demo_data, num_clips=2, num_crops=3)
    collate = getattr(data, f'{split}_dataloader')().collate_fn
    clips = 2 if split == 'test' else 1
    wide, narrow = items(uint8_batch(1, clips, width=60)), items(uint8_batch(1, clips, width=40, seed=1))
    alone = collate(wide)['video'][0]
    assert torch.equal(collate(wide + narrow)['video'][0], alone)
    assert torch.equal(collate(narrow + wide)['video'][1], alone)


def test_spatial_crops_follow_the_long_side():
    landscape = torch.zeros(2, 3, 40, 60)
    assert [crop.shape[-2:] for crop in spatial_crops(landscape, 32, 3)] == [(32, 32)] * 3
    ramp = torch.arange(60.0).expand(40, 60)
    assert [int(crop[0, 0]) for crop in spatial_crops(ramp, 32, 3)] == [0, 14, 28]
    assert [int(crop[0, 0]) for crop in spatial_crops(ramp, 32)] == [14]
    portrait = torch.arange(60.0)[:, None].expand(60, 40)
    assert [int(crop[0, 0]) for crop in spatial_crops(portrait, 32, 3)] == [0, 14, 28]
    # An odd number of spare pixels (231 for 16:9 frames of short side 256 and crops of 224): the
    # middle of three crops is still the single centre crop, the one view evaluation reports.
    wide = torch.arange(455.0).expand(256, 455)
    assert [int(crop[0, 0]) for crop in spatial_crops(wide, 224, 3)] == [0, 115, 231]
    assert [int(crop[0, 0]) for crop in spatial_crops(wide, 224)] == [115]
    with pytest.raises(ValueError, match='cannot crop 64 pixels'):
        spatial_crops(landscape, 64)


def test_mixup_gives_soft_targets_without_smoothing(demo_data):
    # Label smoothing is the loss's: the targets mix two one-hot labels and nothing else.
    data = small_module(demo_data, mixup=True)
    random.seed(0)
    out = data.transform_batch(uint8_batch(batch_size=4), 'train')
    label = out['label']
    assert label.shape == (4, 4) and label.dtype == torch.float32
    assert torch.allclose(label.sum(1), torch.ones(4))
    assert ((label > 0).sum(1) == 2).all() and torch.allclose(label, label.flip(0).flip(1))


def test_mixup_blends_each_clip_with_its_partner():
    video = torch.rand(4, 3, 3, 8, 8)
    label = torch.tensor([0, 1, 2, 3])
    random.seed(0)
    mixed, soft = mix_clips(video, label, 4, mixup_alpha=0.8, cutmix_alpha=0.0)
    lam = soft[0, 0].item()
    assert 0 < lam < 1 and soft[0, 3].item() == pytest.approx(1 - lam)
    assert torch.allclose(mixed, video * lam + video.flip(0) * (1 - lam), atol=1e-6)


def test_cutmix_pastes_one_box_through_every_frame():
    video = torch.rand(2, 5, 3, 16, 16)
    label = torch.tensor([0, 1])
    random.seed(3)
    mixed, soft = mix_clips(video, label, 2, mixup_alpha=0.0, cutmix_alpha=1.0)
    pasted = (mixed[0] == video[1]).all(dim=1) & (mixed[0] != video[0]).any(dim=1)
    assert pasted.any()
    assert all(torch.equal(pasted[t], pasted[0]) for t in range(5))
    assert torch.equal((mixed[0] == video[0]) | (mixed[0] == video[1]), torch.ones_like(mixed[0], dtype=torch.bool))
    assert soft[0, 1].item() == pytest.approx(pasted[0].float().mean().item())


def test_parse_auto_augment():
    assert parse_auto_augment('rand-m9-mstd0.5-inc1') == (2, 9.0)
    assert parse_auto_augment('rand-n3-m5') == (3, 5.0)
    for policy, message in [('augmix-m5', 'only RandAugment'), ('rand-n2', 'needs a magnitude'),
                            ('rand-m11', 'needs a magnitude'), ('rand-m9-w0', "unknown part 'w0'")]:
        with pytest.raises(ValueError, match=message):
            parse_auto_augment(policy)


def test_ddp_ranks_get_disjoint_items_and_draw_their_own_augmentation(demo_data, tmp_path):
    # Two real processes under torchrun, gloo on CPU. One video listed 8 times and a window longer
    # than the video: every rank decodes the very same clip, so only the augmentation tells them apart.
    path, name = (demo_data / 'train.txt').read_text().splitlines()[0].split('\t')
    annotation = tmp_path / 'same.txt'
    annotation.write_text(f'{demo_data / path}\t{name}\n' * 8)
    run_on_two_ranks('augment', annotation, demo_data / 'classmap.json', tmp_path)
    ranks = [torch.load(tmp_path / f'rank{rank}.pt', weights_only=True) for rank in (0, 1)]
    assert sorted(torch.cat([rank['index'] for rank in ranks]).tolist()) == list(range(8))
    assert all(rank['video'].shape == (4, 4, 3, 32, 32) for rank in ranks)
    assert not any(torch.allclose(first, second) for first, second in zip(ranks[0]['video'], ranks[1]['video']))
    # seed_everything(0) plus the rank, added once however often setup runs (fit, test, by hand).
    assert [rank['seeds'] for rank in ranks] == [[0, 0, 0], [1, 1, 1]]


def test_ddp_ranks_resume_their_own_share_mid_epoch(demo_data, tmp_path):
    """Fails if, resumed from a mid-epoch checkpoint under DDP, a rank serves its share from the start or
    another rank's batches (the training loader kept no position, or its skip ignored the DistributedSampler)."""
    annotation = tmp_path / 'eight.txt'
    annotation.write_text(''.join(f'{demo_data / line}\n' for line in
                                  (demo_data / 'train.txt').read_text().splitlines()[:8]))
    script = Path(__file__).with_name('ddp_resume.py')
    run_on_two_ranks(annotation, demo_data / 'classmap.json', tmp_path, script=script)
    ranks = [torch.load(tmp_path / f'rank{rank}.pt', weights_only=True) for rank in (0, 1)]
    assert sorted(torch.cat([rank['straight'] for rank in ranks]).tolist()) == list(range(8))
    for rank in ranks:
        assert rank['resumed'].tolist() == rank['straight'][1:].tolist()
