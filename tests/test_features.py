"""features.py: the pooled features of real decoded videos through tiny real models, and FeatureWriter's
files, whole and after a kill."""
import csv
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from classifiers import CLASSES, SETTINGS
from dataset import VideoDataset, collate_views
from features import FeatureWriter, extract_features
from inference import classify, prediction_loader
from preprocessing import normalize
from reference import randomise_
from video_transformer import VideoClassifier, timesformer_tiny, videomae_tiny, vjepa2_tiny

REPOSITORY = Path(__file__).resolve().parents[1]


def read_index(folder):
    with open(folder / 'index.csv', newline='') as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize('config', [timesformer_tiny(), timesformer_tiny(pooling='mean'), videomae_tiny(),
                                    vjepa2_tiny()], ids=['class token', 'mean', 'videomae fc_norm', 'vjepa2 pooler'])
def test_a_videos_row_is_what_the_head_reads_averaged_over_its_views(config, demo_data):
    """Each row is the mean over the video's 6 views of the features whose linear layer gives the
    model's own logits for that view (model(view), the plain forward), in the list's order, with the
    list's label and the seconds its frames span. Fails if the features are taken before the final
    norm or the attentive pooler, if views are dropped or not averaged, or rows are out of order."""
    model = randomise_(VideoClassifier(config, CLASSES, SETTINGS)).eval()
    source = demo_data / 'test.txt'
    loader = prediction_loader(source, SETTINGS, labelled=True, class_names=CLASSES, batch_size=12)
    features, rows = extract_features(model, loader, SETTINGS, batch_size=5)
    data = VideoDataset.from_preprocessing(source, SETTINGS, mode='test', class_map=CLASSES)
    assert features.dtype == np.float32 and features.shape == (len(data), config.embed_dims) == (4, config.embed_dims)
    for row, item, index in zip(rows, map(data.__getitem__, range(len(data))), range(len(data))):
        views = normalize(collate_views([item], SETTINGS)['video'][0], SETTINGS.mean, SETTINGS.std)
        with torch.no_grad():
            logits = model(views)
            per_view = model.features(views)
        torch.testing.assert_close(model.head.fc(per_view), logits, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(features[index], per_view.mean(dim=0).numpy(), atol=1e-5, rtol=1e-5)
        assert row['path'] == item['path'] and row['label'] == CLASSES[item['label']]
        assert 0 <= row['start_s'] < row['end_s'] and row['start_s'] == pytest.approx(item['start_s'], abs=1e-6)


def test_the_features_come_from_the_logits_own_forward_pass(demo_data):
    """classify with features=True gives the same logits as without, and its view features through the
    head's linear layer give them: one forward pass serves both."""
    model = randomise_(VideoClassifier(timesformer_tiny(), CLASSES, SETTINGS)).eval()
    video = demo_data / 'test' / 'growing' / 'test_0002.mp4'
    (plain,) = classify(model, prediction_loader(video, SETTINGS), SETTINGS)
    (both,) = classify(model, prediction_loader(video, SETTINGS), SETTINGS, features=True)
    assert plain.view_features is None and both.view_features.shape == (6, 32)
    torch.testing.assert_close(both.view_logits, plain.view_logits, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(model.head.fc(both.view_features), plain.view_logits, atol=1e-5, rtol=1e-5)
    # The demo's 25 fps: from the first frame read to the end of the last one.
    first, last = min(map(min, both.frame_indices)), max(map(max, both.frame_indices))
    assert (both.start_s, both.end_s) == pytest.approx((first / 25, (last + 1) / 25), abs=1e-3) and first > 0


def test_the_writer_grows_a_valid_npy_and_index_as_rows_come(tmp_path):
    generator = np.random.default_rng(0)
    batches = [generator.standard_normal((size, 8)).astype(np.float32) for size in (3, 1, 4)]
    with FeatureWriter(tmp_path / 'out') as writer:
        assert np.load(tmp_path / 'out' / 'features.npy').shape == (0, 0)  # no width known yet
        for number, batch in enumerate(batches):
            writer.add(torch.from_numpy(batch), [{'path': f'v{number}.mp4', 'start_s': number, 'end_s': number + 1.5,
                                                  'label': 'a' if number else None}] * len(batch))
            # Readable after every add, with the rows so far.
            so_far = np.load(tmp_path / 'out' / 'features.npy')
            np.testing.assert_array_equal(so_far, np.concatenate(batches[:number + 1]))
        with pytest.raises(ValueError, match='features of width 5 added to rows of width 8'):
            writer.add(np.zeros((1, 5)), [{'path': 'x', 'start_s': 0, 'end_s': 1}])
    stored = np.load(tmp_path / 'out' / 'features.npy', mmap_mode='r')
    np.testing.assert_array_equal(stored, np.concatenate(batches))
    index = read_index(tmp_path / 'out')
    assert [row['row'] for row in index] == [str(number) for number in range(8)]
    assert index[0] == {'row': '0', 'path': 'v0.mp4', 'start_s': '0', 'end_s': '1.5', 'label': ''}
    assert index[-1]['label'] == 'a' and index[-1]['path'] == 'v2.mp4'
    with FeatureWriter(tmp_path / 'empty', dim=16):
        pass
    assert np.load(tmp_path / 'empty' / 'features.npy').shape == (0, 16) and read_index(tmp_path / 'empty') == []


KILLED_WRITER = '''
import sys, time
import numpy as np
from features import FeatureWriter
writer = FeatureWriter(sys.argv[1])
for number in range(3):
    writer.add(np.full((2, 4), number, dtype=np.float32), [{'path': f'v{number}', 'start_s': 0, 'end_s': 1}] * 2)
print('added', flush=True)
time.sleep(60)
'''


def test_a_writer_killed_halfway_leaves_valid_files_for_its_rows(tmp_path):
    """SIGKILL, no close(): features.npy loads with the 6 rows added and index.csv lists them. Fails
    if the header is written only at close (np.load would read no rows, or fail)."""
    process = subprocess.Popen([sys.executable, '-c', KILLED_WRITER, str(tmp_path / 'out')], stdout=subprocess.PIPE,
                               text=True, cwd=REPOSITORY)
    try:
        assert process.stdout.readline().strip() == 'added'
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        process.stdout.close()
    stored = np.load(tmp_path / 'out' / 'features.npy')
    np.testing.assert_array_equal(stored, np.repeat(np.arange(3, dtype=np.float32), 2)[:, None].repeat(4, axis=1))
    assert [row['path'] for row in read_index(tmp_path / 'out')] == ['v0', 'v0', 'v1', 'v1', 'v2', 'v2']
