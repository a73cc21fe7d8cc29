"""inference.py and visualize.py on real decoded videos and tiny real models."""
import io
import json
import logging

import matplotlib.image as plt_image
import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg

from annotations import AnnotationError
from classifiers import CLASSES, SETTINGS, export, hf_folder, png_size
from data_trainer import VideoDataModule
from dataset import VideoDataset, collate_views
from evaluation import Evaluation, per_class_rows, scalar_results
from inference import (VideoResult, classify, format_result, inference_preprocessing, load_classifier,
                       model_class_names, prediction_loader, result_record)
from layouts import HEADS, original_layout, random_state, save_lightning, timm_layout
from preprocessing import DATA_STATICS, Preprocessing, normalize
from reference import randomise_
from video_transformer import VideoClassifier, timesformer_tiny, vivit_tiny
from videos import ODD_VIDEOS, moving_square
from visualize import (attention_rollout, confusion_figure, frame_attention, prediction_figure, rollout_modules,
                       save_png, worst_confusions)


def manual_probabilities(model, source, settings, mean, std):
    """{path: softmax averaged over views}, the views cut by the dataset and normalised with the
    statistics the test names, batch by batch: the reference the inference path must equal."""
    data = VideoDataset.from_preprocessing(source, settings, mode='predict')
    expected = {}
    for index in range(len(data)):
        item = data[index]
        views = collate_views([item], settings)['video'][0]
        with torch.no_grad():
            logits = model(normalize(views, mean, std))
        expected[item['path']] = logits.softmax(dim=-1).mean(dim=0)
    return expected


# ---------------------------------------------------------------- the test split's views

def test_inference_reproduces_the_datamodules_test_views_in_any_batch_size(demo_data):
    """The loader's views and normalisation are the DataModule's test split's, and the result does
    not depend on how views are grouped into forward passes."""
    data = VideoDataModule(test_data_path=str(demo_data / 'test.txt'), class_map=str(demo_data / 'classmap.json'),
                           num_frames=4, frame_interval=2, img_size=32, num_clips=2, num_crops=3,
                           data_statics='imagenet', batch_size=3, num_workers=0)
    model = randomise_(VideoClassifier(timesformer_tiny(num_classes=4), data.class_names, data.preprocessing)).eval()
    expected = {}
    for batch in data.test_dataloader():
        batch = data.transform_batch(batch, 'eval')
        with torch.no_grad():
            logits = model(batch['video'].flatten(0, 1)).view(*batch['video'].shape[:2], -1)
        expected.update({path: (row.softmax(-1).mean(0), label) for path, row, label in
                         zip(batch['path'], logits, batch['label'].tolist())})
    settings = inference_preprocessing(model)
    assert settings == data.preprocessing
    # 6 views a video: one video a batch at 1 and 7 views a forward pass, two at 12, four at 24.
    for batch_size in (1, 7, 12, 24):
        loader = prediction_loader(demo_data / 'test.txt', settings, labelled=True, class_names=model.class_names,
                                   num_classes=4, batch_size=batch_size)
        results = list(classify(model, loader, settings, batch_size=batch_size))
        assert sorted(result.path for result in results) == sorted(expected)
        for result in results:
            probabilities, label = expected[result.path]
            torch.testing.assert_close(result.probabilities, probabilities, atol=1e-6, rtol=1e-5)
            assert result.label == label and result.view_logits.shape == (6, 4)
            assert result.centre_view.shape == (4, 3, 32, 32) and result.centre_view.dtype == torch.uint8


def test_the_one_view_figure_is_the_validation_view(demo_data, tmp_path):
    # The middle clip's centre crop is the validation view: the centre window, centre crop.
    settings = SETTINGS.replace(num_clips=3, num_crops=3)
    video = demo_data / 'test' / 'growing' / 'test_0002.mp4'
    views = collate_views([VideoDataset.from_preprocessing(video, settings, mode='predict')[0]], settings)['video'][0]
    (tmp_path / 'one.txt').write_text(f'{video} growing\n')
    val = VideoDataset.from_preprocessing(tmp_path / 'one.txt', settings, mode='val')[0]
    single = collate_views([val], settings.replace(num_clips=1, num_crops=1))['video'][0, 0]
    assert torch.equal(views[settings.centre_view], single)


# ---------------------------------------------------------------- preprocessing per source

def test_each_source_is_classified_with_its_own_normalisation(tmp_path, demo_data):
    """The original repository's checkpoints: mean = std = 0.5; official TimeSformer: Kinetics statistics; transformers:
    its processor's; ours: what it was trained with; -data_statics overrides any of them."""
    seed = save_lightning(tmp_path / 'seed.ckpt', random_state(original_layout('divided_space_time', classes=4)))
    official = tmp_path / 'official.pyth'
    torch.save({'model_state': random_state(timm_layout('divided_space_time', prefix='model.', classes=4))}, official)
    ours = export(tmp_path / 'ours', preprocessing=SETTINGS.replace(mean=(0.3, 0.4, 0.5), std=(0.2, 0.3, 0.4)))
    hf = hf_folder(tmp_path / 'hf', mean=(0.6, 0.5, 0.4), std=(0.25, 0.2, 0.15))
    sources = {seed: ((0.5,) * 3, (0.5,) * 3), official: ((0.45,) * 3, (0.225,) * 3),
               ours: ((0.3, 0.4, 0.5), (0.2, 0.3, 0.4)), hf: ((0.6, 0.5, 0.4), (0.25, 0.2, 0.15))}
    video = demo_data / 'test' / 'moving_up' / 'test_0000.mp4'
    for source, (mean, std) in sources.items():
        model = load_classifier(source, num_heads=HEADS)
        settings = inference_preprocessing(model, frame_interval=2)
        assert settings.mean == pytest.approx(mean) and settings.std == pytest.approx(std), source
        (result,) = classify(model, prediction_loader(video, settings), settings)
        expected = manual_probabilities(model, video, settings, mean, std)[str(video)]
        torch.testing.assert_close(result.probabilities, expected, atol=1e-6, rtol=1e-5)
        other = inference_preprocessing(model, 'imagenet', frame_interval=2)
        assert (other.mean, other.std) == DATA_STATICS['imagenet'] and other.num_crops == settings.num_crops


def test_flags_override_the_weights_settings_and_an_interval_ends_sampling_by_seconds(tmp_path):
    model = load_classifier(export(tmp_path / 'ours', preprocessing=SETTINGS.replace(window_seconds=1.5)),
                            num_frames=8, img_size=48)
    assert model.config.num_frames == 8 and model.config.img_size == 48
    settings = inference_preprocessing(model, num_clips=3, num_crops=1, short_side=60)
    assert settings == SETTINGS.replace(num_frames=8, img_size=48, window_seconds=1.5, short_side=60, num_clips=3,
                                        num_crops=1)
    assert inference_preprocessing(model, frame_interval=5).window_seconds is None
    with pytest.raises(ValueError, match='short_side 40 is smaller than img_size 48'):
        inference_preprocessing(model, short_side=40)


def test_weights_without_preprocessing_get_kinetics_defaults_in_one_warning(tmp_path, caplog):
    model = load_classifier(export(tmp_path / 'bare', preprocessing=None))
    with caplog.at_level(logging.WARNING):
        settings = inference_preprocessing(model, num_crops=1)
    assert settings == Preprocessing(num_frames=4, img_size=32, num_crops=1)
    (line,) = [record.getMessage() for record in caplog.records]
    assert 'record no preprocessing' in line and 'frame interval 32' in line and '1 crop(s)' in line


# ---------------------------------------------------------------- class names

def test_class_names_from_the_weights_either_class_map_or_indices(tmp_path):
    folder = export(tmp_path / 'named')
    assert load_classifier(folder).class_names == CLASSES
    json_map = tmp_path / 'map.json'
    json_map.write_text(json.dumps({'b': 1, 'a': 0, 'd': 3, 'c': 2}))
    assert load_classifier(folder, json_map).class_names == ['a', 'b', 'c', 'd']
    lines = tmp_path / 'names.txt'
    lines.write_text('w\nx\ny\nz\n')
    assert load_classifier(folder, lines).class_names == ['w', 'x', 'y', 'z']
    assert model_class_names(load_classifier(export(tmp_path / 'unnamed', class_names=None))) == ['0', '1', '2', '3']
    lines.write_text('w\nx\ny\n')
    with pytest.raises(AnnotationError, match='names.txt: 3 classes, but the model has 4 outputs'):
        load_classifier(folder, lines)


def test_labels_by_name_need_the_models_class_names(tmp_path, demo_data):
    model = load_classifier(export(tmp_path / 'unnamed', class_names=None))
    with pytest.raises(AnnotationError, match='labels classes by name'):
        prediction_loader(demo_data / 'test.txt', SETTINGS, labelled=True, num_classes=4)
    numbered = tmp_path / 'numbered.txt'
    numbered.write_text(f'{demo_data}/test/growing/test_0002.mp4 2\n')
    (result,) = classify(model, prediction_loader(numbered, SETTINGS, labelled=True, num_classes=4), SETTINGS)
    assert result_record(result, model_class_names(model))['label'] == '2'


# ---------------------------------------------------------------- odd videos

@pytest.mark.parametrize('decoder', ['decord', 'pyav'])
@pytest.mark.parametrize('name', ODD_VIDEOS)
def test_awkward_videos_decode_to_their_own_frames(odd_videos, name, decoder, caplog):
    """Each is read (with decord, or PyAV where decord cannot), keeps its orientation and its
    colours; a video shorter than a clip repeats frames with a warning naming it."""
    if name not in odd_videos:
        pytest.skip(f'the local FFmpeg has no {ODD_VIDEOS[name][4]} encoder')
    frames, height, width, _, _, _, gray = ODD_VIDEOS[name]
    settings = SETTINGS.replace(num_clips=1, num_crops=3)
    data = VideoDataset.from_preprocessing(odd_videos[name], settings, decoder=decoder)
    with caplog.at_level(logging.WARNING):
        item = data[0]
    assert item['failed'] == [] and item['video_frames'] == frames
    video = item['video'][0]
    assert min(video.shape[-2:]) == settings.short_side and (video.shape[-2] > video.shape[-1]) == (height > width)
    corner = video[0, :, 1, 1].float()  # the background, which every frame shows at its corners
    expected = torch.tensor(moving_square(1, 8, 8, gray)[0, 0, 0], dtype=torch.float32)
    assert (corner - expected).abs().max() < 12, (corner, expected)
    repeated = [record.getMessage() for record in caplog.records if 'frames are repeated' in record.getMessage()]
    if frames < settings.num_frames:
        assert repeated == [f'{odd_videos[name]}: 2 frames, fewer than the 4 of a clip; frames are repeated']
        assert item['frame_indices'] == [[0, 0, 0, 1]]
    else:
        assert repeated == []


def test_sampling_by_seconds_spans_the_same_time_at_60_fps(odd_videos):
    data = VideoDataset.from_preprocessing(odd_videos['fps60.mp4'], SETTINGS.replace(window_seconds=0.5, num_clips=1))
    (indices,) = data[0]['frame_indices']
    assert indices[-1] - indices[0] == 29  # 0.5 s at 60 fps: a window of 30 frames


# ---------------------------------------------------------------- real clips

def test_real_kinetics_clips_through_a_folder(shared_videos, tmp_path):
    model = load_classifier(export(tmp_path / 'model', preprocessing=SETTINGS.replace(frame_interval=32)))
    settings = inference_preprocessing(model)
    loader = prediction_loader(shared_videos[0].parent, settings, num_workers=1)
    results = list(classify(model, loader, settings))
    assert [result.path for result in results] == [str(path) for path in shared_videos]
    assert sorted(result.video_frames for result in results) == [252, 302]
    for result in results:
        assert torch.isfinite(result.view_logits).all() and result.probabilities.sum().item() == pytest.approx(1)
        assert max(max(clip) for clip in result.frame_indices) < result.video_frames
        assert result.decode_ms > 0 and result.forward_ms > 0


# ---------------------------------------------------------------- evaluation

def result(label, view_logits):
    logits = torch.tensor(view_logits, dtype=torch.float32)
    return VideoResult('v.mp4', label, logits, torch.zeros(1, 3, 1, 1, dtype=torch.uint8), [[0]], 1, 1.0, 1.0)


def test_evaluation_counts_all_views_and_the_centre_view():
    # Seven classes, so that top-5 can miss: the last video's class ranks last in every view.
    evaluation = Evaluation(num_classes=7, preprocessing=SETTINGS.replace(num_clips=1, num_crops=3))
    # Views 0 and 2 say class 2 strongly, the centre view class 0, then 2: all views 2, one view 0.
    mixed = [[0, 0, 9, 0, 0, 0, 0], [3, 0, 1, 0, 0, 0, 0], [0, 0, 9, 0, 0, 0, 0]]
    evaluation.add(result(2, mixed))
    evaluation.add(result(0, mixed))
    evaluation.add(result(1, [[0, 5, 0, 0, 0, 0, 0]] * 3))
    evaluation.add(result(6, [[6, 5, 4, 3, 2, 1, 0]] * 3))
    results = evaluation.results()
    assert scalar_results(results) == {'videos': 4, 'top1': 2 / 4, 'top5': 3 / 4, 'top1_1view': 2 / 4,
                                       'top5_1view': 3 / 4}
    assert results['confusion'][[0, 1, 2, 6]].argmax(dim=1).tolist() == [2, 1, 2, 0]
    rows = per_class_rows(results, list('abcdefg'))
    assert rows[0] == {'index': 0, 'class': 'a', 'videos': 1, 'top1': 0.0, 'top5': 1.0, 'most_confused_with': 'c',
                       'confused_videos': 1}
    assert rows[2]['top1'] == 1.0 and rows[2]['most_confused_with'] == ''
    assert rows[6]['top5'] == 0.0 and rows[6]['most_confused_with'] == 'a'


# ---------------------------------------------------------------- pictures

def test_attention_rollout_by_hand():
    """Two blocks, one group, two heads, a class token and two patches."""
    first = torch.tensor([[[0.2, 0.3, 0.5], [0.1, 0.8, 0.1], [0.4, 0.4, 0.2]],
                          [[0.6, 0.2, 0.2], [0.3, 0.3, 0.4], [0.0, 0.5, 0.5]]])[None]
    second = torch.tensor([[[0.1, 0.1, 0.8], [0.5, 0.25, 0.25], [0.3, 0.3, 0.4]],
                           [[0.3, 0.3, 0.4], [0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]])[None]
    rollout = np.eye(3)
    for maps in (first, second):
        mixed = maps[0].numpy().mean(axis=0) + np.eye(3)
        rollout = (mixed / mixed.sum(axis=1, keepdims=True)) @ rollout
    got = attention_rollout([first, second])
    np.testing.assert_allclose(got.numpy(), rollout[None, 0, 1:], rtol=1e-6)
    # The class token's row of a product of row-stochastic matrices sums to 1, itself included.
    assert got.sum().item() + rollout[0, 0] == pytest.approx(1)


@pytest.mark.parametrize('config, frames', [
    (timesformer_tiny(), 4), (timesformer_tiny(attention_type='space_only'), 4),
    (timesformer_tiny(attention_type='joint_space_time'), 4), (vivit_tiny(), 2),
])
def test_attention_maps_per_token_frame(config, frames, demo_data):
    model = randomise_(VideoClassifier(config)).eval()
    for name in rollout_modules(config):
        assert name in dict(model.named_modules())
    clip = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    maps = frame_attention(model, clip, SETTINGS)
    assert maps.shape == (frames, 4, 4) and maps.min() == 0 and maps.max() == 1


def test_attention_is_refused_where_no_attention_covers_a_frame():
    for config in (vivit_tiny(attention_type='fact_dot_product'), vivit_tiny(fact_encoder_attention='divided')):
        with pytest.raises(ValueError, match='attention maps are drawn for'):
            rollout_modules(config)


@pytest.mark.parametrize('frames, size', [(4, (640, 360)), (2, (640, 360)), (8, (1280, 360)), (40, (2560, 360))])
def test_the_prediction_picture_is_a_png_of_the_expected_size(tmp_path, frames, size):
    clip = torch.from_numpy(moving_square(frames, 32, 32)).permute(0, 3, 1, 2)
    attention = torch.rand(max(1, frames // 2), 4, 4)
    labels = ['a rather long class name that needs shortening', 'b', 'c', 'd', 'e']
    save_png(prediction_figure(clip, labels, [0.5, 0.2, 0.1, 0.1, 0.1], attention, 'title'), tmp_path / 'p.png')
    assert png_size(tmp_path / 'p.png') == size


def attending_model(target):
    """A tiny TimeSformer whose every query attends to patch `target` of each frame: its spatial
    attentions' queries are a constant (their bias) and their keys read channel 0 of the normalised
    token, which the position table raises on that patch alone (and lowers on channel 1, so the
    normalised value stands out)."""
    config = timesformer_tiny()
    model = VideoClassifier(config).eval()
    dim, head_dim = config.embed_dims, config.embed_dims // config.num_heads
    with torch.no_grad():
        model.backbone.pos_embed[0, 1 + target, :2] = torch.tensor([8.0, -8.0])
        for name in rollout_modules(config):
            qkv = model.get_submodule(name).qkv
            qkv.weight[:2 * dim] = 0
            qkv.bias[:dim] = 0
            qkv.bias[0:dim:head_dim] = 4.0  # each head's query: 4 on its first channel
            qkv.weight[dim:2 * dim:head_dim, 0] = 4.0  # each head's key: 4 x normalised channel 0
    return model


def cell_redness(figure, axes, grid):
    """The mean red minus blue of each (grid, grid) cell of the picture `axes` shows: (grid, grid)."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., :3].astype(float)
    size = axes.get_images()[0].get_array().shape[0]
    cell = size / grid
    redness = np.zeros((grid, grid))
    for row in range(grid):
        for column in range(grid):
            # Data corners of the cell (pixel centres sit at integers) to display pixels, y counted up.
            corners = axes.transData.transform([(column * cell - 0.5, row * cell - 0.5),
                                                ((column + 1) * cell - 0.5, (row + 1) * cell - 0.5)])
            (left, low), (right, high) = corners.min(axis=0), corners.max(axis=0)
            height = pixels.shape[0]
            block = pixels[int(height - high) + 2:int(height - low) - 2, int(left) + 2:int(right) - 2]
            redness[row, column] = (block[..., 0] - block[..., 2]).mean()
    return redness


def test_the_attention_picture_is_brightest_where_the_class_token_looks():
    """A model whose class token attends to patch 6 (row 1, column 2 of 4x4) gives the largest rollout
    there in every frame, and the picture paints that cell reddest (jet's top) over plain grey frames;
    the picture without -attention shows no such cell and differs. Fails if the map is transposed,
    flipped, drawn over the wrong frame or not drawn."""
    model = attending_model(target=6)
    frames = torch.full((4, 3, 32, 32), 128, dtype=torch.uint8)
    maps = frame_attention(model, frames, SETTINGS)
    assert [divmod(int(frame.argmax()), 4) for frame in maps] == [(1, 2)] * 4
    labels, probabilities = ['a', 'b'], [0.6, 0.4]
    with_attention = prediction_figure(frames, labels, probabilities, maps)
    plain = prediction_figure(frames, labels, probabilities)
    for figure in (with_attention, plain):
        FigureCanvasAgg(figure).draw()
    for axes in with_attention.axes[:4]:  # the four frames
        redness = cell_redness(with_attention, axes, 4)
        assert np.unravel_index(redness.argmax(), redness.shape) == (1, 2), redness.round()
        assert redness[1, 2] > redness.max(initial=-255, where=np.arange(16).reshape(4, 4) != 6) + 50
    plain_redness = cell_redness(plain, plain.axes[0], 4)
    assert np.ptp(plain_redness) < 1  # grey everywhere
    assert not np.array_equal(np.asarray(with_attention.canvas.buffer_rgba()), np.asarray(plain.canvas.buffer_rgba()))


def png_bytes(figure):
    buffer = io.BytesIO()
    figure.savefig(buffer, format='png', dpi=100)
    return buffer.getvalue()


def test_the_confusion_picture_writes_each_cells_count_and_fits_its_list():
    """At the demo's 4 classes, two rows' diagonal counts swapped (same shares, totals and confused
    pairs, so only the written counts can tell) give another picture; at 31 classes, counts are not
    written and the same swap changes nothing. The list of confused pairs goes where it leaves no
    quarter of the canvas blank. Fails on the picture that wrote no count (four coloured squares) or
    left half the canvas empty beside a short list."""
    names = ['moving_up', 'moving_down', 'growing', 'shrinking']
    confusion = torch.tensor([[3, 1, 0, 0], [0, 4, 0, 0], [0, 0, 5, 0], [0, 0, 1, 7]])
    swapped = confusion.clone()
    swapped[[1, 2], [1, 2]] = torch.tensor([5, 4])
    four = png_bytes(confusion_figure(confusion, names))
    assert four != png_bytes(confusion_figure(swapped, names))
    many = torch.diag(torch.arange(1, 32))
    many[0, 1] = 2
    swapped_many = many.clone()
    swapped_many[[3, 4], [3, 4]] = torch.tensor([5, 4])
    many_names = [f'class {index:02d}' for index in range(31)]
    assert png_bytes(confusion_figure(many, many_names)) == png_bytes(confusion_figure(swapped_many, many_names))
    pixels = plt_image.imread(io.BytesIO(four))[..., :3]
    height, width = pixels.shape[:2]
    for row in range(4):
        for column in range(4):
            quarter = pixels[row * height // 4:(row + 1) * height // 4, column * width // 4:(column + 1) * width // 4]
            assert not (quarter > 0.97).all(), (row, column)


def test_confusion_matrix_at_400_classes_lists_the_worst_pairs(tmp_path):
    generator = torch.Generator().manual_seed(0)
    confusion = torch.diag(torch.randint(5, 50, (400,), generator=generator))
    confusion[7, 300] = 40
    confusion[123, 5] = 25
    confusion[50, 51] = 3
    assert worst_confusions(confusion, 3) == [(7, 300, 40), (123, 5, 25), (50, 51, 3)]
    assert worst_confusions(torch.eye(3, dtype=torch.int64)) == []
    names = [f'class {index:03d}' for index in range(400)]
    save_png(confusion_figure(confusion, names), tmp_path / 'confusion.png')
    # 9 inches of map, its colorbar and margins; the 3 pairs listed under it (a short list).
    assert png_size(tmp_path / 'confusion.png') == (1100, 1064)


def test_a_one_frame_one_view_result_reads_in_the_singular():
    """Fails on the wording '1 views of 1 frames'."""
    result = VideoResult('still.mp4', 0, torch.tensor([[2.0, 0.0]]), torch.zeros(1, 3, 8, 8, dtype=torch.uint8),
                         [[0]], 1, 1.0, 1.0)
    first = format_result(result_record(result, ['cat', 'dog'])).splitlines()[0]
    assert first.startswith('still.mp4: 1 view of 1 frame; label cat (')
