"""Position tables at other sizes, and tables of one kind refused for a model of another."""
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from layouts import CLASSES, DIM, GRID, HEADS, SIZE, original_layout, random_state, save_lightning, video
from model_loading import load_model
from our_format import save_weights
from reference import cubic_resampling, randomise_
from video_transformer import TimeSformer, VideoClassifier, ViViT, timesformer_tiny, vivit_tiny
from weight_fitting import resize_position_tables
from weight_formats import WeightLoadError
from weight_init import init_from_pretrained_

TABLE_KINDS = {
    'divided (pos + time)': timesformer_tiny(),
    'space_only (pos)': timesformer_tiny(attention_type='space_only'),
    'fact_encoder (time with a class row)': vivit_tiny(),
    'joint': vivit_tiny(attention_type='joint_space_time', pos_emb_type='joint'),
}


def tables(config, seed=0):
    """Random position tables of `config`'s sizes, in our keys."""
    return random_state({f'backbone.{name}': (1, rows, DIM) for name, rows in config.position_table_rows.items()},
                        seed=seed)


@pytest.mark.parametrize('kind', TABLE_KINDS)
def test_resizing_to_the_source_sizes_is_the_identity(kind):
    config = TABLE_KINDS[kind]
    state = tables(config)
    resized, notes = resize_position_tables(state, config, config.num_time_steps)
    assert not notes and all(torch.equal(resized[key], state[key]) for key in state)


@pytest.mark.parametrize('kind', ['divided (pos + time)', 'fact_encoder (time with a class row)'])
def test_resizing_frames_only_leaves_a_separate_spatial_table_alone(kind):
    config = TABLE_KINDS[kind]
    state = tables(config)
    resized, notes = resize_position_tables(state, config.replace(num_frames=8), config.num_time_steps)
    assert torch.equal(resized['backbone.pos_embed'], state['backbone.pos_embed'])
    assert resized['backbone.time_embed'].shape[1] == state['backbone.time_embed'].shape[1] + config.num_time_steps
    assert notes == [f'time_embed {state["backbone.time_embed"].shape[1]} -> '
                     f'{resized["backbone.time_embed"].shape[1]} rows']


def test_resizing_frames_only_keeps_every_spatial_row_of_a_joint_table():
    # Each patch's row is the same at every time step, in multiples of 1/8: linear interpolation
    # over time (weights 1/4 and 3/4 from 2 to 4 steps) then reproduces every row exactly. The
    # the original repository's bicubic formula is not the identity at the same grid and used to move these rows.
    config = TABLE_KINDS['joint']
    generator = torch.Generator().manual_seed(0)
    space = torch.randint(-16, 16, (GRID * GRID, DIM), generator=generator) / 8
    table = torch.cat((torch.ones(1, DIM), rearrange([space] * 2, 't p d -> (p t) d')))[None]
    resized, notes = resize_position_tables({'backbone.pos_embed': table}, config.replace(num_frames=8), 2)
    expected = torch.cat((torch.ones(1, DIM), rearrange([space] * 4, 't p d -> (p t) d')))[None]
    assert torch.equal(resized['backbone.pos_embed'], expected) and notes == ['pos_embed 33 -> 65 rows']


def test_positions_resize_by_the_original_formula_in_space_linear_in_time(tmp_path):
    state = random_state(original_layout('divided_space_time'))
    path = save_lightning(tmp_path / 'seed.ckpt', state)
    model = load_model(path, num_heads=HEADS, img_size=48, num_frames=8)
    pos, time = state['model.pos_embed'], state['model.time_embed']
    # The original repository's (DINO's) formula: scale factor (g + 0.1) / N, not output size g.
    resampling = cubic_resampling(GRID, 6, (6 + 0.1) / GRID)
    grid = rearrange(pos[0, 1:].double(), '(h w) d -> d h w', h=GRID)
    expected = rearrange(resampling @ grid @ resampling.T, 'd h w -> 1 (h w) d').float()
    torch.testing.assert_close(model.backbone.pos_embed, torch.cat((pos[:, :1], expected), dim=1))
    by_size = F.interpolate(grid[None].float(), size=(6, 6), mode='bicubic', align_corners=False)
    assert not torch.allclose(rearrange(by_size, '1 d h w -> 1 (h w) d'), expected, atol=1e-3)
    expected = F.interpolate(rearrange(time, '1 t d -> 1 d t'), size=8, mode='linear', align_corners=False)
    torch.testing.assert_close(model.backbone.time_embed, rearrange(expected, '1 d t -> 1 t d'))
    assert model(video(frames=8, size=48)).shape == (2, CLASSES)


def test_joint_table_resizes_per_axis():
    config = vivit_tiny(attention_type='joint_space_time', pos_emb_type='joint', num_frames=8, img_size=48)
    # Row 1 + p*T' + t holds space[p] * time[t]: both resizings are linear and act on one axis
    # each, so the result is the product of the per-axis resizings, and a (p t)/(t p) mix-up shows.
    space, time = torch.randn(GRID * GRID, DIM).double(), torch.randn(2, DIM).double()
    patches = torch.einsum('pd,td->ptd', space, time)
    table = torch.cat((torch.randn(1, DIM).double(), rearrange(patches, 'p t d -> (p t) d')))[None].float()
    resized, notes = resize_position_tables({'backbone.pos_embed': table}, config, source_time_steps=2)
    resampling = cubic_resampling(GRID, 6, (6 + 0.1) / GRID)
    space = rearrange(resampling @ rearrange(space, '(h w) d -> d h w', h=GRID) @ resampling.T, 'd h w -> (h w) d')
    time = rearrange(F.interpolate(rearrange(time, 't d -> 1 d t'), size=4, mode='linear'), '1 d t -> t d')
    expected = rearrange(torch.einsum('pd,td->ptd', space, time), 'p t d -> 1 (p t) d').float()
    assert resized['backbone.pos_embed'].shape == (1, 1 + 36 * 4, DIM) and notes
    assert torch.equal(resized['backbone.pos_embed'][:, 0], table[:, 0])
    torch.testing.assert_close(resized['backbone.pos_embed'][:, 1:], expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize('frames', [4, 8])  # 1 + 16*2 rows, and 1 + 16*4 = 1 + 8*8
def test_joint_table_for_a_separate_model_is_one_clear_error(tmp_path, frames):
    joint = vivit_tiny(attention_type='joint_space_time', pos_emb_type='joint', num_frames=frames)
    model = VideoClassifier(joint)
    save_weights(model, tmp_path / 'export')
    torch.save(model.state_dict(), tmp_path / 'bare.pt')
    separate = joint.replace(pos_emb_type='separate')
    with pytest.raises(WeightLoadError, match="export.*pos_emb_type='joint'") as error:
        init_from_pretrained_(ViViT(separate), tmp_path / 'export')
    assert '\n' not in str(error.value)
    # Without its config.json the rows cannot tell image size from frame count.
    with pytest.raises(WeightLoadError, match='bare.pt.*config.json') as error:
        load_model(tmp_path / 'bare.pt')
    assert '\n' not in str(error.value)
    table = model.backbone.pos_embed.detach()
    if frames == 4:
        with pytest.raises(WeightLoadError, match="'joint' table"):
            resize_position_tables({'backbone.pos_embed': table}, separate.replace(img_size=48), path='x.pt')


@pytest.mark.parametrize('attention_type,pos_emb_type', [('joint_space_time', 'joint'), ('space_only', 'separate')])
def test_per_frame_and_joint_timesformer_weights_are_told_apart(tmp_path, attention_type, pos_emb_type):
    # 1 + 16 patches * 4 frames = 1 + 8*8 rows: a joint table looks like a per-frame one at 64 px.
    config = timesformer_tiny(attention_type=attention_type, pos_emb_type=pos_emb_type)
    model = randomise_(VideoClassifier(config)).eval()
    save_weights(model, tmp_path / 'export')
    started = init_from_pretrained_(TimeSformer(config), tmp_path / 'export').eval()
    clip = video()
    with torch.no_grad():
        torch.testing.assert_close(started(clip), model.backbone(clip), atol=0, rtol=0)
    torch.save(model.state_dict(), tmp_path / 'bare.pt')
    with pytest.raises(WeightLoadError, match='bare.pt: without their config.*config.json'):
        load_model(tmp_path / 'bare.pt')


def test_an_image_size_override_resizes_a_joint_table_and_keeps_its_frames(tmp_path):
    config = TABLE_KINDS['joint']
    model = randomise_(VideoClassifier(config)).eval()
    save_weights(model, tmp_path / 'export')
    loaded = load_model(tmp_path / 'export', img_size=SIZE, num_frames=8)
    table = loaded.backbone.pos_embed.detach()
    assert table.shape == (1, 1 + GRID * GRID * 4, DIM)
    # Time steps 0 and 3 of 4 sit at the edges of linear interpolation from 2: the source's own rows.
    rows = rearrange(table[:, 1:], '1 (p t) d -> t p d', t=4)
    source = rearrange(model.backbone.pos_embed.detach()[:, 1:], '1 (p t) d -> t p d', t=2)
    assert torch.equal(rows[0], source[0]) and torch.equal(rows[3], source[1])
