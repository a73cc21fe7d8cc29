"""The LightningModule, through real Lightning fits of a tiny TimeSformer on the generated demo clips."""
import math

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from data_trainer import VideoDataModule
from model_loading import load_model
from model_trainer import LitVideoClassifier, NonFiniteLossError, recompute_blocks_in_backward
from pretrain_trainer import LitMaskedAutoencoder
from reference import randomise_
from run_outputs import AtomicCheckpointIO
from transformer import Block
from video_transformer import timesformer_tiny, videomae_tiny, vjepa2_tiny


def tiny_data(demo_data, **overrides):
    settings = dict(train_data_path=demo_data / 'train.txt', val_data_path=demo_data / 'val.txt',
                    test_data_path=demo_data / 'test.txt', class_map=demo_data / 'classmap.json', num_frames=4,
                    frame_interval=2, img_size=32, batch_size=4, num_workers=0, num_clips=2, num_crops=3,
                    color_jitter=0.0, crop_scale=(0.5, 1.0))
    return VideoDataModule(**{**settings, **overrides})


def tiny_module(data, **settings):
    return LitVideoClassifier(timesformer_tiny(num_classes=data.num_classes), data.class_names,
                              data.preprocessing.to_dict(), **settings)


def fit(module, data, tmp_path, max_steps=-1, max_epochs=1, **trainer_settings):
    trainer = pl.Trainer(accelerator='cpu', devices=1, max_epochs=max_epochs, max_steps=max_steps, logger=False,
                         default_root_dir=tmp_path, enable_progress_bar=False, enable_model_summary=False,
                         plugins=[AtomicCheckpointIO()], num_sanity_val_steps=0, **trainer_settings)
    trainer.fit(module, data)
    return trainer


def snapshot(module):
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


class TrainingModes(pl.Callback):
    """Records, at every training step, which modules of the classifier are in training mode."""

    def __init__(self):
        self.seen = set()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen |= {name for name, module in pl_module.model.named_modules() if module.training}


def test_linear_probe_trains_the_head_only(demo_data, tmp_path):
    pl.seed_everything(0)
    data = tiny_data(demo_data)
    module = tiny_module(data, freeze_backbone=True, optim_type='adamw', lr=1e-2, weight_decay=0.05)
    before = snapshot(module)
    modes = TrainingModes()
    fit(module, data, tmp_path, max_steps=3, enable_checkpointing=False, limit_val_batches=1, callbacks=[modes],
        val_check_interval=2)
    after = snapshot(module)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == {'model.head.fc.weight', 'model.head.fc.bias'}
    # The backbone stays in eval mode (no dropout, no stochastic depth), validation in between included.
    assert modes.seen == {'', 'head', 'head.dropout', 'head.fc'}


def test_a_checkpoint_that_names_the_linear_probe_by_eval_metrics_loads_with_a_frozen_backbone(demo_data, tmp_path):
    """Checkpoints saved before freeze_backbone record the mode as eval_metrics='linear_prob': they load
    with the backbone frozen and in eval mode, and their hyper-parameters then say freeze_backbone. Fails
    if the old keyword is refused, or read as fine-tuning (every parameter trainable)."""
    data = tiny_data(demo_data)
    module = tiny_module(data, freeze_backbone=True)
    assert module.hparams.freeze_backbone is True and 'eval_metrics' not in module.hparams
    path = tmp_path / 'old.ckpt'
    hyper_parameters = {key: value for key, value in module.hparams.items() if key != 'freeze_backbone'}
    torch.save({'state_dict': module.state_dict(), 'pytorch-lightning_version': pl.__version__,
                'hyper_parameters': {**hyper_parameters, 'eval_metrics': 'linear_prob'}}, path)
    for eval_metrics, frozen in (('linear_prob', True), ('finetune', False)):
        if eval_metrics == 'finetune':
            raw = torch.load(path, weights_only=True)
            raw['hyper_parameters']['eval_metrics'] = 'finetune'
            torch.save(raw, path)
        loaded = LitVideoClassifier.load_from_checkpoint(path, weights_only=True).train()
        assert loaded.hparams.freeze_backbone is frozen and 'eval_metrics' not in loaded.hparams
        backbone = loaded.model.backbone
        assert all(not parameter.requires_grad for parameter in backbone.parameters()) is frozen
        assert backbone.training is not frozen
    with pytest.raises(ValueError, match=r"eval_metrics must be one of \('finetune', 'linear_prob', None\)"):
        tiny_module(data, eval_metrics='linear')


def test_freeze_blocks_freezes_the_embedding_and_exactly_those_blocks(demo_data, tmp_path):
    pl.seed_everything(0)
    data = tiny_data(demo_data)
    module = tiny_module(data, freeze_blocks=1, optim_type='adamw', lr=1e-2)
    before = snapshot(module)
    fit(module, data, tmp_path, max_steps=3, enable_checkpointing=False, limit_val_batches=0)
    after = snapshot(module)
    for name in before:
        frozen = name.startswith(('model.backbone.patch_embed.', 'model.backbone.blocks.0.')) or name in (
            'model.backbone.cls_token', 'model.backbone.pos_embed', 'model.backbone.time_embed')
        if name.endswith(('temporal_fc.weight', 'temporal_fc.bias')) and not frozen:
            continue  # zero-initialised and may stay near zero; not evidence either way
        assert torch.equal(before[name], after[name]) == frozen, name


def test_layer_decay_scales_each_block_and_spares_norms_biases_and_tables(demo_data):
    data = tiny_data(demo_data)
    module = tiny_module(data, lr=0.1, layer_decay=0.5, weight_decay=0.05)
    groups = module.parameter_groups()
    names = {id(parameter): name for name, parameter in module.named_parameters()}
    lr_of = {names[id(parameter)]: (group['lr'], group['weight_decay']) for group in groups
             for parameter in group['params']}
    assert len(lr_of) == sum(1 for _ in module.parameters())
    # 2 blocks: embedding 0.5^3, block 0 0.5^2, block 1 0.5, norm and head 1.
    assert lr_of['model.backbone.patch_embed.proj.weight'] == (pytest.approx(0.1 * 0.125), 0.05)
    assert lr_of['model.backbone.pos_embed'] == (pytest.approx(0.1 * 0.125), 0.0)
    assert lr_of['model.backbone.cls_token'][1] == 0.0
    assert lr_of['model.backbone.blocks.0.spatial_attn.attn.qkv.weight'] == (pytest.approx(0.1 * 0.25), 0.05)
    assert lr_of['model.backbone.blocks.1.ffn.fc1.weight'] == (pytest.approx(0.1 * 0.5), 0.05)
    assert lr_of['model.backbone.blocks.1.ffn.fc1.bias'] == (pytest.approx(0.1 * 0.5), 0.0)
    assert lr_of['model.backbone.blocks.1.ffn.norm.weight'][1] == 0.0
    assert lr_of['model.head.fc.weight'] == (pytest.approx(0.1), 0.05)


def test_schedules_warm_up_then_follow_cosine_or_milestones(demo_data):
    data = tiny_data(demo_data)
    cosine = tiny_module(data, lr=1.0, min_lr=0.01, lr_schedule='cosine', warmup_epochs=1)
    factors = [cosine.lr_factor(step, steps_per_epoch=10, total_steps=110) for step in range(110)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0) and factors[60] == pytest.approx(0.01 + 0.99 * 0.5)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:])) and factors[-1] > 0.01
    steps = tiny_module(data, lr=1.0, lr_schedule='multistep', milestones=(5, 11), lr_gamma=0.1)
    assert [steps.lr_factor(step, 10, 150) for step in (49, 50, 109, 110)] == pytest.approx([1, 0.1, 0.1, 0.01])


class OptimizerStepLrs(pl.Callback):
    """The learning rate each optimizer step uses."""

    def __init__(self):
        self.lrs = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs.append(optimizer.param_groups[-1]['lr'])


def test_a_real_fit_steps_the_schedule_per_optimizer_step_with_accumulation(demo_data, tmp_path):
    # 16 clips in batches of 4, two batches a step: 2 steps an epoch, 1 epoch of warmup, 3 epochs.
    pl.seed_everything(0)
    data = tiny_data(demo_data, val_data_path=None, test_data_path=None)
    module = tiny_module(data, optim_type='adamw', lr=1e-3, min_lr=1e-5, lr_schedule='cosine', warmup_epochs=1)
    lrs = OptimizerStepLrs()
    fit(module, data, tmp_path, max_epochs=3, accumulate_grad_batches=2, callbacks=[lrs])
    cosine = [0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)) for progress in (0, 0.25, 0.5, 0.75)]
    assert [lr / 1e-3 for lr in lrs.lrs] == pytest.approx([0.5, 1.0, *cosine])


def test_checkpoint_rebuilds_with_class_names_and_preprocessing(demo_data, tmp_path):
    pl.seed_everything(0)
    data = tiny_data(demo_data)
    module = tiny_module(data, optim_type='adamw', lr=1e-3)
    trainer = fit(module, data, tmp_path, max_steps=2, limit_val_batches=1)
    path = tmp_path / 'checkpoint.ckpt'
    trainer.save_checkpoint(path)
    raw = torch.load(path, weights_only=True)  # plain types only
    assert raw['hyper_parameters']['config']['num_classes'] == 4
    model = load_model(path)
    assert model.class_names == data.class_names
    assert model.preprocessing == data.preprocessing
    video = torch.rand(2, 4, 3, 32, 32)
    module.eval()
    torch.testing.assert_close(model(video), module(video), rtol=0, atol=0)


def test_evaluation_averages_the_views_and_reports_one_view(demo_data, tmp_path):
    """Recomputes test top-1, top-1 at one view and the loss from the raw views of 16 videos under
    randomised weights (logits that differ between views). Fails if the views' logits are averaged before the softmax
    (the loss differs, checked to differ below) or another view is taken as the one view."""
    pl.seed_everything(0)
    data = tiny_data(demo_data, batch_size=2, test_data_path=demo_data / 'train.txt')
    module = tiny_module(data)
    randomise_(module.model, std=1.0)  # views far enough apart to tell the averages apart
    trainer = pl.Trainer(accelerator='cpu', devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    results = trainer.test(module, data, verbose=False)[0]
    assert {'test/top1', 'test/top5', 'test/top1_1view', 'test/top5_1view', 'test/loss'} <= set(results)
    # Recompute from the raw views: 2 clips x 3 crops per video, softmax averaged.
    data.setup('test')
    logits, labels = [], []
    module.eval()
    with torch.no_grad():
        for batch in data.test_dataloader():
            batch = data.transform_batch(batch, 'test')
            video = batch['video']
            assert video.shape[1] == 6
            logits.append(module(video.flatten(0, 1)).view(video.shape[0], 6, -1))
            labels.append(batch['label'])
    logits, labels = torch.cat(logits), torch.cat(labels)
    assert len(labels) == 16
    probabilities = logits.softmax(-1).mean(1)
    assert results['test/top1'] == pytest.approx((probabilities.argmax(1) == labels).float().mean().item())
    # The centre crop of the later middle clip: clip 1, crop 1 of 3.
    assert results['test/top1_1view'] == pytest.approx((logits[:, 4].argmax(1) == labels).float().mean().item())
    loss = F.nll_loss(probabilities.log(), labels).item()
    assert results['test/loss'] == pytest.approx(loss, rel=1e-4)
    logit_mean_loss = F.cross_entropy(logits.mean(1), labels).item()
    assert abs(logit_mean_loss - loss) > 100 * 1e-4 * loss, 'the views cannot tell the two averages apart'
    other_views = [(logits[:, view].argmax(1) == labels).float().mean().item() for view in range(6) if view != 4]
    assert any(top1 != pytest.approx(results['test/top1_1view']) for top1 in other_views)
    # The same collection's per-class results: the confusion of the averaged views, counts per true class.
    confusion = torch.zeros(4, 4, dtype=torch.int64).index_put_((labels, probabilities.argmax(1)), torch.tensor(1),
                                                                accumulate=True)
    assert torch.equal(module.test_results['confusion'], confusion)
    per_class = confusion.diagonal() / confusion.sum(dim=1).clamp_min(1)
    torch.testing.assert_close(module.test_results['per_class_top1'], per_class.float())


# Dropout and drop path in every block, so that recomputation must draw the masks the plain run drew.
REGULARISED = dict(dropout_p=0.2, drop_path_rate=0.3)
# Blocks of each model: the encoder's two, V-JEPA 2's pooler's one, the pretraining decoder's one.
RECOMPUTED_BLOCKS = {'timesformer': 2, 'videomae': 2, 'vjepa2': 3, 'videomae pretraining': 3}


def regularised_module(name, data):
    """The LightningModule of `name` (a RECOMPUTED_BLOCKS key), tiny, dropout and drop path on."""
    settings = dict(optim_type='adamw', lr=1e-3)
    if name == 'videomae pretraining':
        return LitMaskedAutoencoder(videomae_tiny(**REGULARISED), data.preprocessing.to_dict(), mask_ratio=0.75,
                                    decoder_dim=16, decoder_depth=1, decoder_num_heads=2, **settings)
    preset = {'timesformer': timesformer_tiny, 'videomae': videomae_tiny, 'vjepa2': vjepa2_tiny}[name]
    return LitVideoClassifier(preset(num_classes=len(data.class_names), **REGULARISED), data.class_names,
                              data.preprocessing.to_dict(), **settings)


def scalar_output(module, clips):
    """A scalar of the module's output on clips (B, T, 3, S, S): the pretraining loss under a fixed mask, or
    the classifier's squared logits summed."""
    if isinstance(module, LitMaskedAutoencoder):
        return module(clips, module.draw_mask(len(clips), torch.Generator().manual_seed(1)))
    return module(clips).square().sum()


@pytest.mark.parametrize('name', list(RECOMPUTED_BLOCKS))
def test_activation_checkpointing_recomputes_each_block_with_the_plain_gradients(demo_data, tmp_path, name):
    """Every block runs again in backward (V-JEPA 2's pooler's and the pretraining decoder's too),
    every trainable parameter gets the plain run's gradient (dropout and drop path drawn alike), and
    the checkpoint of a real fit loads with load_model. Fails if a block is not wrapped (the flag
    ignored, as it was without FSDP; the decoder's left out, as when only the LightningModule's
    `model` was wrapped), if recomputation draws other dropout masks, or if the wrapper's prefix
    reaches the state_dict keys."""
    data = tiny_data(demo_data)
    plain = regularised_module(name, data)
    randomise_(plain)
    recomputed = regularised_module(name, data)
    recomputed.load_state_dict(plain.state_dict())
    keys = list(recomputed.state_dict())
    assert recompute_blocks_in_backward(recomputed) == RECOMPUTED_BLOCKS[name]
    assert list(recomputed.state_dict()) == keys
    clips = torch.rand(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    gradients = []
    for module in (plain, recomputed):
        calls = []
        for block in module.modules():
            if isinstance(block, Block):
                block.register_forward_pre_hook(lambda *_: calls.append(1))
        torch.manual_seed(0)
        scalar_output(module.train(), clips).backward()
        # each block once more in backward
        assert len(calls) == RECOMPUTED_BLOCKS[name] * (1 if module is plain else 2)
        gradients.append({name: parameter.grad for name, parameter in module.named_parameters()
                          if parameter.requires_grad})
    plain_gradients, recomputed_gradients = gradients
    assert [key.replace('._checkpoint_wrapped_module', '') for key in recomputed_gradients] == list(plain_gradients)
    for (key, expected), actual in zip(plain_gradients.items(), recomputed_gradients.values()):
        assert expected is not None and expected.abs().sum() > 0, key
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6, msg=key)
    pl.seed_everything(0)
    trainer = fit(recomputed, data, tmp_path, max_steps=2, limit_val_batches=0, enable_checkpointing=False)
    trainer.save_checkpoint(tmp_path / 'recomputed.ckpt')
    video = torch.rand(2, 4, 3, 32, 32)
    with torch.no_grad():
        if name == 'videomae pretraining':
            loaded = load_model(tmp_path / 'recomputed.ckpt', drop_head=True, num_classes=2).backbone
            torch.testing.assert_close(loaded(video), recomputed.eval().backbone(video), rtol=0, atol=0)
        else:
            torch.testing.assert_close(load_model(tmp_path / 'recomputed.ckpt')(video), recomputed.eval()(video),
                                       rtol=0, atol=0)


class FirstStepWeights(pl.Callback):
    """Keeps the weights as they are after the first training step."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == 0:
            self.weights = snapshot(pl_module)


def test_nonfinite_loss_stops_naming_the_step_or_is_skipped(demo_data, tmp_path):
    # An absurd learning rate overflows the weights at the first step: every later loss is a real
    # non-finite one.
    pl.seed_everything(0)
    data = tiny_data(demo_data)
    module = tiny_module(data, optim_type='sgd', lr=1e30, momentum=0.0)
    with pytest.raises(NonFiniteLossError, match=r'loss is (nan|inf) at step 1 \(epoch 0\); last good checkpoint'):
        fit(module, data, tmp_path, enable_checkpointing=False, limit_val_batches=0)
    pl.seed_everything(0)
    module = tiny_module(data, optim_type='sgd', lr=1e30, momentum=0.0, nonfinite_loss='skip')
    first = FirstStepWeights()
    fit(module, data, tmp_path, enable_checkpointing=False, limit_val_batches=0, callbacks=[first])
    assert module.skipped_steps == len(data.dataset('train')) // 4 - 1
    after = snapshot(module)
    assert all(torch.equal(first.weights[name], after[name]) for name in after)  # skipped steps change nothing


@pytest.mark.parametrize('num_workers', [0, 1])
def test_resume_continues_exactly_where_the_run_stopped(demo_data, tmp_path, num_workers):
    """Two epochs straight give the same weights as one epoch, a checkpoint, a new process state,
    and one more epoch: optimiser, schedule, step and every random draw continue."""
    def run(epochs, name, ckpt_path=None):
        pl.seed_everything(0, workers=True)
        data = tiny_data(demo_data, num_workers=num_workers, persistent_workers=False, mixup=True, color_jitter=0.4)
        module = tiny_module(data, optim_type='adamw', lr=1e-3, lr_schedule='cosine', warmup_epochs=1)
        trainer = pl.Trainer(accelerator='cpu', devices=1, max_epochs=epochs, logger=False, default_root_dir=tmp_path,
                             enable_progress_bar=False, enable_model_summary=False, plugins=[AtomicCheckpointIO()],
                             callbacks=[pl.callbacks.ModelCheckpoint(tmp_path / name, save_last=True)],
                             limit_val_batches=1)
        trainer.fit(module, data, ckpt_path=ckpt_path, weights_only=True)
        return snapshot(module), trainer

    straight, _ = run(2, 'straight')
    _, first = run(1, 'stopped')
    resumed, second = run(2, 'resumed', ckpt_path=tmp_path / 'stopped' / 'last.ckpt')
    assert second.global_step == 2 * first.global_step
    assert straight.keys() == resumed.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=0, msg=name)


def test_a_checkpoint_of_another_number_of_processes_warns_and_draws_from_the_seed(demo_data, tmp_path):
    """A checkpoint holding the RNG states of 2 processes resumed by 1: one warning line, and training
    goes on. Fails if the states are restored regardless (rank 0's, as if the runs matched) or silently
    dropped."""
    data = tiny_data(demo_data, val_data_path=None, test_data_path=None)
    trainer = fit(tiny_module(data), data, tmp_path, max_steps=1, callbacks=[pl.callbacks.ModelCheckpoint(tmp_path)])
    checkpoint = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=True)
    checkpoint['rng_states'] = {name: state.repeat(2, *[1] * (state.ndim - 1))
                                for name, state in checkpoint['rng_states'].items()}
    torch.save(checkpoint, tmp_path / 'two.ckpt')
    module = tiny_module(data)
    resumed = pl.Trainer(accelerator='cpu', devices=1, max_steps=2, logger=False, default_root_dir=tmp_path,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    with pytest.warns(UserWarning, match=r'the checkpoint holds the RNG states of 2 processes, this run has 1; '
                                         r'random draws continue from the seed instead'):
        resumed.fit(module, data, ckpt_path=tmp_path / 'two.ckpt', weights_only=True)
    assert resumed.global_step == 2


def test_resume_from_a_mid_epoch_step_checkpoint_continues_exactly(demo_data, tmp_path):
    """Two epochs straight, saving every 3 steps (4 steps an epoch), give the same weights as a new
    run resumed from the step-3 checkpoint, saved with one batch of epoch 0 still to come. Fails if a
    resumed run repeats or skips that epoch's batches (as when the training loader kept no position and
    restarted the epoch), or draws other windows, crops, flips or mixes."""
    def run(name, ckpt_path=None):
        pl.seed_everything(0, workers=True)
        data = tiny_data(demo_data, persistent_workers=False, mixup=True, color_jitter=0.4, val_data_path=None,
                         test_data_path=None)
        module = tiny_module(data, optim_type='adamw', lr=1e-3, lr_schedule='cosine', warmup_epochs=1)
        steps = pl.callbacks.ModelCheckpoint(tmp_path / name, filename='{step}', every_n_train_steps=3,
                                             save_top_k=-1)
        trainer = pl.Trainer(accelerator='cpu', devices=1, max_epochs=2, logger=False, default_root_dir=tmp_path,
                             enable_progress_bar=False, enable_model_summary=False, plugins=[AtomicCheckpointIO()],
                             callbacks=[steps])
        trainer.fit(module, data, ckpt_path=ckpt_path, weights_only=True)
        return snapshot(module), trainer

    straight, first = run('straight')
    checkpoint = tmp_path / 'straight' / 'step=3.ckpt'
    assert torch.load(checkpoint, weights_only=True)['global_step'] == 3
    resumed, second = run('resumed', ckpt_path=checkpoint)
    assert first.global_step == second.global_step == 8
    assert straight.keys() == resumed.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=0, msg=name)
