"""Training inputs from a dataset with jagged features: the multi-hot expansion of its one-hot features only,
and the readers that cannot read it."""

import pytest
import torch

from pipeline.batch import Batch, KeyedJagged
from pipeline.jagged import PartialMultiHot
from pipeline.multihot import MultiHot


def test_expansion_covers_the_one_hot_features_and_keeps_the_bags():
    one_hot = {"a": [[3], [1], [4]], "c": [[2], [0], [7]]}
    bags = {"b": [[5, 6], [], [9]]}
    mixed = KeyedJagged.from_lists({"a": one_hot["a"], "b": bags["b"], "c": one_hot["c"]})
    batch = Batch(torch.zeros(3, 1), torch.zeros(3), mixed)
    multi_hot = MultiHot(["a", "c"], [3, 2], [10, 8], [0, 2], "uniform", seed=4)
    out = PartialMultiHot(multi_hot, ["a", "b", "c"])(batch).sparse
    out.validate()
    alone = multi_hot(Batch(batch.dense, batch.labels, KeyedJagged.from_lists(one_hot))).sparse
    ids = alone.values.tolist()
    want = KeyedJagged.from_lists(
        {
            "a": [ids[0:3], ids[3:6], ids[6:9]],
            "b": bags["b"],
            "c": [ids[9:11], ids[11:13], ids[13:15]],
        }
    )
    assert out.values.tolist() == want.values.tolist()
    assert out.offsets.tolist() == want.offsets.tolist()
    assert [ids[0], ids[3], ids[6], ids[9]] == [3, 1, 4, 2]  # each bag starts with its own id


def test_dali_reader_refuses_jagged_features(tmp_path):
    from training.config import ConfigError, DataConfig
    from training.data import _batches

    class Jagged:
        path, jagged = tmp_path, {"tags": None}

    with pytest.raises(
        ConfigError, match=r"'data.reader' is 'dali', which reads one-hot datasets only"
    ):
        _batches(Jagged(), DataConfig(reader="dali"), iter([]))
