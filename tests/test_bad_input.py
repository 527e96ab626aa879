"""Bad input: the per-table out-of-range id policy ("error" / "modulo"), and dataset batches checked like
synthetic ones (NaN/inf dense, labels outside [0, 1]) with the file, row and byte offset named."""


import pytest
import torch
import torch.distributed as dist

import train
from config import ConfigError, load_config
from pipeline.batch import Batch, KeyedJagged
from pipeline.metrics import StageTimer
from pipeline.train_pipeline import SparseDistPipeline
from tests.dist_utils import run_distributed

TOML = """
[data]
num_dense = 3
zipf_exponent = 1.3
bag_min = 0
bag_max = 3
[model]
bottom_mlp = [8, 4]
top_mlp = [8]
[embedding]
dim = 4
replicate_below_bytes = 300
[[embedding.tables]]
name = "big"
num_embeddings = 37
out_of_range = "modulo"
[[embedding.tables]]
name = "shared"
num_embeddings = 23
pooling = "mean"
features = ["shared_a", "shared_b"]
[[embedding.tables]]
name = "small"
num_embeddings = 5
[[embedding.tables]]
name = "pinned"
num_embeddings = 29
placement = "row"
[optimizer]
sparse = "adam"
sparse_lr = 0.1
dense_lr = 0.01
[train]
steps = 4
global_batch_size = 16
"""


@pytest.fixture(scope="module")
def toml(tmp_path_factory):
    path = tmp_path_factory.mktemp("bad_input") / "small.toml"
    path.write_text(TOML)
    return str(path)


def _parts(toml, extra=(), rank=0, world_size=1, group=None):
    cfg = load_config(["--config", toml, *extra])
    return cfg, train.build(cfg, rank, world_size, torch.device("cpu"), group)


def _raw_ids(kjt: KeyedJagged, rows: dict[str, int], features: set[str], seed: int) -> KeyedJagged:
    """The same bags with every id of `features` moved up by k * rows (k in 0..3): id % rows is unchanged."""
    values = kjt.values.clone()
    n = kjt.batch_size
    gen = torch.Generator().manual_seed(seed)
    for f, key in enumerate(kjt.keys):
        lo, hi = int(kjt.offsets[f * n]), int(kjt.offsets[(f + 1) * n])
        if key in features:
            values[lo:hi] += rows[key] * torch.randint(0, 4, (hi - lo,), generator=gen)
    return KeyedJagged(values, kjt.offsets, kjt.keys)


# ---- out-of-range policy --------------------------------------------------------------------------------
def test_policy_resolution_and_validation(toml):
    _, parts = _parts(toml)
    assert {t.name: t.out_of_range for t in parts.tables} == {"big": "modulo", "shared": "error", "small": "error",
                                                              "pinned": "error"}
    _, parts = _parts(toml, ["--embedding.out_of_range", "modulo"])
    assert {t.out_of_range for t in parts.tables} == {"modulo"}  # "big" sets its own, the others inherit
    with pytest.raises(ConfigError, match=r"embedding.out_of_range.*'wrap'"):
        load_config(["--config", toml, "--embedding.out_of_range", "wrap"])


def test_error_names_table_feature_sample_and_id(toml):
    _, parts = _parts(toml)
    kjt = KeyedJagged.from_lists({"big": [[1], [2], [3]], "shared_a": [[0], [], [4]], "shared_b": [[1], [2, 23], [0]],
                                  "small": [[0], [1], [2]], "pinned": [[0], [1], [2]]})
    with pytest.raises(ValueError, match=r"^feature 'shared_b' \(table 'shared', 23 rows\): sample 1 has id 23 "
                                         r"outside \[0, 23\) \(out_of_range='error'"):
        parts.embeddings.input_dist(kjt)
    kjt.values[kjt.values.tolist().index(23)] = 4  # fixed; now a negative id in the "modulo" table
    parts.embeddings.input_dist(kjt)
    kjt.values[2] = -3
    with pytest.raises(ValueError, match=r"^feature 'big' \(table 'big', 37 rows\): sample 2 has negative id -3 "
                                         r"\(an error under every out_of_range policy\)"):
        parts.embeddings.input_dist(kjt)
    kjt.values[2] = 37 * 5 + 3  # modulo table: accepted as 3
    assert parts.embeddings.check_ids(kjt).values[2] == 3
    assert kjt.values[2] == 37 * 5 + 3  # the caller's batch is left as it was


def _modulo_case(rank, world_size, group, toml, steps):
    """Train `steps` steps on ids moved out of range under "modulo" and on the wrapped ids under "error";
    returns both runs' (losses, full state, dense state, eval pooled output)."""
    runs = []
    for extra, raw in ((["--embedding.out_of_range", "modulo"], True), ([], False)):
        cfg, parts = _parts(toml, extra, rank, world_size, group)
        rows = {f: t.num_embeddings for t in parts.tables for f in t.features}
        host = list(train.local_batches(parts.source, cfg.train.global_batch_size, rank, world_size, steps + 1, 0))
        if raw:
            host = [Batch(b.dense, b.labels, _raw_ids(b.sparse, rows, set(rows), seed=step * 16 + rank))
                    for step, b in enumerate(host)]
            assert any(bool((b.sparse.values >= 23).any()) for b in host)  # really out of range
        train_batches, eval_batch = host[:steps], host[steps]
        losses = []
        for batch, sd in SparseDistPipeline(train_batches, parts.embeddings.input_dist):
            loss = train.train_step(parts, batch, sd, StageTimer(torch.device("cpu")))
            if world_size > 1:
                dist.all_reduce(loss)
            losses.append(float(loss))
        with torch.no_grad():  # eval goes through the same input path
            pooled = parts.embeddings(eval_batch.sparse)
        dense = {k: v.clone() for k, v in getattr(parts.model, "module", parts.model).state_dict().items()}
        runs.append((losses, parts.embeddings.full_state_dict(), dense, pooled))
    return runs


@pytest.mark.parametrize("world_size", [1, 2])
def test_modulo_trains_exactly_like_wrapped_ids(toml, world_size):
    (losses_m, full_m, dense_m, pooled_m), (losses_w, full_w, dense_w, pooled_w) = run_distributed(
        _modulo_case, world_size, toml, 4)
    assert losses_m == losses_w
    assert torch.equal(pooled_m, pooled_w)
    for name, state in full_w.items():
        for key, value in state.items():
            assert torch.equal(full_m[name][key], value), (name, key)
    for key, value in dense_w.items():
        assert torch.equal(dense_m[key], value), key
