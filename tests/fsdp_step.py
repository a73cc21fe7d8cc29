"""One rank of two-process FSDP training steps on CPU (gloo), started by ddp_fit.run_on_two_ranks from
test_fsdp.py:

    torchrun --standalone --nproc_per_node 2 tests/fsdp_step.py OUT_DIR NAME...

Each NAME: videomae, vjepa2 (classifiers) or pretraining (VideoMAE's masked autoencoding). Its
LightningModule is wrapped by torch's FullyShardedDataParallel with the arguments Lightning's FSDPStrategy gives it
under model_pretrain.py -strategy fsdp -activation_checkpointing (the policy, full shards, the original
parameters kept), plus device_id=cpu, which Lightning cannot give (see test_fsdp.py); its blocks are
then recomputed in backward as Lightning applies it. Each rank takes one step on a batch of its own
(seed: its rank), an unsharded copy of the module one step on both batches. Rank zero saves to
OUT_DIR/NAME.pt, for the two, whether the trained parameters' and the state dict's names agree, the
largest gradient and weight differences (after gathering), the optimiser's groups, the total gradient
norms, the outputs on rank 0's batch and its pictures (pretraining), and the unsharded module's output
on `probe` (logits, or the encoder's features); and to OUT_DIR/NAME.ckpt the sharded module's full
state dict as Lightning's 'full' checkpoints hold it, with the hyper-parameters.
"""
import copy
import re
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from pytorch_lightning.strategies import FSDPStrategy
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (apply_activation_checkpointing,
                                                                         checkpoint_wrapper)
from torch.distributed.fsdp import FullStateDictConfig, FullyShardedDataParallel, StateDictType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model_trainer import LitVideoClassifier, fsdp_settings, total_gradient_norm  # noqa: E402
from preprocessing import Preprocessing  # noqa: E402
from pretrain_trainer import LitMaskedAutoencoder  # noqa: E402
from video_transformer import videomae_tiny, vjepa2_tiny  # noqa: E402

# The wrappers' parts of parameter names (FSDP's nested units, recomputed blocks).
WRAPPER_PREFIXES = re.compile(r'(_fsdp_wrapped_module|_checkpoint_wrapped_module)\.')


def build(name):
    if name == 'pretraining':
        return LitMaskedAutoencoder(videomae_tiny(), Preprocessing(num_frames=4, img_size=32).to_dict(),
                                    mask_ratio=0.75, decoder_dim=16, decoder_depth=1, decoder_num_heads=2)
    # Layer decay: the optimiser's groups also read the blocks' depth from names FSDP has prefixed.
    return LitVideoClassifier((videomae_tiny if name == 'videomae' else vjepa2_tiny)(num_classes=3),
                              optim_type='adamw', weight_decay=0.05, layer_decay=0.75)


def batch(module, rank):
    """Rank `rank`'s clips (2, 4, 3, 32, 32) and, for pretraining, masks."""
    generator = torch.Generator().manual_seed(rank)
    clips = torch.randn(2, 4, 3, 32, 32, generator=generator)
    return (clips, module.draw_mask(2, generator)) if isinstance(module, LitMaskedAutoencoder) else (clips,)


def loss_of(model, inputs):
    """The pretraining loss, or the squared logits' mean of a classifier: a scalar."""
    output = model(*inputs)
    return output if output.ndim == 0 else output.square().mean()


def named_gradients(module):
    """The trained parameters' gradients by their unwrapped names."""
    return {WRAPPER_PREFIXES.sub('', name): parameter.grad.clone() for name, parameter in module.named_parameters()
            if parameter.requires_grad}


def step(name, out_dir, rank):
    torch.manual_seed(0)
    module = build(name)
    plain = copy.deepcopy(module)
    strategy = FSDPStrategy(**fsdp_settings(activation_checkpointing=True))
    sharded = FullyShardedDataParallel(module, device_id=torch.device('cpu'), **strategy.kwargs)
    apply_activation_checkpointing(sharded, checkpoint_wrapper_fn=checkpoint_wrapper,
                                   **strategy._activation_checkpointing_kwargs)
    # The optimiser as configure_optimizers sets it up (Lightning configures it after wrapping).
    groups = [lit.parameter_groups() for lit in (module, plain)]
    optimizers = [torch.optim.AdamW(parameter_groups) for parameter_groups in groups]

    loss_of(sharded, batch(module, rank)).backward()  # FSDP averages the ranks' gradients
    (sum(loss_of(plain, batch(plain, index)) for index in range(2)) / 2).backward()
    norms = [total_gradient_norm(module, sharded).item(), total_gradient_norm(plain, plain).item()]
    with FullyShardedDataParallel.summon_full_params(sharded, with_grads=True):
        gradients, expected = named_gradients(module), named_gradients(plain)
    for optimizer in optimizers:
        optimizer.step()

    # Lightning's 'full' checkpoints also offload to the CPU, which on a CPU crashes torch 2.13 (a segfault
    # cloning the gathered tensors): they are on the CPU already.
    config = FullStateDictConfig(offload_to_cpu=False, rank0_only=True)
    with FullyShardedDataParallel.state_dict_type(sharded, StateDictType.FULL_STATE_DICT, config):
        state = sharded.state_dict()
    module.eval()  # as Lightning and the pictures' callback do: the LightningModule, not its wrapper
    plain.eval()
    inputs = batch(plain, 0)
    with torch.no_grad():
        # The pictures first: as at the end of an epoch without validation, the step has resharded everything.
        pictures = [module.reconstruct(*inputs, sharded), plain.reconstruct(*inputs)] \
            if name == 'pretraining' else []
        outputs = [loss_of(sharded, inputs), loss_of(plain, inputs)]
        probe = torch.rand(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(7))
        probed = plain.backbone(probe) if name == 'pretraining' else plain(probe)
    if rank == 0:
        torch.save({'probe': probe, 'probed': probed, 'gradient_names': sorted(gradients) == sorted(expected),
                    'gradient_difference': max((gradients[key] - expected[key]).abs().max().item()
                                               for key in expected),
                    'state_names': list(state) == list(plain.state_dict()),
                    'weight_difference': max((state[key] - value).abs().max().item()
                                             for key, value in plain.state_dict().items()),
                    'groups': [[(group['lr'], group['weight_decay'], len(group['params'])) for group in lit_groups]
                               for lit_groups in groups],
                    'norms': norms, 'outputs': outputs, 'pictures': pictures},
                   Path(out_dir) / f'{name}.pt')
        torch.save({'state_dict': state, 'hyper_parameters': dict(plain.hparams)}, Path(out_dir) / f'{name}.ckpt')


def main(out_dir, *names):
    dist.init_process_group('gloo')
    for name in names:
        step(name, out_dir, dist.get_rank())
    dist.destroy_process_group()


if __name__ == '__main__':
    main(*sys.argv[1:])
