from pathlib import Path

import pytest

from speechbs.config import BatchConfig, Config
from speechbs.configio import (config_from_toml, config_hash, dump_toml, field_docs, load, load_config,
                               parse_override, save_config)
from speechbs.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_defaults_are_fairseq_base_batch():
    cfg = load_config()
    assert cfg.batch.seconds == 5600.0
    assert cfg.batch.max_device_seconds == 87.5


def test_recipe_and_overrides(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text("[batch]\nminutes = 10\n[run]\nseed = 3\n")
    cfg = load_config(recipe, ["run.seed=4", "batch.crop=shortest"])
    assert cfg.batch.seconds == 600.0
    assert cfg.run.seed == 4
    assert cfg.batch.crop == "shortest"


@pytest.mark.parametrize("override, words", [
    ("batch.secs=5", ["unknown key 'batch.secs'", "Did you mean batch.seconds"]),
    ("nosection.x=1", ["unknown key 'nosection'", "Allowed in the top level"]),
    ("batch.crop=foo", ["batch.crop", "'none', 'max', 'shortest'"]),
    ("batch.seconds=true", ["batch.seconds", "number"]),
    ("run.seed=1.5", ["run.seed", "int"]),
    ("batch.seconds=-1", ["batch.seconds", "> 0"]),
    ("batch", ["expected section.key=value"]),
    ("batch=3", ["batch is a section"]),
    ("finetune.best_metric=bleu", ["finetune.best_metric", "'wer', 'cer', 'loss'"]),
    ("train.compile=1", ["train.compile must be true or false"]),
    ("train.compile_num_lengths=0", ["train.compile_num_lengths", ">= 1"]),
    ('train.compile_backend="tvm"', ["train.compile_backend", "'inductor', 'aot_eager', 'eager'"]),
])
def test_bad_values_name_the_key(override, words):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    for word in words:
        assert word in str(err.value)


def test_compile_settings_without_compile_warn_that_they_do_nothing():
    with pytest.warns(UserWarning, match="no effect with train.compile = false"):
        load_config(None, ["train.compile_num_lengths=4"])


def test_minutes_and_seconds_together_is_an_error():
    with pytest.raises(ConfigError, match="both batch.minutes and batch.seconds"):
        load_config(None, ["batch.minutes=1", "batch.seconds=60"])


def test_aliases_are_declared_on_their_schema_and_scaled_once():
    assert BatchConfig.ALIASES["max_device_minutes"].field == "max_device_seconds"
    cfg = load(Config, overrides=["batch.max_device_minutes=0.5", "batch.minutes=2"])
    assert cfg.batch.max_device_seconds == 30.0 and cfg.batch.seconds == 120.0


def test_load_reads_text_and_names_its_source():
    cfg = load(Config, text="[batch]\nminutes = 2\n", source="config saved in x.pt")
    assert cfg.batch.seconds == 120.0
    assert config_from_toml("[run]\nseed = 5\n", "saved", ["run.seed=6"]).run.seed == 6
    with pytest.raises(ConfigError, match="config saved in x.pt is not valid TOML"):
        load(Config, text="[batch\n", source="config saved in x.pt")
    with pytest.raises(ConfigError, match="^saved with --set: unknown key 'run.sed'"):
        config_from_toml("", "saved", ["run.sed=1"])


def test_loading_a_recipe_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, speechbs.configio as c; c.load_config('recipes/wavlm/tiny_builtin.toml'); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_dump_reloads_to_the_same_config_and_hash(tmp_path):
    cfg = load_config(None, ["batch.seconds=150", "run.name=x y"])
    path = save_config(cfg, tmp_path / "run")
    again = load_config(path)
    assert again == cfg
    assert config_hash(again) == config_hash(cfg)
    assert dump_toml(again) == dump_toml(cfg)


def test_hash_changes_with_content():
    assert config_hash(Config()) != config_hash(load_config(None, ["batch.seconds=600"]))
    assert config_hash(Config()) == config_hash(Config())


def test_every_field_is_documented():
    import dataclasses

    from speechbs import config as config_module
    from speechbs.models.registry import MODELS

    schema = [obj for obj in vars(config_module).values()
              if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == config_module.__name__]
    for obj in schema + [entry.config_cls for entry in MODELS.values()]:  # model configs inherit fields
        docs = field_docs(obj)
        for f in dataclasses.fields(obj):
            assert docs.get(f.name), f"{obj.__name__}.{f.name} has no docstring"


def test_bare_word_override_is_a_string():
    assert parse_override("data.train_manifest=a/b.tsv") == ("data.train_manifest", "a/b.tsv")


def _is_sweep(path):
    return "[sweep]" in path.read_text().splitlines()


@pytest.mark.parametrize("recipe", [p for p in sorted(REPO.glob("recipes/**/*.toml")) if not _is_sweep(p)],
                         ids=lambda p: str(p.relative_to(REPO / "recipes")))
def test_every_recipe_loads(recipe):
    """Every training recipe (sweep recipes are planned by tests/sweep/test_plan.py)."""
    load_config(recipe)
