"""Weight formats: tiny fabricated checkpoints in each source's exact key layout, randomised."""
import pytest
import torch

from video_transformer import VideoClassifier, timesformer_tiny
from weight_init import convert_hf_timesformer, convert_to_hf_timesformer

transformers = pytest.importorskip('transformers')


def randomise_(module, std=0.2):
    """Every parameter of `module` drawn from N(0, std) in place, so no zero or one hides a bug."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return module.eval()


@pytest.mark.parametrize('attention_type', ['divided_space_time', 'joint_space_time'])
def test_hf_timesformer_converter_matches_transformers(attention_type):
    hf_config = transformers.TimesformerConfig(
        image_size=32, patch_size=8, num_frames=4, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=128, num_labels=4, attention_type=attention_type)
    reference = randomise_(transformers.TimesformerForVideoClassification(hf_config))
    model = VideoClassifier(timesformer_tiny(attention_type=attention_type, norm_eps=1e-6)).eval()
    model.load_state_dict(convert_hf_timesformer(reference.state_dict()))
    video = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(video), reference(video).logits, atol=1e-4, rtol=0)
    assert convert_to_hf_timesformer(model.state_dict()).keys() == reference.state_dict().keys()


def test_hf_timesformer_bare_model_gives_backbone_keys():
    hf_config = transformers.TimesformerConfig(
        image_size=32, patch_size=8, num_frames=4, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=128)
    reference = randomise_(transformers.TimesformerModel(hf_config))
    converted = convert_hf_timesformer(reference.state_dict())
    assert all(key.startswith('backbone.') for key in converted)
    model = VideoClassifier(timesformer_tiny(norm_eps=1e-6)).eval()
    model.backbone.load_state_dict({key.removeprefix('backbone.'): value for key, value in converted.items()})
    video = torch.randn(1, 4, 3, 32, 32)
    with torch.no_grad():
        expected = reference(video).last_hidden_state[:, 0]
        torch.testing.assert_close(model.backbone(video), expected, atol=1e-4, rtol=0)
    assert convert_to_hf_timesformer(converted).keys() == reference.state_dict().keys()
