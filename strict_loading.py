"""Loading a state dict in our keys strictly: every key must fit the model, only a named list of
keys may be absent. Into a built model (load_state_dict_strictly, which copies), or into one built
on the meta device (load_into_meta_model, which takes the tensors in place, as transformers'
from_pretrained does, and leaves nothing on the meta device).
"""
from itertools import chain

import torch

from weight_formats import WeightLoadError


def check_fit(own, state_dict, path, expected_missing=()):
    """Raise unless `state_dict` fits `own` (a model's state dict) key for key and shape for shape,
    apart from `expected_missing` keys it may lack (one ending in '.' stands for every key under it);
    returns the missing keys, sorted."""
    unexpected = sorted(set(state_dict) - set(own))
    missing = sorted(set(own) - set(state_dict))
    surprising = [key for key in missing if not any(
        key == expected or (expected.endswith('.') and key.startswith(expected)) for expected in expected_missing)]
    mismatched = [f'{key} {tuple(value.shape)} vs {tuple(own[key].shape)}'
                  for key, value in state_dict.items() if key in own and value.shape != own[key].shape]
    problems = [f'{label}: {", ".join(keys[:6])}{" ..." if len(keys) > 6 else ""}'
                for label, keys in (('missing', surprising), ('unexpected', unexpected),
                                    ('wrong shape (file vs model)', mismatched)) if keys]
    if problems:
        raise WeightLoadError(f'{path}: weights do not fit the model; {"; ".join(problems)}')
    return missing


def load_state_dict_strictly(module, state_dict, path, expected_missing=()):
    """Copy `state_dict` into the built `module`: every key must fit, only `expected_missing` may be
    absent (those keep the module's values). Returns the missing keys."""
    missing = check_fit(module.state_dict(), state_dict, path, expected_missing)
    module.load_state_dict(state_dict, strict=False)
    return missing


def load_into_meta_model(model, state_dict, path, expected_missing=(), device='cpu'):
    """Fill `model`, built on the meta device, from `state_dict`; returns the missing keys.

    The checks of load_state_dict_strictly, then: the missing keys (only `expected_missing` ones)
    get the model's own initialisation on `device` (model.init_weights() runs while they are the
    only real tensors, so it initialises nothing else); every other tensor is taken in place,
    converted to the model's dtype (float32 unless built otherwise, whatever the file holds, as
    the copying path does); the computed buffers are filled by each module's
    compute_fixed_tables(). A parameter or buffer still on the meta device is an error naming it.
    """
    own = model.state_dict()
    missing = check_fit(own, state_dict, path, expected_missing)
    if missing:
        _materialise(model, missing, device)
        model.init_weights()
    seen = set()
    model.load_state_dict({key: _owned(value.to(device), own[key].dtype, seen) for key, value in state_dict.items()},
                          strict=False, assign=True)
    for module in model.modules():
        if hasattr(module, 'compute_fixed_tables'):
            module.compute_fixed_tables()
    left = [name for name, tensor in chain(model.named_parameters(), model.named_buffers()) if tensor.is_meta]
    if left:
        raise WeightLoadError(f'{path}: {", ".join(left[:6])}{" ..." if len(left) > 6 else ""} neither loaded '
                              f'nor computed (still on the meta device)')
    return missing


def _materialise(model, keys, device):
    """Replace the meta tensors named by `keys` (state dict keys) with uninitialised ones on `device`."""
    for key in keys:
        owner_name, _, name = key.rpartition('.')
        owner = model.get_submodule(owner_name)
        tensor = getattr(owner, name)
        empty = torch.empty_like(tensor, device=device)
        # setattr keeps a buffer's persistence and a parameter's registration.
        setattr(owner, name, torch.nn.Parameter(empty, tensor.requires_grad)
                if isinstance(tensor, torch.nn.Parameter) else empty)


def _owned(value, dtype, seen):
    """`value` as a contiguous `dtype` tensor that owns its memory: a view, a transposed converter
    output or a tensor sharing memory with another key is copied, so no two parameters are tied."""
    storage = value.untyped_storage()
    if (value.dtype != dtype or not value.is_contiguous() or storage.data_ptr() in seen
            or storage.nbytes() != value.numel() * value.element_size()):
        value = value.to(dtype=dtype, memory_format=torch.contiguous_format, copy=True)
    seen.add(value.untyped_storage().data_ptr())
    return value
