"""model_pretrain.py -objective videomae: the module its flags build, and what a finished run reports
(the summary line and summary.json, curves.png and the fine-tuning command that starts from it)."""
import shlex

from pytorch_lightning.utilities import rank_zero_only

from command_line import UsageError
from masked_autoencoder import check_mask_ratio, pretraining_problem
from pretrain_trainer import LitMaskedAutoencoder
from run_outputs import epoch_means, plot_curves, read_run_metrics
from utils import write_json

# The model flags a fine-tuning run repeats to rebuild the pretrained encoder: flag -> config field.
MODEL_FLAGS = {'arch': 'arch', 'attention_type': 'attention_type', 'conv_type': 'conv_type',
               'tube_size': 'tube_size', 'num_frames': 'num_frames', 'img_size': 'img_size',
               'patch_size': 'patch_size', 'embed_dims': 'embed_dims', 'num_heads': 'num_heads',
               'depth': 'num_transformer_layers'}


def check_pretraining_flags(args, config):
    """A UsageError naming the flag when the flags ask for a model or settings masked autoencoding cannot
    take; checked before the Trainer is built."""
    problem = pretraining_problem(config)
    if problem:
        raise UsageError(problem)
    try:
        check_mask_ratio(args.mask_ratio, config.num_patches)
    except ValueError as error:
        raise UsageError(f'-{error}') from None
    if args.test_data_path is not None:
        raise UsageError('-test_data_path with -objective videomae: pretraining has no test; fine-tune from its '
                         'checkpoint (-pretrain) and test that')
    if args.mixup:
        raise UsageError('-mixup with -objective videomae: masked autoencoding reads no labels to mix')
    if args.decoder_depth < 1 or args.decoder_dim < 1:
        raise UsageError(f'-decoder_depth {args.decoder_depth} -decoder_dim {args.decoder_dim}: both must be positive')


def build_pretraining(args, config, data):
    """The LitMaskedAutoencoder of the flags (check_pretraining_flags first)."""
    return LitMaskedAutoencoder(
        config, data.preprocessing.to_dict(), mask_ratio=args.mask_ratio, decoder_depth=args.decoder_depth,
        decoder_dim=args.decoder_dim, norm_pix_loss=args.norm_pix_loss, optim_type=args.optim_type, lr=args.lr,
        momentum=args.momentum, weight_decay=args.weight_decay, lr_schedule=args.lr_schedule,
        warmup_epochs=args.warmup_epochs, min_lr=args.min_lr, milestones=args.milestones,
        nonfinite_loss=args.nonfinite_loss)


def finetune_command(args, checkpoint):
    """The command that fine-tunes a classifier from the pretrained encoder at `checkpoint`."""
    flags = [f'-{flag} {shlex.quote(str(getattr(args, flag)))}' for flag in MODEL_FLAGS
             if getattr(args, flag) is not None]
    data = '-train_data_path TRAIN_LIST -val_data_path VAL_LIST' if args.train_data_path else '-recipe demo'
    return f'python model_pretrain.py {data} {" ".join(flags)} -pretrain {shlex.quote(str(checkpoint))}'


@rank_zero_only
def report_pretraining(args, trainer, best_loss, checkpoint, last_checkpoint, log_dir, run_dir, seconds):
    """The one-line summary, summary.json and curves.png beside the logs, and the fine-tuning command."""
    rows = read_run_metrics(log_dir / 'csv')
    train_losses, val_losses = epoch_means(rows, 'train/loss'), epoch_means(rows, 'val/loss')
    best_epoch = val_losses.index(min(val_losses)) if val_losses else None
    summary = {
        'experiment': run_dir.name, 'objective': args.objective, 'mask_ratio': args.mask_ratio,
        'first_train_loss': train_losses[0] if train_losses else None,
        'last_train_loss': train_losses[-1] if train_losses else None,
        'best_val_loss': best_loss, 'best_epoch': best_epoch, 'epochs': trainer.current_epoch,
        'steps': trainer.global_step, 'seconds': round(seconds, 1), 'checkpoint': checkpoint,
        'last_checkpoint': last_checkpoint, 'reconstructions': str(log_dir / 'reconstructions.png'),
    }
    write_json(summary, log_dir / 'summary.json')
    if rows:
        plot_curves(rows, log_dir / 'curves.png', top5=False)
    losses = ' -> '.join(f'{value:.3f}' for value in (train_losses[:1] + train_losses[-1:])) or 'n/a'
    held_out = f'; best held-out loss {best_loss:.3f} (epoch {best_epoch})' if best_loss is not None else ''
    print(f'Done in {seconds / 60:.1f} min: train loss (epoch mean) {losses}{held_out}; {log_dir / "summary.json"}, '
          f'{log_dir / "curves.png"}, {log_dir / "reconstructions.png"}', flush=True)
    print(f'Next: {finetune_command(args, checkpoint)}', flush=True)
