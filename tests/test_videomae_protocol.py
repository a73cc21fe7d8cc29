"""MCG-NJU's VideoMAE protocols: Something-Something v2's sampling, one frame per equal segment of the whole
video (random within it in training, at fixed places in the two test clips), as a Preprocessing field that
weights carry through our checkpoints and exports and that the dataset, the DataModule and both commands
honour; and the fine-tuning's new head, its initial weights scaled by 0.001."""
import json
import logging

import numpy as np
import pytest
import torch
from transformers import VideoMAEConfig, VideoMAEForVideoClassification

from command_lines import run_in_one_process
from data_trainer import VideoDataModule
from dataset import VideoDataset
from frame_sampling import sample_frame_indices, sample_frame_segments
from hf_export import save_hf
from inference import classify, inference_preprocessing, load_classifier, prediction_loader
from model_loading import load_model
from our_format import save_weights
from preprocessing import Preprocessing
from reference import randomise_
from run_settings import RECIPES
from source_preprocessing import HF_SAMPLING_FILE
from test_training_cli import TINY, demo_flags
from video_transformer import VideoClassifier, videomae_tiny
from videos import write_video
from weight_init import init_from_pretrained_

# Frame i of a generated video is flat grey of level i * GREY_STEP, so decoded pixels name their frame.
GREY_STEP = 5
VIDEO_FRAMES = 45
SSV2_NAMES = ['Pushing something from left to right', 'Putting something on a surface']


def mcg_test_clips(total, num_frames):
    """MCG-NJU's ssv2.py test indices, written out independently: tick = total / num_frames, clip 0 the
    segments' first frames int(tick * x), clip 1 their centres int(tick / 2 + tick * x)."""
    tick = total / float(num_frames)
    return [[int(tick * x) for x in range(num_frames)], [int(tick / 2.0 + tick * x) for x in range(num_frames)]]


def grey_video(path, frames=VIDEO_FRAMES, size=40):
    """A video whose frame i is grey level i * GREY_STEP; returns path."""
    levels = np.arange(frames, dtype=np.uint8)[:, None, None, None] * GREY_STEP
    return write_video(path, np.broadcast_to(levels, (frames, size, size, 3)).copy())


def frames_read(video):
    """Frame numbers of decoded grey frames: uint8 (..., T, 3, H, W) -> int array (..., T)."""
    return np.rint(video.float().mean(dim=(-3, -2, -1)).numpy() / GREY_STEP).astype(int)


# ---------------------------------------------------------------- frame indices

def test_training_takes_one_random_frame_from_each_equal_segment():
    """Fails if a training clip is a window of frames, a frame leaves its segment, or the video's last
    frames (the remainder of 45 // 16 segments of 2, which MCG-NJU's integer segments skip) are never read."""
    rng = np.random.default_rng(0)
    draws = np.concatenate([sample_frame_segments(VIDEO_FRAMES, 16, 'train', rng=rng) for _ in range(400)])
    assert draws.shape == (400, 16) and draws.dtype == np.int64
    bounds = VIDEO_FRAMES * np.arange(17) // 16
    assert ((draws >= bounds[:-1]) & (draws < bounds[1:])).all()
    for segment in range(16):  # every frame of every segment is drawn
        assert set(draws[:, segment]) == set(range(bounds[segment], bounds[segment + 1]))
    again = sample_frame_segments(VIDEO_FRAMES, 16, 'train', rng=np.random.default_rng(0))
    assert np.array_equal(again, draws[:1])


@pytest.mark.parametrize('total', [16, 45, 50, 97, 300])
def test_the_two_test_clips_are_mcg_njus_segment_starts_and_centres(total):
    """Fails if the two test clips sit elsewhere in their segments than MCG-NJU's ssv2.py reads them
    (clip 0 at each segment's first frame, clip 1 at its centre), or validation's one clip is not the
    centres."""
    expected = mcg_test_clips(total, 16)
    assert sample_frame_segments(total, 16, 'test', num_clips=2).tolist() == expected
    assert sample_frame_segments(total, 16, 'predict', num_clips=2).tolist() == expected
    assert sample_frame_segments(total, 16, 'val', num_clips=2).tolist() == [expected[1]]


def test_more_clips_sit_evenly_in_their_segments_one_at_the_centre():
    """Three clips at 1/6, 1/2 and 5/6 of each 60-frame segment; fails if clips coincide or leave it."""
    assert sample_frame_segments(240, 4, 'test', num_clips=3).tolist() == [
        [10, 70, 130, 190], [30, 90, 150, 210], [50, 110, 170, 230]]


@pytest.mark.parametrize('mode', ['train', 'val', 'test'])
def test_a_video_shorter_than_the_segments_spreads_its_frames(mode):
    """5 frames for 8 segments: fails if an index leaves the video or the frames are not spread over it
    (MCG-NJU's training reads frame 0 eight times there)."""
    indices = sample_frame_segments(5, 8, mode, num_clips=2, rng=np.random.default_rng(0))
    assert indices.min() >= 0 and indices.max() <= 4
    for clip in indices:
        assert (np.diff(clip) >= 0).all() and clip[0] == 0 and clip[-1] == 4
    assert sample_frame_segments(1, 8, mode, num_clips=2, rng=np.random.default_rng(0)).max() == 0


def test_bad_arguments_are_refused():
    """Fails if an empty video or an unknown mode gives indices instead of a ValueError naming it."""
    with pytest.raises(ValueError, match='0 frames'):
        sample_frame_segments(0, 8, 'test')
    with pytest.raises(ValueError, match='mode must be one of'):
        sample_frame_segments(10, 8, 'eval')


# ---------------------------------------------------------------- settings carried with weights

def test_preprocessing_checks_sampling_and_old_settings_mean_interval():
    """Fails if an unknown sampling or a window in seconds with segments is taken, or settings saved
    before the field existed do not read back as interval sampling."""
    with pytest.raises(ValueError, match="sampling must be one of"):
        Preprocessing(sampling='tsn')
    with pytest.raises(ValueError, match='window_seconds 2.0 is a window of interval sampling'):
        Preprocessing(sampling='segments', window_seconds=2.0)
    old = {key: value for key, value in Preprocessing(num_frames=16).to_dict().items() if key != 'sampling'}
    assert Preprocessing.from_dict(old).sampling == 'interval'
    assert Preprocessing.from_dict(Preprocessing(sampling='segments').to_dict()).sampling == 'segments'


SEGMENTS = Preprocessing(num_frames=4, img_size=32, short_side=32, sampling='segments', num_clips=2, num_crops=3)


def test_segments_sampling_survives_our_export_and_the_transformers_export(tmp_path):
    """Fails if either export drops the sampling (the model would read a window 32 frames wide), if a
    VideoMAE folder's own sampling file is overridden by VideoMAE's Kinetics views (5 x 3), or if files
    written before the field (no 'sampling') do not read back as interval."""
    model = VideoClassifier(videomae_tiny(final_norm_eps=1e-5), preprocessing=SEGMENTS)
    save_weights(model, tmp_path / 'ours')
    save_hf(model, tmp_path / 'hf')
    assert json.loads((tmp_path / 'hf' / HF_SAMPLING_FILE).read_text())['sampling'] == 'segments'
    for folder in ('ours', 'hf'):
        assert load_model(tmp_path / folder).preprocessing == SEGMENTS, folder
    one_view = VideoClassifier(videomae_tiny(final_norm_eps=1e-5), preprocessing=SEGMENTS.replace(
        sampling='interval', frame_interval=3, num_clips=1, num_crops=1))
    save_hf(one_view, tmp_path / 'one_view')
    assert load_model(tmp_path / 'one_view').preprocessing == one_view.preprocessing
    for folder, name in (('ours', 'config.json'), ('hf', HF_SAMPLING_FILE)):
        path = tmp_path / folder / name
        saved = json.loads(path.read_text())
        (saved['preprocessing'] if folder == 'ours' else saved).pop('sampling')
        path.write_text(json.dumps(saved))
        assert load_model(tmp_path / folder).preprocessing == SEGMENTS.replace(sampling='interval'), folder


def ssv2_folder(path, names=None):
    """A randomised tiny transformers VideoMAE classifier of 174 classes (named `names` then LABEL_n, or
    transformers' LABEL_n only) with a processor file, as the Hub's SSv2 folders come; returns path."""
    labels = {index: (names[index] if names and index < len(names) else f'LABEL_{index}') for index in range(174)}
    config = VideoMAEConfig(image_size=32, patch_size=8, num_frames=4, tubelet_size=2, hidden_size=32,
                            num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=174,
                            id2label=labels)
    randomise_(VideoMAEForVideoClassification(config), std=0.05).save_pretrained(path)
    processor = {'image_processor_type': 'VideoMAEImageProcessor', 'do_rescale': True, 'rescale_factor': 1 / 255,
                 'do_normalize': True, 'image_mean': [0.485, 0.456, 0.406], 'image_std': [0.229, 0.224, 0.225],
                 'size': {'shortest_edge': 32}, 'crop_size': {'height': 32, 'width': 32}}
    (path / 'preprocessor_config.json').write_text(json.dumps(processor))
    return path


def test_ssv2_folders_sample_segments_said_only_where_guessed(tmp_path, caplog):
    """SSv2 names: segments, 2 x 3, no warning; 174 unnamed classes: the same, said in one line; 174
    classes of another data set: VideoMAE's Kinetics windows. Fails on the old reading, which took
    SSv2 weights' frames 4 apart with a warning line."""
    cases = {'named': (SSV2_NAMES, 'segments', 2, 0), 'unnamed': (None, 'segments', 2, 1),
             'other': (['jumping', 'running'], 'interval', 5, 0)}
    for case, (names, sampling, clips, warnings) in cases.items():
        folder = ssv2_folder(tmp_path / case, names)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            settings = load_model(folder).preprocessing
        assert (settings.sampling, settings.num_clips, settings.num_crops) == (sampling, clips, 3), case
        said = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
        assert len(said) == warnings, (case, said)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_model(tmp_path / 'unnamed')
    (line,) = [record.getMessage() for record in caplog.records]
    assert '174 classes without names, taken for Something-Something v2' in line and '-sampling interval' in line


# ---------------------------------------------------------------- the data path

def test_the_datamodule_reads_the_segment_frames_of_each_split(tmp_path):
    """Decoded frames name themselves: fails if the DataModule or the dataset reads a window of frames
    instead of segments, or the test clips are not MCG-NJU's."""
    video = grey_video(tmp_path / 'grey.mp4')
    (tmp_path / 'list.txt').write_text(f'{video} 0\n')
    data = VideoDataModule(train_data_path=tmp_path / 'list.txt', test_data_path=tmp_path / 'list.txt',
                           num_classes=1, num_frames=16, sampling='segments', num_clips=2, num_crops=1, img_size=32,
                           short_side=32, num_workers=0)
    assert data.preprocessing.sampling == 'segments' and data.hparams.sampling == 'segments'
    assert frames_read(data.dataset('test')[0]['video']).tolist() == mcg_test_clips(VIDEO_FRAMES, 16)
    torch.manual_seed(0)
    bounds = VIDEO_FRAMES * np.arange(17) // 16
    for _ in range(3):
        read = frames_read(data.dataset('train')[0]['video'])
        assert ((read >= bounds[:-1]) & (read < bounds[1:])).all(), read
    with pytest.raises(ValueError, match='sampling must be one of'):
        VideoDataset(tmp_path / 'list.txt', num_classes=1, sampling='tsn')


def test_inference_with_an_ssv2_folder_reads_its_segment_frames(tmp_path):
    """A 174-class VideoMAE folder named as SSv2 classifies from the segments' frames (reported and decoded):
    fails if inference reads windows 4 frames apart, as it did for these weights."""
    folder = ssv2_folder(tmp_path / 'ssv2', SSV2_NAMES)
    video = grey_video(tmp_path / 'grey.mp4')
    model = load_classifier(folder)
    settings = inference_preprocessing(model)
    loader = prediction_loader(video, settings)
    (result,) = list(classify(model, loader, settings))
    expected = [[int(index) for index in clip] for clip in mcg_test_clips(VIDEO_FRAMES, 4)]
    assert result.frame_indices == expected
    assert frames_read(loader.dataset[0]['video']).tolist() == expected
    assert result.view_logits.shape == (6, 174)
    interval = inference_preprocessing(model, frame_interval=4)
    assert (interval.sampling, interval.frame_interval) == ('interval', 4)
    with pytest.raises(ValueError, match='frame_interval spaces the frames of a window'):
        inference_preprocessing(model, sampling='segments', frame_interval=4)
    by_seconds = VideoClassifier(videomae_tiny(), preprocessing=SEGMENTS.replace(sampling='interval', window_seconds=1.0))
    assert inference_preprocessing(by_seconds, sampling='segments') == SEGMENTS


def test_the_commands_train_with_segments_and_classify_with_the_weights_mode(demo_data, tmp_path):
    """model_pretrain.py -sampling segments (a short real fit, from a VideoMAE starting point at lr 0, so
    the new head keeps the videomae recipe's scaled init) writes the mode into its checkpoint, which
    model_inference.py then samples by; the flag's mistakes are one line and exit 2. Fails if the flag
    is not passed to the DataModule, the checkpoint or inference, or the head is not scaled by 0.001."""
    start = tmp_path / 'start'
    save_weights(randomise_(VideoClassifier(videomae_tiny())), start)
    root = tmp_path / 'runs'
    fit = [*TINY, *demo_flags(demo_data), '-recipe', 'videomae', '-arch', 'videomae', '-pretrain', start,
           '-lr', '0', '-epoch', '1', '-max_steps', '1', '-sampling', 'segments', '-root_dir', root, '-devices', '1']
    results = run_in_one_process('model_pretrain.py', {
        'fit': fit,
        'window': [*TINY, *demo_flags(demo_data), '-sampling', 'segments', '-window_seconds', '1'],
        'scale_without_start': [*TINY, *demo_flags(demo_data), '-head_init_scale', '0.5'],
    })
    assert results['fit']['code'] == 0, results['fit']['stderr'][-3000:]
    for case, message in (('window', '-window_seconds is a window of -sampling interval'),
                          ('scale_without_start', '-head_init_scale scales the new head')):
        lines = results[case]['stderr'].strip().splitlines()
        assert results[case]['code'] == 2 and len(lines) == 1 and message in lines[0], results[case]
    (checkpoint,) = root.glob('results/*/ckpt/last.ckpt')
    saved = torch.load(checkpoint, weights_only=True, map_location='cpu')
    assert saved['hyper_parameters']['preprocessing']['sampling'] == 'segments'
    assert saved['datamodule_hyper_parameters']['sampling'] == 'segments'
    assert 1e-5 < saved['state_dict']['model.head.fc.weight'].std().item() < 4e-5  # 0.02 x 0.001
    assert load_model(checkpoint).preprocessing.sampling == 'segments'
    video = grey_video(tmp_path / 'grey.mp4')
    runs = run_in_one_process('model_inference.py', {
        'weights': ['-pretrain', checkpoint, '-video_path', video, '-json'],
        'interval': ['-pretrain', checkpoint, '-video_path', video, '-json', '-frame_interval', '2'],
        'both': ['-pretrain', checkpoint, '-video_path', video, '-sampling', 'segments', '-frame_interval', '2'],
        'timeline': ['-pretrain', checkpoint, '-video_path', video, '-timeline'],
        'timeline_window': ['-pretrain', checkpoint, '-video_path', video, '-timeline', '-window_seconds', '0.5',
                            '-json'],
    })
    record = json.loads(runs['weights']['stdout'].splitlines()[0])
    assert record['frames'] == [sample_frame_segments(VIDEO_FRAMES, 4, 'test').tolist()[0]]
    record = json.loads(runs['interval']['stdout'].splitlines()[0])
    assert record['frames'] == sample_frame_indices(VIDEO_FRAMES, 4, 4 * 2, 'predict').tolist()
    lines = runs['both']['stderr'].strip().splitlines()
    assert runs['both']['code'] == 2 and len(lines) == 1 and '-sampling segments spreads them' in lines[0]
    # A timeline slides a window, which segments of a whole video have not: refused, unless one is given.
    lines = runs['timeline']['stderr'].strip().splitlines()
    assert runs['timeline']['code'] == 2 and len(lines) == 1 and 'has no window to slide' in lines[0]
    assert runs['timeline_window']['code'] == 0, runs['timeline_window']['stderr'][-2000:]
    assert len(runs['timeline_window']['stdout'].splitlines()) > 1


# ---------------------------------------------------------------- the new head's initial scale

def test_the_new_head_of_a_starting_point_is_scaled_as_mcg_njus_fine_tuning_does(tmp_path):
    """head_init_scale 0.001: the new head's weights have std 0.02 x 0.001 and a zero bias, the backbone is
    the starting point's; 1 (the default) leaves the head at std 0.02; a model without a head refuses it.
    Fails if the scale is not applied, applied to the backbone, or the default changes."""
    start = VideoClassifier(videomae_tiny())
    save_weights(randomise_(start), tmp_path / 'start')
    config = videomae_tiny(num_classes=400)
    scaled = init_from_pretrained_(VideoClassifier(config), tmp_path / 'start', head_init_scale=1e-3)
    default = init_from_pretrained_(VideoClassifier(config), tmp_path / 'start')
    assert scaled.head.fc.weight.std().item() == pytest.approx(0.02 * 1e-3, rel=0.05)
    assert default.head.fc.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert not scaled.head.fc.bias.any()
    for name, tensor in scaled.backbone.state_dict().items():
        assert torch.equal(tensor, start.backbone.state_dict()[name]), name
    with pytest.raises(ValueError, match='head_init_scale 0.001 scales a classifier'):
        init_from_pretrained_(VideoClassifier(config).backbone, tmp_path / 'start', head_init_scale=1e-3)


def test_only_the_videomae_recipe_scales_the_new_head():
    """Fails if the demo or Kinetics recipes change their head's init, or the videomae recipe loses
    MCG-NJU's init_scale."""
    assert [RECIPES[recipe]['head_init_scale'] for recipe in ('demo', 'kinetics', 'videomae', 'videomae_pretrain')] \
        == [1.0, 1.0, 1e-3, 1.0]
