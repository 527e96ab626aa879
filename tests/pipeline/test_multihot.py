"""MLPerf multi-hot expansion of one-hot datasets (pipeline/multihot.py): a case worked by hand, the same bags and
training at W = 1, 2 and 4, and config errors that name the key."""

import pytest
import torch
import torch.distributed as dist

from pipeline.batch import Batch, KeyedJagged
from pipeline.multihot import MultiHot
from tests.support.criteo_reference import make_lines, write_tsv
from tests.support.dist_utils import run_distributed
from tests.support.training import build_parts, context, train_losses
from training.config import ConfigError, load_config
from training.evaluate import evaluate

MLPERF_SIZES = [3, 2, 1, 2, 6, 1, 1, 1, 1, 7, 3, 8, 1, 6, 9, 5, 1, 1, 1, 12, 100, 27, 10, 3, 1, 1]
_M = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """kernels.hashing.splitmix64 on a Python int (unsigned 64-bit), written out independently."""
    x = (x + 0x9E3779B97F4A7C15) & _M
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M
    return x ^ (x >> 31)


def _companion(seed: int, table: int, original: int, j: int, rows: int, distribution: str) -> int:
    key = _splitmix64((seed * 1_000_003 + 5_555_555 + table * 7_919) & _M)
    u = (_splitmix64((_splitmix64(original ^ key) + j) & _M) >> 11) * 2.0**-53
    if distribution == "uniform":
        return min(int(u * rows), rows - 1)
    v = (1.0 - u) * (1.0 - u)
    lomax = 1.0 / (v * v) - 1.0  # numpy's pareto(a=0.25): (1 - U)^-4 - 1
    # astype(int32) on x86, then numpy's %
    return (-(2**31) if lomax >= 2.0**31 else int(lomax)) % rows


# 3 samples; "a" (3 ids) and "c" (2 ids) share table 0 of 10 rows, "b" stays one-hot (table 1, 1000 rows).
# Each bag is the original id, then companions fixed per (table, id): sample 0 and 1 of "a" both have id 4 and
# get the same bag, and "c"'s id 4 gets the first companion of "a"'s id 4 (same table).
HAND = {
    "uniform": [
        4,
        7,
        2,
        4,
        7,
        2,
        9,
        4,
        7,  # a: [4, 7, 2] [4, 7, 2] [9, 4, 7]
        7,
        0,
        999,  # b: one-hot, unchanged
        4,
        7,
        6,
        3,
        0,
        2,
    ],  # c: [4, 7] [6, 3] [0, 2]
    "pareto": [4, 4, 2, 4, 4, 2, 9, 8, 7, 7, 0, 999, 4, 4, 6, 6, 0, 2],
}


@pytest.mark.parametrize("distribution", ["uniform", "pareto"])
def test_small_case_by_hand(distribution):
    multi_hot = MultiHot(
        ["a", "b", "c"], [3, 1, 2], [10, 1000, 10], [0, 1, 0], distribution, seed=7
    )
    ids = {"a": [4, 4, 9], "b": [7, 0, 999], "c": [4, 6, 0]}
    batch = Batch(
        torch.rand(3, 2),
        torch.tensor([0.0, 1.0, 1.0]),
        KeyedJagged.from_lists({k: [[i] for i in v] for k, v in ids.items()}),
    )
    out = multi_hot(batch)
    assert (
        out.sparse.keys == ["a", "b", "c"]
        and out.dense is batch.dense
        and out.labels is batch.labels
    )
    assert out.sparse.offsets.tolist() == [0, 3, 6, 9, 10, 11, 12, 14, 16, 18]
    assert out.sparse.values.tolist() == HAND[distribution]
    out.sparse.validate()
    expected = []
    for name, size, rows, table in (("a", 3, 10, 0), ("b", 1, 1000, 1), ("c", 2, 10, 0)):
        for i in ids[name]:
            expected += [i] + [
                _companion(7, table, i, j, rows, distribution) for j in range(1, size)
            ]
    assert expected == HAND[distribution]


def test_distributions_follow_the_reference():
    ids = torch.arange(4000).view(1, -1)
    draws = {
        d: MultiHot(["x"], [50], [1_000_000], [0], d).expand(ids).view(4000, 50)
        for d in ("uniform", "pareto")
    }
    for d, bags in draws.items():
        assert (
            torch.equal(bags[:, 0], ids[0])
            and bool((bags >= 0).all())
            and bool((bags < 1_000_000).all())
        ), d
    uniform, pareto = draws["uniform"][:, 1:].double(), draws["pareto"][:, 1:]
    assert 0.45e6 < float(uniform.mean()) < 0.55e6  # spread over the table
    # P(int((1-U)^-4 - 1) == 0) = 1 - 2^-0.25 = 0.159
    assert 0.14 < float((pareto == 0).double().mean()) < 0.18
    assert int(pareto.median()) < 30
    other_seed = (
        MultiHot(["x"], [50], [1_000_000], [0], "uniform", seed=1).expand(ids).view(4000, 50)
    )
    assert not torch.equal(other_seed, draws["uniform"])


def test_needs_one_hot_batches_of_its_features():
    multi_hot = MultiHot(["a"], [2], [10], [0])
    with pytest.raises(
        ValueError, match="needs one id per bag; got 3 ids for 1 features x 2 samples"
    ):
        multi_hot(
            Batch(torch.zeros(2, 1), torch.zeros(2), KeyedJagged.from_lists({"a": [[1, 2], [3]]}))
        )
    with pytest.raises(ValueError, match=r"set up for features \['a'\], got a batch of \['b'\]"):
        multi_hot(Batch(torch.zeros(1, 1), torch.zeros(1), KeyedJagged.from_lists({"b": [[1]]})))


# ---- from the config, through the trainer's loaders, at W = 1, 2, 4 --------------------------------------------
TOML = """
[model]
bottom_mlp = [8, 4]
top_mlp = [8]
[embedding]
dim = 4
[optimizer]
dense_lr = 0.01
sparse_lr = 0.1
[train]
steps = 3
global_batch_size = 24
[eval]
samples = 32
batch_size = 16
"""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from pipeline.criteo import PreprocessOptions, preprocess

    tmp = tmp_path_factory.mktemp("multihot")
    preprocess(
        [write_tsv(tmp / "day.tsv", make_lines(240, seed=3))],
        tmp / "data",
        PreprocessOptions(hash_rows=[97], progress=False),
    )
    (tmp / "small.toml").write_text(TOML)
    return str(tmp / "data"), str(tmp / "small.toml")


def _bags(batch):
    """Per sample: its bags, one tuple of ids per feature."""
    kjt, count = batch.sparse, batch.batch_size
    offsets, values = kjt.offsets.tolist(), kjt.values.tolist()
    return [
        tuple(
            tuple(values[offsets[f * count + b] : offsets[f * count + b + 1]])
            for f in range(len(kjt.keys))
        )
        for b in range(count)
    ]


def _train(rank, world_size, group, data_dir, toml):
    out = {}
    for distribution in ("uniform", "pareto"):
        cfg = load_config(
            [
                "--config",
                toml,
                "--data.path",
                data_dir,
                "--data.train_range",
                "0:192",
                "--data.eval_range",
                "200:232",
                "--data.multi_hot_sizes",
                ",".join(map(str, MLPERF_SIZES)),
                "--data.multi_hot_distribution",
                distribution,
            ]
        )
        parts = build_parts(cfg, rank, world_size, group)
        with parts.data.train_batches() as loader:  # the bags the run below trains on
            bags = [_bags(batch) for batch in loader]
        losses = list(train_losses(cfg, parts, world_size).values())
        evaluation = evaluate(cfg, parts, context(rank, world_size, group))
        if world_size > 1:  # the global batch: the ranks' slices in rank order
            gathered = [None] * world_size
            dist.all_gather_object(gathered, bags)
            bags = [sum((g[step] for g in gathered), []) for step in range(len(bags))]
        out[distribution] = (bags, losses, evaluation, parts.embeddings.full_state_dict())
    return out


@pytest.fixture(scope="module")
def runs(dataset):
    return {w: run_distributed(_train, w, *dataset) for w in (1, 2, 4)}


@pytest.mark.parametrize("world_size", [2, 4])
@pytest.mark.parametrize("distribution", ["uniform", "pareto"])
def test_same_bags_and_training_at_every_world_size(runs, world_size, distribution):
    ref_bags, ref_losses, ref_eval, ref_tables = runs[1][distribution]
    bags, losses, evaluation, tables = runs[world_size][distribution]
    assert len(ref_bags) == 3 and all(len(step) == 24 for step in ref_bags)
    # every sample's bags have the MLPerf sizes
    assert [len(bag) for bag in ref_bags[0][0]] == MLPERF_SIZES
    assert bags == ref_bags
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        torch.tensor(evaluation), torch.tensor(ref_eval), rtol=1e-5, atol=1e-6
    )
    for name, state in ref_tables.items():
        torch.testing.assert_close(
            tables[name]["weight"], state["weight"], rtol=1e-5, atol=1e-5, msg=name
        )


def test_distributions_give_different_bags(runs):
    assert runs[1]["uniform"][0] != runs[1]["pareto"][0]


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--data.multi_hot_sizes", "1,2"],
            r"'data.multi_hot_sizes' has 2 sizes but embedding.tables lists 3 tables",
        ),
        (
            ["--data.multi_hot_sizes", "1,0,2"],
            r"'data.multi_hot_sizes' has 0 at position 1 \(table b\); sizes must be >= 1",
        ),
        (
            ["--data.multi_hot_sizes", "-3"],
            r"'data.multi_hot_sizes' has -3 at position 0 \(table a\)",
        ),
        (
            ["--data.multi_hot_distribution", "zipf"],
            r"'data.multi_hot_distribution' is 'zipf'; expected one of",
        ),
    ],
)
def test_bad_config_names_the_key(tmp_path, args, message):
    toml = tmp_path / "c.toml"
    toml.write_text(
        "".join(f'[[embedding.tables]]\nname = "{n}"\nnum_embeddings = 5\n' for n in "abc")
    )
    with pytest.raises(ConfigError, match=message):
        load_config(["--config", str(toml), *args])


def test_wrong_count_for_the_dataset_tables_names_the_key(dataset):
    data_dir, toml = dataset
    cfg = load_config(
        ["--config", toml, "--data.path", data_dir, "--data.multi_hot_sizes", "3,2,1"]
    )
    with pytest.raises(
        ConfigError, match=r"'data.multi_hot_sizes' has 3 sizes but there are 26 tables \(C1, C2"
    ):
        build_parts(cfg)
