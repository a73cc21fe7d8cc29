"""Small helpers shared by the models and the command lines."""
import torch


def count_parameters(model):
    """Number of parameters of a module."""
    return sum(parameter.numel() for parameter in model.parameters())


def set_attention_fused(model, fused):
    """Compute every attention of `model` through SDPA (True) or the explicit softmax path."""
    from transformer import Attention
    for module in model.modules():
        if isinstance(module, Attention):
            module.fused = fused
    return model


def count_flops(model, video):
    """Multiply-adds of one forward pass on `video` (B, T, C, H, W), counted per view.

    Reported as GFLOPs in the papers' (fvcore) convention: one multiply-add is one FLOP.
    """
    from torch.utils.flop_counter import FlopCounterMode
    set_attention_fused(model, False)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(video)
    finally:
        set_attention_fused(model, True)
    return counter.get_total_flops() / 2 / video.shape[0]
