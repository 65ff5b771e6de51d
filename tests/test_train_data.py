"""Training data: seeded in-memory batches, rank shards that tile the global batch, checkpoint files."""

import os
import random

import numpy as np
import pytest
import torch

from experiments.train.checkpoint import CHECKPOINT_KEYS, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from experiments.train.data import TrainingData, eval_shard, load_data, train_batches


def fake_data(n: int = 40) -> TrainingData:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()

    def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        noise = torch.rand(batch.shape[0], generator=generator).view(-1, 1, 1, 1)
        return batch.float() + noise

    return TrainingData(images, torch.arange(n), images[:10].float(), torch.arange(10), augment, 10, 1, 4)


def test_ranks_slice_the_same_global_batches():
    data = fake_data()
    whole = list(train_batches(data, 8, torch.Generator().manual_seed(3)))
    halves = [list(train_batches(data, 8, torch.Generator().manual_seed(3), rank, 2)) for rank in (0, 1)]
    assert len(whole) == 5  # 40 // 8
    for step, (images, labels) in enumerate(whole):
        assert torch.equal(torch.cat([halves[0][step][1], halves[1][step][1]]), labels)
        assert torch.equal(torch.cat([halves[0][step][0], halves[1][step][0]]), images)
    seen = torch.cat([labels for _, labels in whole])
    assert len(set(seen.tolist())) == 40  # a permutation: no sample twice in an epoch


def test_generator_state_after_an_epoch_does_not_depend_on_ranks():
    data = fake_data()
    one, two = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    list(train_batches(data, 8, one))
    list(train_batches(data, 8, two, rank=1, world_size=2))
    assert torch.equal(one.get_state(), two.get_state())


def test_incomplete_last_batch_is_dropped_and_bad_sizes_are_errors():
    data = fake_data(20)
    assert len(list(train_batches(data, 8, torch.Generator()))) == 2
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        next(train_batches(data, 9, torch.Generator(), world_size=2))
    with pytest.raises(ValueError, match="larger than the 20 training images"):
        next(train_batches(data, 32, torch.Generator()))


def test_test_shards_cover_the_test_set_once():
    data = fake_data()
    shards = [eval_shard(data, rank, 3)[1] for rank in range(3)]
    assert sorted(torch.cat(shards).tolist()) == list(range(10))


def test_missing_data_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"mnist data not found in {tmp_path}"):
        load_data("mnist", tmp_path)
    with pytest.raises(FileNotFoundError, match="smallnorb-azimuth data not found"):
        load_data("smallnorb-azimuth", tmp_path)


def training_state() -> dict:
    """The entries load_checkpoint requires of a training checkpoint (their content does not matter here)."""
    return {key: {} for key in CHECKPOINT_KEYS}


def test_checkpoint_round_trip_restores_random_states(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    state = rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    path = tmp_path / "run" / "checkpoint.pt"
    save_checkpoint({**training_state(), "rng": state, "step": 7}, path)
    loaded = load_checkpoint(path)
    set_rng_state(loaded["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert loaded["step"] == 7
    assert os.listdir(path.parent) == ["checkpoint.pt"]  # no temporary file left behind


def test_interrupted_checkpoint_write_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({**training_state(), "step": 1}, path)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({**training_state(), "step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert os.listdir(tmp_path) == ["checkpoint.pt"]
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume"):
        load_checkpoint(tmp_path / "missing.pt")
