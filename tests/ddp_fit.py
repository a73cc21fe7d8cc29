"""One rank of a two-process DDP fit on CPU, started by torchrun from test_data_trainer.py.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_fit.py ANNOTATION CLASS_MAP OUT_DIR

Fits one epoch, tests, then calls the DataModule's setup once more by hand. Saves what its training
steps received, dataset indices (N,) and augmented clips (N, T, 3, S, S), and the process's torch
seed after each of the three (`seeds`), to OUT_DIR/rank<global rank>.pt.
"""
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_trainer import VideoDataModule  # noqa: E402


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


def main(annotation, class_map, out_dir):
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


if __name__ == '__main__':
    main(*sys.argv[1:])
