"""Ranks of two-process DDP fits on CPU (gloo), started by torchrun through `run_on_two_ranks`:

    torchrun --standalone --nproc_per_node 2 tests/ddp_fit.py augment ANNOTATION CLASS_MAP OUT_DIR
    torchrun --standalone --nproc_per_node 2 tests/ddp_fit.py pretrain VIDEO_FOLDER OUT_DIR

augment (test_data_trainer.py): fits one epoch, tests, then calls the DataModule's setup once more by
hand. Saves what its training steps received, dataset indices (N,) and augmented clips
(N, T, 3, S, S), and the process's torch seed after each of the three (`seeds`), to
OUT_DIR/rank<global rank>.pt.

pretrain (test_pretraining.py): two VideoMAE pretraining fits of 2 epochs of one step from seed 0, as
model_pretrain.py -objective videomae -strategy ddp builds them, the second with its blocks
recomputed in backward. The first logs to OUT_DIR/csv, checkpoints to OUT_DIR/ckpt and draws
OUT_DIR/pictures.png through the DDP wrapper. Saves each fit's training masks (steps * B, N), losses
(steps,) and final weights to OUT_DIR/rank<global rank>.pt.
"""
import subprocess
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.strategies import DDPStrategy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_trainer import VideoDataModule  # noqa: E402
from model_trainer import recompute_blocks_in_backward  # noqa: E402
from pretrain_trainer import LitMaskedAutoencoder, ReconstructionPictures  # noqa: E402
from run_outputs import AtomicCheckpointIO  # noqa: E402
from video_transformer import videomae_tiny  # noqa: E402

PRETRAINING_STEPS = 2


def run_on_two_ranks(*args, script=__file__, timeout=300):
    """Runs `script` (this one unless given) with `args` under torchrun in two processes;
    CalledProcessError (with the ranks' output) if it fails."""
    return subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                           str(script), *map(str, args)], check=True, capture_output=True, text=True, timeout=timeout)


class Recorder(pl.LightningModule):
    """A linear layer over frame-averaged colours that keeps every training batch it receives."""

    def __init__(self, num_classes):
        super().__init__()
        self.head = torch.nn.Linear(3, num_classes)
        self.indices, self.clips = [], []

    def training_step(self, batch, batch_idx):
        self.indices.append(batch['index'])
        self.clips.append(batch['video'])
        return F.cross_entropy(self.head(batch['video'].mean(dim=(1, 3, 4))), batch['label'])

    def test_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def augment(annotation, class_map, out_dir):
    pl.seed_everything(0, workers=True, verbose=False)
    data = VideoDataModule(train_data_path=annotation, test_data_path=annotation, class_map=class_map, num_frames=4,
                           frame_interval=16, img_size=32, batch_size=2, num_workers=1, color_jitter=0.4)
    model = Recorder(data.num_classes)
    trainer = pl.Trainer(accelerator='cpu', devices=2, strategy='ddp', max_epochs=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, data)
    seeds = [torch.initial_seed()]
    trainer.test(model, data, verbose=False)
    seeds.append(torch.initial_seed())
    data.setup('test')
    seeds.append(torch.initial_seed())
    torch.save({'index': torch.cat(model.indices), 'video': torch.cat(model.clips), 'seeds': seeds},
               Path(out_dir) / f'rank{trainer.global_rank}.pt')


class MaskRecorder(LitMaskedAutoencoder):
    """The pretraining module, keeping the masks its training steps draw and their losses."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.masks, self.losses = [], []

    def draw_mask(self, batch_size, generator=None):
        mask = super().draw_mask(batch_size, generator)
        if generator is None:  # a training step's (the pictures' come from a seed of their own)
            self.masks.append(mask)
        return mask

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.losses.append(loss.detach())
        return loss


def pretrain(videos, out_dir):
    out_dir, fits = Path(out_dir), []
    for recompute in (False, True):
        pl.seed_everything(0, workers=True, verbose=False)
        data = VideoDataModule(train_data_path=videos, num_frames=4, frame_interval=2, img_size=32, batch_size=2,
                               num_workers=0, color_jitter=0.0, labelled=False, data_statics='imagenet')
        module = MaskRecorder(videomae_tiny(), data.preprocessing.to_dict(), mask_ratio=0.75, decoder_dim=16,
                              decoder_depth=1, decoder_num_heads=2, lr=2e-3, warmup_epochs=0.0)
        if recompute:
            recompute_blocks_in_backward(module)
        trainer = pl.Trainer(accelerator='cpu', devices=2, strategy=DDPStrategy(find_unused_parameters=False),
                             # One step an epoch: the pictures' forward through the DDP wrapper comes between.
                             max_epochs=PRETRAINING_STEPS, limit_train_batches=1, log_every_n_steps=1,
                             plugins=[AtomicCheckpointIO()],
                             logger=False if recompute else CSVLogger(out_dir, name='csv'),
                             enable_checkpointing=not recompute,
                             callbacks=[] if recompute else [ModelCheckpoint(out_dir / 'ckpt'),
                                                             ReconstructionPictures(out_dir / 'pictures.png')],
                             enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(module, data, weights_only=True)
        fits.append({'masks': torch.cat(module.masks), 'losses': torch.stack(module.losses),
                     'weights': {key: value.clone() for key, value in module.state_dict().items()}})
    torch.save(fits, out_dir / f'rank{trainer.global_rank}.pt')


if __name__ == '__main__':
    {'augment': augment, 'pretrain': pretrain}[sys.argv[1]](*sys.argv[2:])
