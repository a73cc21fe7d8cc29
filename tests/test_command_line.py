"""What both command lines share: their one-line error messages."""
import pytest
from torch.utils.data import DataLoader, Dataset

from command_line import error_line
from dataset import UnreadableDatasetError


class Unreadable(Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, index):
        raise UnreadableDatasetError('list.txt: 32 of 32 videos read could not be decoded')


@pytest.mark.parametrize('num_workers', [0, 1])
def test_an_error_from_a_loader_worker_reads_as_its_own_message(num_workers):
    # A worker re-raises the error with its traceback in the message; the line shown is the message.
    with pytest.raises(UnreadableDatasetError) as caught:
        next(iter(DataLoader(Unreadable(), num_workers=num_workers)))
    assert (num_workers == 1) == ('Traceback' in str(caught.value))
    assert error_line(caught.value) == 'list.txt: 32 of 32 videos read could not be decoded'
