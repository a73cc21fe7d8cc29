"""One rank of a two-process DDP fit on CPU resumed mid-epoch, started by torchrun from test_data_trainer.py.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_resume.py ANNOTATION CLASS_MAP OUT_DIR

Fits one epoch saving a checkpoint at every step, then fits it again from the step-1 checkpoint. Saves the
dataset indices each run's training steps received, `straight` and `resumed` (N,), to OUT_DIR/rank<rank>.pt.
"""
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_trainer import VideoDataModule  # noqa: E402
from ddp_fit import Recorder  # noqa: E402


def fit(annotation, class_map, out_dir, ckpt_path=None):
    """The indices of the training batches of one epoch; a checkpoint at every step in out_dir."""
    pl.seed_everything(0, workers=True, verbose=False)
    data = VideoDataModule(train_data_path=annotation, class_map=class_map, num_frames=4, frame_interval=16,
                           img_size=32, batch_size=1, num_workers=0, color_jitter=0.0)
    model = Recorder(len(data.class_names))
    steps = pl.callbacks.ModelCheckpoint(out_dir, filename='{step}', every_n_train_steps=1, save_top_k=-1)
    trainer = pl.Trainer(accelerator='cpu', devices=2, strategy='ddp', max_epochs=1, logger=False, callbacks=[steps],
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, data, ckpt_path=ckpt_path, weights_only=True)
    return torch.cat(model.indices), trainer.global_rank


def main(annotation, class_map, out_dir):
    straight, _ = fit(annotation, class_map, Path(out_dir) / 'straight')
    resumed, rank = fit(annotation, class_map, Path(out_dir) / 'resumed', Path(out_dir) / 'straight' / 'step=1.ckpt')
    torch.save({'straight': straight, 'resumed': resumed}, Path(out_dir) / f'rank{rank}.pt')


if __name__ == '__main__':
    main(*sys.argv[1:])
