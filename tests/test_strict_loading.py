"""load_model builds on the meta device and takes the file's tensors in place: the same logits as
building, initialising and copying, for every source the tests have; nothing left on the meta
device; keys a source lacks by design initialised as the model initialises them."""
import pytest
import torch

from layouts import (CLASSES, DIM, FRAMES, HEADS, LAYERS, ORIGINAL_VARIANTS, PATCH, SIZE, original_layout,
                     random_state, save_lightning, timm_layout, video, write_vit)
from model_loading import load_model
from our_format import save_weights
from reference import randomise_
from strict_loading import load_into_meta_model, load_state_dict_strictly
from video_transformer import VideoClassifier, timesformer_tiny, videomae_tiny, vivit_tiny, vjepa2_tiny
from weight_fitting import resize_position_tables
from weight_formats import HEAD_KEYS, WeightLoadError
from weight_sources import read_weights


def copied(path, loaded, drop_head=False):
    """The copying path for `loaded`'s config: build on the CPU (random init), resize the tables,
    copy the weights in with load_state_dict_strictly."""
    source = read_weights(path)
    state_dict = {key: value for key, value in source.state_dict.items() if not (drop_head and key in HEAD_KEYS)}
    state_dict, _ = resize_position_tables(state_dict, loaded.config, source.num_time_steps, path)
    model = VideoClassifier(loaded.config)
    load_state_dict_strictly(model, state_dict, path, source.missing_ok + (HEAD_KEYS if drop_head else ()))
    return model.eval()


def ours(tmp_path, config):
    save_weights(randomise_(VideoClassifier(config)), tmp_path / 'ours')
    return tmp_path / 'ours', {}


def training_checkpoint(tmp_path, config, tied=False):
    """The training command's layout: the classifier under `model.`, its config a hyper-parameter;
    tied: two of its keys one tensor, which torch.save keeps shared."""
    state = {f'model.{key}': value for key, value in randomise_(VideoClassifier(config)).state_dict().items()}
    if tied:
        state['model.backbone.blocks.1.ffn.fc1.weight'] = state['model.backbone.blocks.0.ffn.fc1.weight']
    torch.save({'state_dict': state, 'hyper_parameters': {'config': config.to_dict(), 'class_names': None}},
               tmp_path / 'last.ckpt')
    return tmp_path / 'last.ckpt', {}


def original(tmp_path, attention_type, tube, **overrides):
    path = save_lightning(tmp_path / 'seed.ckpt', random_state(original_layout(attention_type, tube=tube)))
    return path, {'num_heads': HEADS, **overrides}


def official(tmp_path):
    torch.save({'model_state': random_state(timm_layout('divided_space_time', prefix='model.')), 'cfg': ''},
               tmp_path / 'official.pyth')
    return tmp_path / 'official.pyth', {'num_heads': HEADS}


def hf_folder(tmp_path, kind):
    transformers = pytest.importorskip('transformers')
    sizes = dict(image_size=SIZE, num_frames=FRAMES, hidden_size=DIM, num_hidden_layers=LAYERS,
                 num_attention_heads=HEADS, intermediate_size=4 * DIM, num_labels=CLASSES)
    if kind == 'timesformer':
        model = transformers.TimesformerForVideoClassification(transformers.TimesformerConfig(patch_size=PATCH, **sizes))
    elif kind == 'videomae':
        model = transformers.VideoMAEForVideoClassification(
            transformers.VideoMAEConfig(patch_size=PATCH, tubelet_size=2, **sizes))
    elif kind == 'vjepa2':
        model = transformers.VJEPA2ForVideoClassification(transformers.VJEPA2Config(
            patch_size=PATCH, crop_size=SIZE, frames_per_clip=FRAMES, hidden_size=DIM, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, num_pooler_layers=1, pred_hidden_size=16, pred_num_attention_heads=2,
            pred_num_hidden_layers=1, num_labels=CLASSES))
    else:
        model = transformers.VivitForVideoClassification(
            transformers.VivitConfig(tubelet_size=[2, PATCH, PATCH], **sizes))
    randomise_(model).save_pretrained(tmp_path / 'hf')
    return tmp_path / 'hf', {}


SOURCES = {
    'ours timesformer': lambda tmp_path: ours(tmp_path, timesformer_tiny()),
    'ours vivit': lambda tmp_path: ours(tmp_path, vivit_tiny()),
    'ours fixed sine-cosine tables': lambda tmp_path: ours(tmp_path, vivit_tiny(use_learnable_pos_emb=False)),
    'ours joint table': lambda tmp_path: ours(
        tmp_path, vivit_tiny(attention_type='joint_space_time', pos_emb_type='joint')),
    'training checkpoint': lambda tmp_path: training_checkpoint(tmp_path, timesformer_tiny(num_classes=CLASSES)),
    'training checkpoint, two keys one tensor': lambda tmp_path: training_checkpoint(tmp_path, timesformer_tiny(),
                                                                                    tied=True),
    **{f'original {attention_type} tube {tube}': (lambda tmp_path, a=attention_type, t=tube: original(tmp_path, a, t))
       for attention_type, tube in ORIGINAL_VARIANTS},
    'original, tables resized': lambda tmp_path: original(tmp_path, 'divided_space_time', 0, img_size=48,
                                                          num_frames=8),
    'official .pyth': official,
    'timm ViT .pth': lambda tmp_path: (write_vit(random_state(timm_layout()), tmp_path, 'pth'), {'num_heads': HEADS}),
    'JAX ViT .npz': lambda tmp_path: (write_vit(random_state(timm_layout()), tmp_path, 'npz'), {}),
    'transformers timesformer': lambda tmp_path: hf_folder(tmp_path, 'timesformer'),
    'transformers vivit': lambda tmp_path: hf_folder(tmp_path, 'vivit'),
    'ours videomae': lambda tmp_path: ours(tmp_path, videomae_tiny()),
    'ours vjepa2': lambda tmp_path: ours(tmp_path, vjepa2_tiny()),
    'transformers videomae': lambda tmp_path: hf_folder(tmp_path, 'videomae'),
    'transformers vjepa2': lambda tmp_path: hf_folder(tmp_path, 'vjepa2'),
}


@pytest.mark.parametrize('drop_head', [False, True], ids=['head', 'drop_head'])
@pytest.mark.parametrize('name', SOURCES)
def test_loading_in_place_gives_the_copying_paths_logits(tmp_path, name, drop_head):
    """Fails if a tensor is left on the meta device (a fixed table not recomputed), is tied to another
    (a view taken in place), changes dtype, or if anything differs from building and copying."""
    path, overrides = SOURCES[name](tmp_path)
    if drop_head:
        overrides = {**overrides, 'num_classes': 3}
    loaded = load_model(path, drop_head=drop_head, **overrides)
    tensors = dict(loaded.named_parameters()) | dict(loaded.named_buffers())
    assert all(tensor.device.type == 'cpu' and tensor.dtype == torch.float32 for tensor in tensors.values())
    assert len({tensor.untyped_storage().data_ptr() for tensor in tensors.values()}) == len(tensors)
    assert all(parameter.requires_grad for parameter in loaded.parameters())
    reference = copied(path, loaded, drop_head)
    clip = video(frames=loaded.config.num_frames, size=loaded.config.img_size)
    with torch.no_grad():
        if drop_head:  # a new head is random on both paths; everything before it is the file's
            assert torch.equal(loaded.backbone(clip), reference.backbone(clip))
        else:
            assert torch.equal(loaded(clip), reference(clip))
    expected = dict(reference.named_parameters()) | dict(reference.named_buffers())
    assert tensors.keys() == expected.keys()
    assert all(torch.equal(tensor, expected[name]) for name, tensor in tensors.items()
               if not (drop_head and name.startswith('head.')))


def assert_initialised_as_new(tensor, zero=False):
    """A truncated normal of std 0.02 (or zeros), not uninitialised memory."""
    assert torch.isfinite(tensor).all()
    if zero:
        assert not tensor.any()
    else:
        assert 0.01 < tensor.std() < 0.03 and tensor.abs().max() < 0.2


def test_keys_a_source_lacks_get_the_models_initialisation(tmp_path):
    """Fails if MAE's class token and position table or a new head are left as uninitialised (empty)
    memory instead of the model's init; the file's tensors are taken unchanged."""
    encoder = {f'encoder.{key}': value for key, value in random_state(timm_layout(), seed=3).items()
               if not key.startswith(('head.', 'cls_token', 'pos_embed'))}
    torch.save({'model': encoder}, tmp_path / 'mae.pth')
    model = load_model(tmp_path / 'mae.pth', num_heads=HEADS, drop_head=True, num_classes=CLASSES,
                       attention_type='space_only', img_size=SIZE)
    backbone = model.backbone
    assert_initialised_as_new(backbone.cls_token)
    assert_initialised_as_new(backbone.pos_embed)
    assert_initialised_as_new(model.head.fc.weight)
    assert_initialised_as_new(model.head.fc.bias, zero=True)
    assert torch.equal(backbone.norm.weight, encoder['encoder.norm.weight'])
    assert torch.equal(backbone.blocks[1].attn.attn.qkv.weight, encoder['encoder.blocks.1.attn.qkv.weight'])


def test_a_tensor_neither_loaded_nor_computed_is_an_error_naming_it(tmp_path):
    """Fails if a buffer no file holds and no compute_fixed_tables fills is left silently on the meta device."""
    state_dict = VideoClassifier(timesformer_tiny()).state_dict()
    with torch.device('meta'):
        model = VideoClassifier(timesformer_tiny())
        model.backbone.register_buffer('extra_table', torch.zeros(3), persistent=False)
    with pytest.raises(WeightLoadError, match=r'weights.pt: backbone.extra_table neither loaded nor computed'):
        load_into_meta_model(model, state_dict, 'weights.pt')


def test_half_precision_files_load_as_float32(tmp_path):
    """Fails if a float16 file's dtype leaks into the model (float32 video in, error out)."""
    model = randomise_(VideoClassifier(timesformer_tiny())).half()
    save_weights(model, tmp_path / 'half')
    loaded = load_model(tmp_path / 'half')
    assert all(parameter.dtype == torch.float32 for parameter in loaded.parameters())
    assert all(torch.equal(loaded.state_dict()[key], value.float()) for key, value in model.state_dict().items())
    assert loaded(video()).shape == (2, 4)
