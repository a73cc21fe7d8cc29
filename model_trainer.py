"""The LightningModule that trains a VideoClassifier: loss, metrics, optimiser, schedule and freezing.

Batches follow data_trainer's contract: training `video` (B, T, 3, S, S) with int64 labels or soft
targets (B, K); evaluation `video` (B, V, T, 3, S, S), V views of each clip whose softmax is
averaged (evaluation.average_views); the test counts into evaluation.test_metrics, as
model_inference.py -eval does. Everything a checkpoint needs to rebuild the model and prepare its input is saved as
plain hyper-parameters: `config` (a VideoTransformerConfig as a dict), `class_names` and
`preprocessing` (a Preprocessing as a dict), beside the optimisation settings.
"""
import math
import random
import time

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import grad_norm, rank_zero_warn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (CheckpointWrapper,
                                                                         apply_activation_checkpointing)
from torch.distributed.fsdp import FullyShardedDataParallel
from torchmetrics import MeanMetric, SumMetric
from torchmetrics.classification import MulticlassAccuracy

from evaluation import SCALAR_METRICS, average_views, test_metrics
from preprocessing import Preprocessing
from transformer import Block
from video_transformer import VideoClassifier, VideoTransformerConfig

OPTIMIZERS = ('sgd', 'adamw')
LR_SCHEDULES = ('cosine', 'multistep')
# The original's -eval_metrics choices: linear_prob trains the head on a frozen backbone (freeze_backbone).
EVAL_METRICS = ('finetune', 'linear_prob')
NONFINITE_POLICIES = ('stop', 'skip')
# Parameters that never get weight decay besides norms and biases (every 1-D parameter); mask_token:
# the masked autoencoder's decoder (pretrain_trainer).
NO_DECAY_NAMES = ('cls_token', 'pos_embed', 'time_embed', 'mask_token')
# Parameters of the embedding stage, frozen with the first blocks by freeze_blocks.
EMBEDDING_NAMES = ('patch_embed.', 'cls_token', 'pos_embed', 'time_embed')


class NonFiniteLossError(RuntimeError):
    """A training step gave a NaN or infinite loss and the run was told to stop on one."""


# The modules FSDP shards as units of their own and -activation_checkpointing recomputes: every
# transformer Block, of which the encoders, V-JEPA 2's attentive pooler and the pretraining decoder are built.
BLOCK_CLASSES = {Block}


def fsdp_settings(activation_checkpointing=False):
    """FSDPStrategy's arguments: each block a unit of its own (recomputed in backward when asked),
    checkpoints written whole by rank zero, so that load_model reads them as any other."""
    return dict(auto_wrap_policy=BLOCK_CLASSES, state_dict_type='full',
                activation_checkpointing_policy=BLOCK_CLASSES if activation_checkpointing else None)


def total_gradient_norm(module, wrapper):
    """The 2-norm of all of `module`'s gradients, None before any. wrapper: the strategy's wrapper of it
    (trainer.strategy.model). FSDP's keeps a shard of the gradients on each rank: the norm is then
    gathered from every rank, each of which must call this."""
    if isinstance(wrapper, FullyShardedDataParallel):
        return wrapper.clip_grad_norm_(math.inf)  # the norm over every rank's shard, nothing clipped
    return grad_norm(module, norm_type=2).get('grad_2.0_norm_total')  # by Lightning


def recompute_blocks_in_backward(module):
    """Wrap every transformer block of `module` (the whole LightningModule: a pretraining decoder's
    blocks are outside its `model`) in place so that backward recomputes its activations instead of
    keeping them: less memory, one more forward of each block. The state_dict keys stay the same (the
    wrapper's hooks hide its prefix), so checkpoints load as before. Returns how many blocks it wrapped."""
    apply_activation_checkpointing(module, check_fn=lambda child: isinstance(child, tuple(BLOCK_CLASSES)))
    return sum(isinstance(child, CheckpointWrapper) for child in module.modules())


class LitVideoClassifier(pl.LightningModule):
    """A VideoClassifier with its training recipe.

    config: VideoTransformerConfig or its dict. class_names: names of the logits, in order.
    preprocessing: preprocessing.Preprocessing.to_dict() of the data it trains on.
    optim_type 'sgd' (momentum, nesterov) or 'adamw'; weight_decay spares norms, biases, the class
    token and position tables. layer_decay < 1 scales each block's lr by layer_decay ** (depth from
    the top). lr_schedule: linear warmup over warmup_epochs, then 'cosine' down to min_lr or
    'multistep' (x lr_gamma at each of milestones, in epochs), stepped every iteration.
    freeze_blocks N: patch embedding, position tables and the first N blocks are frozen.
    freeze_backbone (the flag's `-eval_metrics linear_prob`): the whole backbone is frozen and kept in
    eval mode, the head alone trains. eval_metrics: that mode by the flag's name, as checkpoints saved
    before freeze_backbone record it ('finetune' or 'linear_prob'); the hyper-parameters keep freeze_backbone.
    nonfinite_loss 'stop' raises NonFiniteLossError at the first NaN or infinite loss; 'skip' skips
    such steps and counts them (`skipped_steps`).
    """

    def __init__(self, config, class_names=None, preprocessing=None, optim_type='sgd', lr=0.005,
                 momentum=0.9, nesterov=True, weight_decay=1e-4, lr_schedule='multistep', warmup_epochs=0.0,
                 min_lr=1e-6, milestones=(5, 11), lr_gamma=0.1, layer_decay=1.0, label_smoothing=0.0,
                 freeze_blocks=0, freeze_backbone=False, nonfinite_loss='stop', eval_metrics=None):
        super().__init__()
        if isinstance(config, VideoTransformerConfig):
            config = config.to_dict()
        for name, value, allowed in (('optim_type', optim_type, OPTIMIZERS), ('lr_schedule', lr_schedule, LR_SCHEDULES),
                                     ('eval_metrics', eval_metrics, EVAL_METRICS + (None,)),
                                     ('nonfinite_loss', nonfinite_loss, NONFINITE_POLICIES)):
            if value not in allowed:
                raise ValueError(f'{name} must be one of {allowed}, got {value!r}')
        if eval_metrics is not None:
            freeze_backbone = eval_metrics == 'linear_prob'
        self.save_hyperparameters({
            'config': config, 'class_names': list(class_names) if class_names is not None else None,
            'preprocessing': preprocessing, 'optim_type': optim_type, 'lr': lr, 'momentum': momentum,
            'nesterov': nesterov, 'weight_decay': weight_decay, 'lr_schedule': lr_schedule,
            'warmup_epochs': warmup_epochs, 'min_lr': min_lr, 'milestones': list(milestones), 'lr_gamma': lr_gamma,
            'layer_decay': layer_decay, 'label_smoothing': label_smoothing, 'freeze_blocks': freeze_blocks,
            'freeze_backbone': freeze_backbone, 'nonfinite_loss': nonfinite_loss})
        self.model = VideoClassifier(VideoTransformerConfig(**config), class_names,
                                     Preprocessing.from_dict(preprocessing) if preprocessing is not None else None)
        num_blocks = len(self.blocks)
        if not 0 <= freeze_blocks <= num_blocks:
            raise ValueError(f"freeze_blocks must be between 0 and the model's {num_blocks} blocks, "
                             f'got {freeze_blocks}')
        self._freeze()
        num_classes = self.model.config.num_classes
        self.metrics = torch.nn.ModuleDict({
            f'{stage}_top{k}': MulticlassAccuracy(num_classes, top_k=min(k, num_classes), average='micro')
            for stage in ('train', 'val') for k in (1, 5)})
        # The test's top-k, per class and confusion: the collection model_inference.py -eval updates too.
        self.test_metrics = test_metrics(num_classes, self.model.preprocessing)
        self.test_results = None
        # Loss and videos each evaluation counted, over all ranks: unreadable ones left out, none twice.
        self.metrics.update({f'{stage}_videos': SumMetric() for stage in ('val', 'test')})
        self.metrics.update({f'{stage}_loss': MeanMetric() for stage in ('val', 'test')})
        self.skipped_steps = 0
        self._batch_started = self._batch_ended = None
        self.note_built_dimensions()

    def note_built_dimensions(self):
        """Keep each parameter's number of dimensions as built, which decides its weight decay: by the time
        the optimiser is configured, FSDP (keeping the original parameters, as Lightning has it) shows every
        parameter as a 1-D shard."""
        self._built_dimensions = {parameter: parameter.ndim for parameter in self.parameters()}

    @property
    def blocks(self):
        """The backbone's blocks in order: the spatial (or only) encoder, then fact_encoder's temporal one."""
        backbone = self.model.backbone
        return list(backbone.blocks) + list(getattr(backbone, 'temporal_blocks', []))

    # ------------------------------------------------------------------ freezing

    def _freeze(self):
        hp = self.hparams
        if hp.freeze_backbone:
            self.model.backbone.requires_grad_(False).eval()
            return
        for name, parameter in self.model.backbone.named_parameters():
            if name.startswith(EMBEDDING_NAMES) and hp.freeze_blocks > 0:
                parameter.requires_grad_(False)
        for block in self.blocks[:hp.freeze_blocks]:
            block.requires_grad_(False)

    def train(self, mode=True):
        """A frozen backbone stays in eval mode, whoever switches the module to training."""
        super().train(mode)
        if self.hparams.freeze_backbone:
            self.model.backbone.eval()
        return self

    # ------------------------------------------------------------------ optimisation

    def _layer_id(self, name):
        """0 for the embedding stage, i + 1 for the i-th block, len(blocks) + 1 for the norm and head."""
        name = name.removeprefix('model.backbone.')
        if name.startswith(EMBEDDING_NAMES):
            return 0
        num_spatial = len(self.model.backbone.blocks)
        for prefix, offset in (('blocks.', 0), ('temporal_blocks.', num_spatial)):
            if name.startswith(prefix):
                return offset + int(name.split('.')[1]) + 1
        return len(self.blocks) + 1

    def parameter_groups(self):
        """Trainable parameters grouped by (lr scale, weight decay): [{'params', 'lr', 'weight_decay'}]."""
        hp = self.hparams
        top = len(self.blocks) + 1
        groups = {}
        for name, parameter in self.named_parameters():
            if not parameter.requires_grad:
                continue
            no_decay = self._built_dimensions[parameter] <= 1 or name.split('.')[-1] in NO_DECAY_NAMES
            scale = hp.layer_decay ** (top - self._layer_id(name))
            key = (scale, 0.0 if no_decay else hp.weight_decay)
            groups.setdefault(key, []).append(parameter)
        return [{'params': params, 'lr': hp.lr * scale, 'weight_decay': decay}
                for (scale, decay), params in sorted(groups.items(), key=lambda item: item[0])]

    def lr_factor(self, step, steps_per_epoch, total_steps):
        """Multiplier of every group's lr at optimiser step `step`: warmup, then cosine or multistep."""
        hp = self.hparams
        warmup = round(hp.warmup_epochs * steps_per_epoch)
        if step < warmup:
            return (step + 1) / warmup
        if hp.lr_schedule == 'cosine':
            progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
            floor = hp.min_lr / hp.lr if hp.lr else 0.0
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        passed = sum(step >= milestone * steps_per_epoch for milestone in hp.milestones)
        return hp.lr_gamma ** passed

    def configure_optimizers(self):
        hp = self.hparams
        groups = self.parameter_groups()
        if hp.optim_type == 'sgd':
            optimizer = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum,
                                        nesterov=hp.nesterov and hp.momentum > 0)
        else:
            optimizer = torch.optim.AdamW(groups, lr=hp.lr)
        total_steps = max(1, self.trainer.estimated_stepping_batches)
        batches = self.trainer.num_training_batches
        steps_per_epoch = max(1, math.ceil(batches / self.trainer.accumulate_grad_batches)) \
            if math.isfinite(batches) else total_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: self.lr_factor(step, steps_per_epoch, total_steps))
        return {'optimizer': optimizer, 'lr_scheduler': {'scheduler': scheduler, 'interval': 'step'}}

    # ------------------------------------------------------------------ steps

    def forward(self, video):
        """float (B, T, 3, S, S) -> logits (B, K)."""
        return self.model(video)

    def training_step(self, batch, batch_idx):
        logits = self.model(batch['video'])
        target = batch['label']
        loss = F.cross_entropy(logits, target, label_smoothing=self.hparams.label_smoothing)
        if not self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(loss)), all=True):
            return self._nonfinite(loss)
        hard = target if target.ndim == 1 else target.argmax(dim=1)
        size = len(hard)
        for k in (1, 5):
            self.metrics[f'train_top{k}'](logits.detach(), hard)
        self.log_train_loss(loss, size)
        self.log('train/top1', self.metrics['train_top1'], prog_bar=True, on_step=True, on_epoch=True,
                 batch_size=size)
        self.log('train/top5', self.metrics['train_top5'], on_step=True, on_epoch=True, batch_size=size)
        self.log('train/lr', self.trainer.optimizers[0].param_groups[-1]['lr'], prog_bar=True, batch_size=size)
        return loss

    def log_train_loss(self, loss, batch_size):
        """train/loss, the mean over the ranks: the loss of the step whose averaged gradient every rank
        applies (without the sync, rank zero's own batch alone)."""
        self.log('train/loss', loss, prog_bar=True, batch_size=batch_size, sync_dist=True)

    def _nonfinite(self, loss):
        """Stop with the step and the last checkpoint named, or skip the step (every rank agrees)."""
        step = self.trainer.global_step
        if self.hparams.nonfinite_loss == 'skip':
            self.skipped_steps += 1
            rank_zero_warn(f'step {step}: loss is {loss.item()}, step skipped ({self.skipped_steps} so far)')
            self.log('train/skipped_steps', float(self.skipped_steps), batch_size=1)
            return None
        callback = self.trainer.checkpoint_callback
        last = (callback.last_model_path or callback.best_model_path) if callback is not None else ''
        raise NonFiniteLossError(f'loss is {loss.item()} at step {step} (epoch {self.current_epoch}); '
                                 f'last good checkpoint: {last or "none yet"}; lower -lr, add -clip_grad, '
                                 f'or pass -nonfinite_loss skip')

    def on_before_optimizer_step(self, optimizer):
        norm = total_gradient_norm(self, self.trainer.strategy.model)
        if norm is not None:
            self.log('train/grad_norm', norm, batch_size=1)

    def on_train_batch_start(self, batch, batch_idx):
        self._batch_started = time.perf_counter()
        if self._batch_ended is not None:
            # Waiting for the loader, the copy to the device and the augmentation there.
            self.log('train/data_time', self._batch_started - self._batch_ended, batch_size=1)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self._batch_ended = time.perf_counter()
        self.log('train/step_time', self._batch_ended - self._batch_started, prog_bar=True, batch_size=1)

    def on_train_epoch_end(self):
        self._batch_ended = None  # validation runs in between; its time is no data time

    def evaluate(self, batch, stage):
        """Shared val / test step: views (B, V, T, 3, S, S), softmax averaged over the views
        (evaluation.average_views), into the stage's metrics; the test's top-k into test_metrics, which
        on_test_epoch_end computes. B may be 0 (every video of the batch unreadable, named and counted by
        the data)."""
        video, label = batch['video'], batch['label']
        batch_size, views = video.shape[:2]
        logged = {f'{stage}/{name}': f'{stage}_{name}' for name in ('loss', 'videos')}
        if stage == 'val':
            logged.update({f'val/top{k}': f'val_top{k}' for k in (1, 5)})
        if batch_size:
            logits = self.model(video.flatten(0, 1)).view(batch_size, views, -1)
            probabilities = average_views(logits)
            self.metrics[f'{stage}_loss'](F.nll_loss(probabilities.clamp_min(1e-12).log(), label), batch_size)
            self.metrics[f'{stage}_videos'](batch_size)
            if stage == 'val':
                for k in (1, 5):
                    self.metrics[f'val_top{k}'](probabilities, label)
            else:
                self.test_metrics.update(logits, label)
        # Logged after every batch, read or not, so each rank joins the epoch-end sync of every metric
        # even when its whole share of the videos was unreadable (under DDP the others would wait).
        for name, metric in logged.items():
            self.log(name, self.metrics[metric], on_step=False, on_epoch=True)

    def validation_step(self, batch, batch_idx):
        self.evaluate(batch, 'val')

    def test_step(self, batch, batch_idx):
        self.evaluate(batch, 'test')

    def on_test_epoch_start(self):
        self.test_metrics.reset()

    def on_test_epoch_end(self):
        """test/top1, test/top5, test/top1_1view and test/top5_1view from test_metrics, computed over
        every rank (each rank joins its sync here); all of its results, per class and confusion too, in
        `test_results` (tensors on the CPU)."""
        self.test_results = {name: value.cpu() for name, value in self.test_metrics.compute().items()}
        for name in SCALAR_METRICS:
            # Every rank holds the same synced value; sync_dist only keeps Lightning from warning.
            self.log(f'test/{name}', self.test_results[name], sync_dist=True)

    # ------------------------------------------------------------------ resuming

    def on_save_checkpoint(self, checkpoint):
        """Every rank's torch and Python RNG states, so a resumed run draws what the run would have."""
        python_state = torch.tensor(random.getstate()[1], dtype=torch.int64, device=self.device)
        states = {'torch': torch.get_rng_state().to(self.device), 'python': python_state}
        if torch.cuda.is_available():
            states['cuda'] = torch.cuda.get_rng_state().to(self.device)
        gathered = {name: self.all_gather(state) for name, state in states.items()}
        if self.trainer.world_size == 1:
            gathered = {name: state[None] for name, state in gathered.items()}
        checkpoint['rng_states'] = {name: state.cpu() for name, state in gathered.items()}

    def on_load_checkpoint(self, checkpoint):
        # Restored at once: the next random draws are the loader iterator's shuffle and worker seeds
        # (built when the optimiser's schedule asks for the epoch length), where the run stopped.
        states = checkpoint.get('rng_states')
        # load_from_checkpoint restores weights outside any Trainer: no run's random state to continue.
        if states is None or self._trainer is None or self.trainer.state.fn != 'fit':
            return
        rank, saved_ranks = self.global_rank, states['torch'].shape[0]
        if saved_ranks != self.trainer.world_size:
            rank_zero_warn(f'the checkpoint holds the RNG states of {saved_ranks} processes, this run has '
                           f'{self.trainer.world_size}; random draws continue from the seed instead')
            return
        # clone: set_rng_state reads a view's storage from its start, not from the view's offset.
        torch.set_rng_state(states['torch'][rank].clone())
        random.setstate((3, tuple(states['python'][rank].tolist()), None))
        if 'cuda' in states and torch.cuda.is_available():
            torch.cuda.set_rng_state(states['cuda'][rank].clone())
