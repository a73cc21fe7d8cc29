"""The LightningModule that pretrains an encoder by VideoMAE's masked autoencoding, and the callback
that draws its reconstructions.

It shares the classifier's recipe machinery (LitVideoClassifier: parameter groups, warmup and cosine
or multistep schedules stepped per iteration, the gradient norm, step and data times, non-finite
losses, every rank's RNG states in checkpoints for an exact resume) and replaces the classifier by
an encoder and a decoder. Batches follow data_trainer's contract; labels, if any, are not read.

A checkpoint holds the encoder as `model.backbone.*`, where a classifier's is, and the decoder as
`decoder.*`; its hyper-parameters hold `config` (the encoder's VideoTransformerConfig as a dict) and
`preprocessing`, so `-pretrain CKPT`, weight_init.init_from_pretrained_ and
model_loading.load_model(CKPT, drop_head=True, num_classes=N) start a classifier from the encoder
(weight_files drops the decoder and says so).
"""
import pytorch_lightning as pl
import torch
from torchmetrics import MeanMetric

from masked_autoencoder import (build_decoder, default_decoder_heads, check_mask_ratio, masked_autoencoding, pretraining_problem,
                                reconstruct, tube_mask, tube_size_of)
from model_trainer import LR_SCHEDULES, NONFINITE_POLICIES, OPTIMIZERS, LitVideoClassifier
from preprocessing import Preprocessing
from video_transformer import ARCHITECTURES, VideoTransformerConfig
from visualize import reconstruction_figure, save_png

OBJECTIVE = 'videomae'
# The masks of validation and of the pictures are drawn from these seeds (the picture's) and each
# clip's dataset index (validation's), so a held-out loss compares across epochs and runs.
PICTURE_SEED = 0


class LitMaskedAutoencoder(LitVideoClassifier):
    """An encoder (a VideoTransformer of `config`) and VideoMAE's decoder, trained to reconstruct the
    masked tubelets of unlabelled clips.

    config: VideoTransformerConfig or its dict (see masked_autoencoder.pretraining_problem for the
    architectures it takes). preprocessing: Preprocessing.to_dict() of the data; its mean and std
    de-normalise the clips into pixel targets. mask_ratio: the share of each frame's patches hidden
    (tube masking). decoder_depth, decoder_dim, decoder_num_heads (default: 64 channels a head).
    norm_pix_loss: targets normalised per patch. betas: AdamW's. The other arguments are
    LitVideoClassifier's. The encoder's final norm is not used by the objective and stays at its init,
    frozen (VideoMAE fine-tunes a fresh one).
    """

    def __init__(self, config, preprocessing, mask_ratio=0.9, decoder_depth=4, decoder_dim=384,
                 decoder_num_heads=None, norm_pix_loss=True, optim_type='adamw', lr=1.5e-4, betas=(0.9, 0.95),
                 momentum=0.9, nesterov=True, weight_decay=0.05, lr_schedule='cosine', warmup_epochs=40.0,
                 min_lr=1e-5, milestones=(), lr_gamma=0.1, nonfinite_loss='stop'):
        pl.LightningModule.__init__(self)  # the classifier's own __init__ builds a classifier
        if isinstance(config, VideoTransformerConfig):
            config = config.to_dict()
        for name, value, allowed in (('optim_type', optim_type, OPTIMIZERS), ('lr_schedule', lr_schedule, LR_SCHEDULES),
                                     ('nonfinite_loss', nonfinite_loss, NONFINITE_POLICIES)):
            if value not in allowed:
                raise ValueError(f'{name} must be one of {allowed}, got {value!r}')
        encoder_config = VideoTransformerConfig(**config)
        problem = pretraining_problem(encoder_config)
        if problem:
            raise ValueError(problem)
        check_mask_ratio(mask_ratio, encoder_config.num_patches)
        decoder_num_heads = decoder_num_heads or default_decoder_heads(decoder_dim)
        if preprocessing is None:
            raise ValueError('preprocessing (its mean and std) is needed to turn clips into pixel targets')
        self.save_hyperparameters({
            'objective': OBJECTIVE, 'config': config, 'class_names': None, 'preprocessing': preprocessing,
            'mask_ratio': mask_ratio, 'decoder_depth': decoder_depth, 'decoder_dim': decoder_dim,
            'decoder_num_heads': decoder_num_heads, 'norm_pix_loss': norm_pix_loss, 'optim_type': optim_type,
            'lr': lr, 'betas': list(betas), 'momentum': momentum, 'nesterov': nesterov,
            'weight_decay': weight_decay, 'lr_schedule': lr_schedule, 'warmup_epochs': warmup_epochs,
            'min_lr': min_lr, 'milestones': list(milestones), 'lr_gamma': lr_gamma, 'layer_decay': 1.0,
            'nonfinite_loss': nonfinite_loss})
        self.preprocessing = Preprocessing.from_dict(preprocessing)
        # `model.backbone`: the keys of a classifier's encoder in a training checkpoint.
        self.model = torch.nn.ModuleDict({'backbone': ARCHITECTURES[encoder_config.arch](encoder_config)})
        self.model.backbone.norm.requires_grad_(False)
        self.decoder = build_decoder(encoder_config, decoder_dim, decoder_depth, decoder_num_heads)
        self.metrics = torch.nn.ModuleDict({'val_loss': MeanMetric()})
        self.skipped_steps = 0
        self._batch_started = self._batch_ended = None
        self.note_built_dimensions()

    @property
    def backbone(self):
        return self.model.backbone

    def train(self, mode=True):
        return pl.LightningModule.train(self, mode)

    def configure_optimizers(self):
        """The classifier's optimiser and schedule, with this recipe's AdamW betas."""
        settings = super().configure_optimizers()
        if self.hparams.optim_type == 'adamw':
            for group in settings['optimizer'].param_groups:
                group['betas'] = tuple(self.hparams.betas)
        return settings

    # ------------------------------------------------------------------ the objective

    def draw_mask(self, batch_size, generator=None):
        """Tube masks (B, P*T') for clips of this model's size, from `generator` or torch's global RNG."""
        config = self.backbone.config
        return tube_mask(batch_size, config.num_patches, config.num_time_steps, self.hparams.mask_ratio, generator)

    def loss(self, video, mask):
        """(loss, predictions) of normalised clips (B, T, 3, S, S) under `mask`."""
        return masked_autoencoding(self.backbone, self.decoder, video, mask, self.preprocessing.mean,
                                   self.preprocessing.std, self.hparams.norm_pix_loss)

    def forward(self, video, mask, keep_predictions=False):
        """The loss of normalised clips (B, T, 3, S, S) under `mask`; with keep_predictions, the loss and
        the predictions (B, N_masked, pixels)."""
        loss, predictions = self.loss(video, mask)
        return (loss, predictions) if keep_predictions else loss

    def reconstruct(self, video, mask, wrapper=None):
        """(frames, masked input, reconstruction) in [0, 1], each (B, T, 3, S, S), of normalised clips.

        wrapper: the strategy's wrapper of this module (trainer.strategy.model), whose forward the model
        runs in: outside the training steps, FSDP has gathered none of the parameters it keeps outside the
        blocks (the patch embedding, the decoder's head), and only its forward gathers them.
        """
        config = self.backbone.config
        _, predictions = (self if wrapper is None else wrapper)(video, mask, keep_predictions=True)
        return reconstruct(video, mask, predictions, self.preprocessing.mean, self.preprocessing.std,
                           config.patch_size, tube_size_of(config), self.hparams.norm_pix_loss)

    def training_step(self, batch, batch_idx):
        video = batch['video']
        loss, _ = self.loss(video, self.draw_mask(len(video)))
        if not self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(loss)), all=True):
            return self._nonfinite(loss)
        self.log_train_loss(loss, len(video))
        self.log('train/lr', self.trainer.optimizers[0].param_groups[-1]['lr'], prog_bar=True, batch_size=len(video))
        return loss

    def validation_step(self, batch, batch_idx):
        """The held-out reconstruction loss, each clip masked by its own dataset index: the same masks
        every epoch, on any number of ranks."""
        video = batch['video'][:, 0]  # validation has one view
        if len(video):
            masks = [tube_mask(1, self.backbone.config.num_patches, self.backbone.config.num_time_steps,
                               self.hparams.mask_ratio, torch.Generator().manual_seed(int(index)))
                     for index in batch['index']]
            loss, _ = self.loss(video, torch.cat(masks))
            self.metrics['val_loss'](loss, len(video))
        self.log('val/loss', self.metrics['val_loss'], on_step=False, on_epoch=True)


class ReconstructionPictures(pl.Callback):
    """Draws `path` (log/reconstructions.png) at the end of every training epoch, after its validation:
    a few fixed clips (the first validation batch's, or without validation the first training batch's),
    their masked input and the reconstruction, under a fixed mask."""

    def __init__(self, path, num_clips=3):
        self.path = path
        self.num_clips = num_clips
        self.clips = {}

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0 and len(batch['video']) and 'val' not in self.clips:
            self.clips['val'] = batch['video'][:self.num_clips, 0].detach().cpu()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == 0 and 'train' not in self.clips:
            self.clips['train'] = batch['video'][:self.num_clips].detach().cpu()

    def on_train_epoch_end(self, trainer, pl_module):
        # Every rank reconstructs its own clips through the strategy's wrapper (a sharded model's forward
        # needs every rank, and gathers the parameters in the wrapper's forward); rank 0 draws.
        clips = self.clips.get('val', self.clips.get('train'))
        if clips is None:
            return
        mask = pl_module.draw_mask(len(clips), torch.Generator().manual_seed(PICTURE_SEED))
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            pictures = pl_module.reconstruct(clips.to(pl_module.device), mask, trainer.strategy.model)
        pl_module.train(was_training)
        if trainer.is_global_zero:
            self.draw(pictures, trainer.current_epoch, pl_module.hparams.mask_ratio)

    def draw(self, pictures, epoch, mask_ratio):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        save_png(reconstruction_figure(*pictures, title=f'epoch {epoch}: masked {mask_ratio:.0%} of each frame'),
                 self.path)
