"""FSDP for every model and for pretraining, on CPU.

Lightning cannot run its FSDPStrategy on a CPU here (pytorch-lightning 2.6, torch 2.13): the Trainer
refuses it ("The strategy `fsdp` requires a GPU accelerator", AcceleratorConnector.
_check_strategy_and_fallback), and past that its _setup_model gives FSDP device_id=root_device.index,
None on a CPU, for which torch's FSDP looks for an accelerator ("FSDP needs a non-CPU accelerator
device"). torch's FSDP itself runs on CPUs under gloo when given device_id=cpu. So these tests check
the wrap policy model_pretrain.py hands Lightning, module by module, and run the models under torch's
FSDP with the arguments Lightning would add, in two processes (fsdp_step.py). What they cannot reach is
Lightning's own loop around FSDP: where it calls the module's hooks (the gradient norm, the
reconstruction pictures) those take `trainer.strategy.model`, the wrapper these tests hand them.
"""
import re
from pathlib import Path

import pytest
import torch
from pytorch_lightning.strategies import FSDPStrategy
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (CheckpointWrapper,
                                                                         apply_activation_checkpointing,
                                                                         checkpoint_wrapper)

from ddp_fit import run_on_two_ranks
from model_loading import load_model
from model_trainer import LitVideoClassifier, fsdp_settings
from preprocessing import Preprocessing
from pretrain_trainer import LitMaskedAutoencoder
from video_transformer import timesformer_tiny, videomae_tiny, vivit_tiny, vjepa2_tiny

# A transformer block by where it sits: the encoders' blocks and temporal_blocks, V-JEPA 2's pooler's
# blocks, the pretraining decoder's blocks (ModuleLists all).
BLOCK_PATH = re.compile(r'(.*\.)?(temporal_)?blocks\.\d+')
PREPROCESSING = Preprocessing(num_frames=4, img_size=32).to_dict()
MODULES = {
    'timesformer': lambda: LitVideoClassifier(timesformer_tiny()),
    'vivit fact_encoder': lambda: LitVideoClassifier(vivit_tiny()),
    'videomae': lambda: LitVideoClassifier(videomae_tiny()),
    'vjepa2': lambda: LitVideoClassifier(vjepa2_tiny()),
    'videomae pretraining': lambda: LitMaskedAutoencoder(videomae_tiny(), PREPROCESSING, decoder_dim=16,
                                                         decoder_depth=1, decoder_num_heads=2),
}


@pytest.mark.parametrize('name', list(MODULES))
@pytest.mark.parametrize('activation_checkpointing', [False, True])
def test_fsdp_shards_and_recomputes_every_block_of_every_model(name, activation_checkpointing):
    """The modules FSDP makes units of their own (and recomputes, with -activation_checkpointing) under
    the policy model_pretrain.py -strategy fsdp gives Lightning are exactly the blocks, found by where
    they sit. Fails if a block of a class the policy does not name were added (a pooler or decoder block
    of its own), or if the policy named a module that holds blocks (one unit for all of them)."""
    module = MODULES[name]()
    strategy = FSDPStrategy(**fsdp_settings(activation_checkpointing))
    blocks = {child for path, child in module.named_modules() if BLOCK_PATH.fullmatch(path)}
    assert len(blocks) == {'vivit fact_encoder': 3, 'vjepa2': 3, 'videomae pretraining': 3}.get(name, 2)
    # What FullyShardedDataParallel asks a policy (torch's fsdp/_wrap_utils): the modules to wrap.
    assert set(strategy.kwargs['auto_wrap_policy']._run_policy(module, ignored_modules=set(), root_kwargs={})) \
        == blocks
    if not activation_checkpointing:
        assert not strategy._activation_checkpointing_kwargs
        return
    # Recomputation applied as Lightning applies it after wrapping (its policy through torch's function).
    apply_activation_checkpointing(module, checkpoint_wrapper_fn=checkpoint_wrapper,
                                   **strategy._activation_checkpointing_kwargs)
    assert {wrapper._checkpoint_wrapped_module for wrapper in module.modules()
            if isinstance(wrapper, CheckpointWrapper)} == blocks


def test_a_sharded_step_equals_the_unsharded_one_and_its_checkpoint_loads(tmp_path):
    """VideoMAE, V-JEPA 2 and VideoMAE pretraining, sharded over two real processes (fsdp_step.py), take
    the step an unsharded copy takes on both ranks' batches: the same gradients, optimiser groups,
    gradient norm, weights and outputs; the reconstruction pictures match, and the full state dict loads
    with load_model. Fails if weight decay is decided on FSDP's 1-D shards (it was off for every
    parameter), if train/grad_norm is one rank's shard's (as it was), or if the pictures are drawn
    outside the wrapper's forward (FSDP had gathered no patch embedding there: the callback crashed)."""
    names = ('videomae', 'vjepa2', 'pretraining')
    run_on_two_ranks(tmp_path, *names, script=Path(__file__).with_name('fsdp_step.py'))
    for name in names:
        result = torch.load(tmp_path / f'{name}.pt', weights_only=True)
        assert result['gradient_names'] and result['gradient_difference'] < 1e-7, name
        sharded_groups, plain_groups = result['groups']
        assert sharded_groups == plain_groups and any(decay > 0 for _, decay, _ in sharded_groups), name
        assert result['norms'][0] == pytest.approx(result['norms'][1], rel=1e-5), name
        assert result['state_names'] and result['weight_difference'] < 1e-6, name
        torch.testing.assert_close(*result['outputs'], rtol=1e-5, atol=1e-6, msg=name)
        for sharded, plain in zip(*result['pictures']):
            torch.testing.assert_close(sharded, plain, rtol=1e-5, atol=1e-6)
        with torch.no_grad():
            if name == 'pretraining':
                assert len(result['pictures'][0]) == 3
                loaded = load_model(tmp_path / f'{name}.ckpt', drop_head=True, num_classes=3).backbone
            else:
                loaded = load_model(tmp_path / f'{name}.ckpt')
            torch.testing.assert_close(loaded(result['probe']), result['probed'], rtol=1e-5, atol=1e-6, msg=name)
