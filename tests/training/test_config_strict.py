"""Strict config: TOML types as written, numeric ranges, world-size checks, and train.py's command line
(--help, one-line errors with exit status 2, nothing created for a config that cannot run)."""

import os

import pytest

import train
from embedding import resolve_tables
from training.config import ConfigError, load_config
from training.config.validate import check_runnable, check_world


def _toml(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "text, message",
    [
        (
            '[embedding]\ndim = "16"\n',
            r"config key 'embedding.dim' expects int, got '16' \(a TOML string\) in config file .*c.toml",
        ),
        (
            "[train]\nbf16 = 1\n",
            r"config key 'train.bf16' expects bool, got 1 \(a TOML integer\) in config file",
        ),
        (
            '[model]\nbottom_mlp = [64, "16"]\n',
            r"config key 'model.bottom_mlp\[1\]' expects int, got '16' \(a TOML string\)",
        ),
        ("[train]\nsteps = 10.0\n", r"'train.steps' expects int, got 10.0 \(a TOML float\)"),
        ("[optimizer]\ndense_lr = nan\n", r"'optimizer.dense_lr' is nan; it must be a finite"),
    ],
)
def test_toml_values_of_the_wrong_type_name_key_type_and_file(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(["--config", _toml(tmp_path, text)])


def test_command_line_strings_parse_to_the_field_type(tmp_path):
    cfg = load_config(["--embedding.dim", "8", "--model.bottom_mlp", "32,8", "--train.bf16", "no"])
    assert (cfg.embedding.dim, cfg.model.bottom_mlp, cfg.train.bf16) == (8, [32, 8], False)
    assert load_config(["--optimizer.dense_lr", "1"]).optimizer.dense_lr == 1.0
    with pytest.raises(ConfigError, match=r"expects int, got 'x' \(from --embedding.dim\)$"):
        load_config(["--embedding.dim", "x"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--embedding.dim", "0"], "config key 'embedding.dim' is 0; it must be >= 1"),
        (["--embedding.dim", "-4"], "config key 'embedding.dim' is -4; it must be >= 1"),
        (["--optimizer.dense_lr", "-0.1"], "'optimizer.dense_lr' is -0.1; it must be >= 0"),
        (["--optimizer.beta2", "1"], r"'optimizer.beta2' is 1.0; it must be in \[0, 1\)"),
        (["--train.timeout_s", "0"], "'train.timeout_s' is 0.0; it must be > 0"),
        (["--eval.samples", "0"], "'eval.samples' is 0; it must be >= 1"),
        (["--run.log_every", "0"], "'run.log_every' is 0; it must be >= 1"),
        (["--data.epochs", "0"], "'data.epochs' is 0; it must be >= 1"),
        (["--train.fail_rank", "-1"], "'train.fail_rank' is -1; it must be >= 0"),
        (["--model.top_mlp", "8,0"], "'model.top_mlp' has 0 at position 1; sizes must be >= 1"),
        (
            ["--embedding.dim", "8"],
            r"'model.bottom_mlp' is \[64, 16\]; model.name 'dlrm' needs it to end with embedding.dim \(8\)",
        ),
    ],
)
def test_numeric_keys_out_of_range_name_key_and_value(argv, message):
    with pytest.raises(ConfigError, match=message):
        load_config(argv)


def test_table_keys_are_checked_with_their_table(tmp_path):
    table = '[[embedding.tables]]\nname = "t"\nnum_embeddings = 5\n'
    with pytest.raises(ConfigError, match=r"'embedding.tables\[0\].bag_min \(t\)' is -2"):
        load_config(["--config", _toml(tmp_path, table + "bag_min = -2\n")])
    with pytest.raises(ConfigError, match=r"\(t\): its bag length range is \[3, 1\]"):
        load_config(["--config", _toml(tmp_path, table + "bag_min = 3\n")])
    with pytest.raises(
        ConfigError, match=r"^config key 'embedding.tables\[0\].dim \(t\)' is -1; it must be >= 0$"
    ):
        load_config(["--config", _toml(tmp_path, table + "dim = -1\n")])


def test_a_table_dim_of_0_is_embedding_dim(tmp_path):
    tables = '[[embedding.tables]]\nname = "a"\nnum_embeddings = 5\ndim = 64\n'
    tables += '[[embedding.tables]]\nname = "b"\nnum_embeddings = 5\n'
    cfg = load_config(["--config", _toml(tmp_path, tables)])
    assert [t.dim for t in resolve_tables(cfg.embedding)] == [64, cfg.embedding.dim]
    # the models' common dim stays embedding.dim: DLRM's bottom MLP must still end with it
    with pytest.raises(ConfigError, match=r"needs it to end with embedding.dim \(16\)$"):
        load_config(["--config", _toml(tmp_path, tables), "--model.bottom_mlp", "[64]"])


def test_world_size_checks_name_the_key_and_the_world_size():
    cfg = load_config(["--train.fail_rank", "5", "--train.fail_at_step", "2"])
    check_world(cfg, 8)
    with pytest.raises(
        ConfigError,
        match=r"^config key 'train.fail_rank' is 5 but the world size is 2 \(ranks 0..1\)$",
    ):
        check_world(cfg, 2)
    with pytest.raises(ConfigError, match="'train.global_batch_size' is 256, not divisible by"):
        check_world(load_config([]), 3)
    with pytest.raises(ConfigError, match="^no embedding tables: give a config file"):
        check_runnable(load_config([]), 1)


def test_help_prints_every_key_with_type_default_and_doc(capsys):
    with pytest.raises(SystemExit) as exit_:
        train.main(["--config", "configs/tiny.toml", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python train.py")
    assert (
        "  --embedding.dim  int = 16 (must be >= 1)\n      embedding dimension of tables that set no dim"
        in out
    )
    assert (
        "    embedding.tables[].dim  int = 0 (must be >= 0)\n        this table's embedding dim"
        in out
    )
    assert "--optimizer.dense  'sgd' | 'adagrad' | 'adam' = 'adam'" in out
    assert "embedding.tables[].num_embeddings  int = 0" in out
    assert "--train.resume  str = ''" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "error: no embedding tables: give a config file"),
        (
            ["--config", "configs/tiny.toml", "--embedding.dim", "0"],
            "error: config key 'embedding.dim' is 0; it must be >= 1",
        ),
        (["--train.stepz", "3"], "error: unknown config key 'train.stepz'"),
    ],
)
def test_config_errors_print_one_line_exit_2_and_create_nothing(
    tmp_path, monkeypatch, capsys, argv, message
):
    root = os.getcwd()
    monkeypatch.chdir(tmp_path)
    argv = [os.path.join(root, a) if a.startswith("configs/") else a for a in argv]
    with pytest.raises(SystemExit) as exit_:
        train.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err
    assert os.listdir(tmp_path) == []  # no runs/default
