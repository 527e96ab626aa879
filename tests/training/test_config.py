"""Config tree: TOML + CLI precedence and errors that name the key."""

import pytest

from training.config import ConfigError, load_config


def write(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return str(path)


def test_precedence_cli_over_toml_over_defaults(tmp_path):
    path = write(
        tmp_path, "[train]\nsteps = 7\nglobal_batch_size = 64\n[model]\ntop_mlp = [5, 3]\n"
    )
    cfg = load_config(["--config", path, "--train.steps=9", "--model.bottom_mlp", "32,16"])
    assert cfg.train.steps == 9  # CLI wins
    assert cfg.train.global_batch_size == 64  # TOML wins over default
    assert cfg.model.top_mlp == [5, 3]
    assert cfg.model.bottom_mlp == [32, 16]
    assert cfg.eval.samples == 8192  # default


def test_tables_from_toml(tmp_path):
    path = write(
        tmp_path, '[[embedding.tables]]\nname = "u"\nnum_embeddings = 10\nfeatures = ["u1", "u2"]\n'
    )
    cfg = load_config(["--config", path, "--train.bf16", "false"])
    assert cfg.embedding.tables[0].features == ["u1", "u2"] and cfg.train.bf16 is False


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--train.stepz", "3"], "unknown config key 'train.stepz'"),
        (["--nosection.key", "3"], "unknown config key 'nosection.key'"),
        (["--train.steps", "three"], "config key 'train.steps' expects int, got 'three'"),
        (["--optimizer.sparse_lr", "fast"], "config key 'optimizer.sparse_lr' expects float"),
        (["--train.bf16", "maybe"], "config key 'train.bf16' expects bool"),
        (["--model.name", "bert"], "config key 'model.name' is 'bert'"),
        (["--train", "3"], "config key 'train' is a section"),
        (["--train.steps"], "option '--train.steps' needs a value"),
        (["train.steps", "3"], "unexpected argument 'train.steps'"),
        (
            ["--embedding.tables", "x"],
            "config key 'embedding.tables' can only be set in the TOML file",
        ),
        (["--config", "/nonexistent.toml"], "does not exist"),
        (
            ["--optimizer.lr_warmup_steps", "-1"],
            "config key 'optimizer.lr_warmup_steps' is -1; it must be >= 0",
        ),
        (
            ["--optimizer.warmup_steps", "5"],
            "config key 'optimizer.warmup_steps' is now called 'optimizer.lr_warmup_steps'",
        ),
        (["--optimizer.decay_steps", "-5"], "config key 'optimizer.decay_steps' is -5"),
        (
            ["--optimizer.decay_start", "10"],
            "config key 'optimizer.decay_start' sets a decay but optimizer.decay_steps is 0",
        ),
        (
            ["--optimizer.lr_end", "0.0001"],
            "config key 'optimizer.lr_end' sets a decay but optimizer.decay_steps is 0",
        ),
        (
            [
                "--optimizer.decay_steps",
                "5",
                "--optimizer.lr_warmup_steps",
                "10",
                "--optimizer.decay_start",
                "4",
            ],
            "config key 'optimizer.decay_start' is 4, before the warm-up ends (optimizer.lr_warmup_steps=10)",
        ),
        (
            ["--optimizer.decay_steps", "5", "--optimizer.lr_end", "0.01"],
            "config key 'optimizer.lr_end' is 0.01, above optimizer.dense_lr=0.001",
        ),
        (
            [
                "--optimizer.decay_steps",
                "5",
                "--optimizer.lr_end",
                "0.01",
                "--optimizer.dense_lr",
                "0.1",
                "--optimizer.sparse_lr",
                "0.005",
            ],
            "config key 'optimizer.lr_end' is 0.01, above optimizer.sparse_lr=0.005",
        ),
        (
            ["--optimizer.decay_steps", "5", "--optimizer.lr_end", "-0.1"],
            "config key 'optimizer.lr_end' is -0.1; it must be >= 0",
        ),
        (
            ["--optimizer.scale_lr_with_batch", "true"],
            "config key 'optimizer.reference_batch_size' must be > 0",
        ),
        (["--eval.every_epoch", "true"], "config key 'eval.every_epoch' needs data.path"),
        (
            ["--eval.every_epoch", "true", "--data.path", "d", "--eval.every", "5"],
            r"eval.every = 0; got data.path='d', eval.every=5",
        ),
    ],
)
def test_cli_errors_name_the_key(argv, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(argv)


@pytest.mark.parametrize(
    "toml, message",
    [
        ("[train]\nsteps = 'ten'\n", "config key 'train.steps' expects int, got 'ten'"),
        ("[train]\nspeed = 1\n", "unknown config key 'train.speed'"),
        (
            "[[embedding.tables]]\nname = 't'\nnum_embeddings = 3\nrows = 4\n",
            r"unknown config key 'embedding.tables\[0\].rows'",
        ),
        (
            "[[embedding.tables]]\nname = 't'\nnum_embeddings = 0\n",
            r"embedding.tables\[0\] \(t\): num_embeddings must be positive",
        ),
        (
            "[[embedding.tables]]\nname = 't'\nnum_embeddings = 3\npooling = 'max'\n",
            r"config key 'embedding.tables\[0\].pooling' is 'max'; expected one of \('sum', 'mean'\)",
        ),
        (
            "[optimizer]\nwarmup_steps = 3\n",
            "config key 'optimizer.warmup_steps' is now called 'optimizer.lr_warmup_steps'",
        ),
        ("[train\n", "not valid TOML"),
        # dynamic tables: each bad field named with its table
        (
            "[[embedding.tables]]\nname = 'u'\nnum_embeddings = 3\ndynamic = true\n",
            r"\(u\): a dynamic table needs 'capacity'",
        ),
        (
            "[[embedding.tables]]\nname = 'u'\nnum_embeddings = 3\ncapacity = 8\n",
            r"\(u\): 'capacity' applies to dynamic tables",
        ),
        (
            "[[embedding.tables]]\nname = 'u'\nnum_embeddings = 3\ndynamic = true\ncapacity = 8\nmax_capacity = 4\n",
            r"'max_capacity' \(4\) is below 'capacity' \(8\)",
        ),
        (
            "[[embedding.tables]]\nname = 'u'\nnum_embeddings = 3\ndynamic = true\ncapacity = 8\nload_factor = 1.0\n",
            r"\(u\): 'load_factor' must be in",
        ),
        (
            "[[embedding.tables]]\nname = 'u'\nnum_embeddings = 3\ndynamic = true\ncapacity = 8\nadmit_min_freq = 0\n",
            r"\(u\): need 'admit_min_freq' >= 1",
        ),
        (
            "[[embedding.tables]]\nname = 'u'\nnum_embeddings = 3\ndynamic = true\ncapacity = 8\nplacement = 'row'\n",
            r"\(u\): a dynamic table is sharded by key",
        ),
        (
            "[[embedding.tables]]\nname = 'u'\nnum_embeddings = 3\ndynamic = true\ncapacity = 8\n"
            "evict_when_full = true\nmax_capacity = 16\n",
            r"\(u\): 'evict_when_full' keeps the capacity fixed",
        ),
        (
            "[[embedding.tables]]\nname = 'u'\nnum_embeddings = 3\nhash_ids = true\n",
            r"\(u\): hash_ids makes 63-bit ids",
        ),
        # the host tier: a static table that is not replicated
        (
            "[[embedding.tables]]\nname = 'u'\nnum_embeddings = 3\ncache_rows = -1\n",
            r"\(u\): 'cache_rows' is -1; it must be >= 0, on a static table that is not replicated",
        ),
        (
            "[[embedding.tables]]\nname = 'u'\nnum_embeddings = 3\nplacement = 'replicated'\n"
            "cache_rows = 2\n",
            r"\(u\): 'cache_rows' is 2; it must be >= 0, on a static table",
        ),
        ("[export]\nsince_step = -1\n", "config key 'export.since_step' must be >= 0"),
        (
            "[train]\ninit_from = 'a'\nresume = 'auto'\n",
            "'train.init_from' and 'train.resume' exclude each other",
        ),
    ],
)
def test_toml_errors_name_the_key(tmp_path, toml, message):
    with pytest.raises(ConfigError, match=message):
        load_config(["--config", write(tmp_path, toml)])


def test_shipped_configs_load():
    import glob

    for path in glob.glob("configs/*.toml"):
        cfg = load_config(["--config", path])
        assert cfg.embedding.tables, path
