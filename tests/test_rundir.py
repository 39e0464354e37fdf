import pytest

from speechbs.configio import load_config
from speechbs.errors import ConfigError
from speechbs.rundir import prepare_run_dir


def test_resume_accepts_a_longer_run_and_refuses_another_method(tmp_path):
    base = [f"run.output_dir={tmp_path}", "run.name=r", "model.size=tiny"]
    prepare_run_dir(load_config(None, base), world_size=1, is_main=True)
    # More steps, another cadence, another memory cap, compiled or not: the same run, continued.
    prepare_run_dir(load_config(None, [*base, "train.num_steps=9", "batch.max_device_seconds=30"]),
                    world_size=2, is_main=True)
    prepare_run_dir(load_config(None, [*base, "train.compile=true", "train.compile_num_lengths=4",
                                       'train.compile_backend="aot_eager"']), world_size=1, is_main=True)
    # Another batch or another architecture field is another experiment.
    with pytest.raises(ConfigError, match="batch.seconds, model.mask_prob differ"):
        prepare_run_dir(load_config(None, [*base, "batch.seconds=60", "model.mask_prob=0.5"]),
                        world_size=1, is_main=True)


def test_a_planned_change_needs_the_option_and_keeps_the_old_config(tmp_path):
    from speechbs.rundir import previous_config_path

    base = [f"run.output_dir={tmp_path}", "run.name=r", "model.size=tiny"]
    run_dir = prepare_run_dir(load_config(None, base), world_size=1, is_main=True)
    lower = load_config(None, [*base, "optim.lr=1e-4", "optim.clip_norm=1.0"])
    with pytest.raises(ConfigError, match=r"optim.clip_norm 0.0 -> 1.0, optim.lr 0.0005 -> 0.0001\); .*add "
                                          r"--allow-change optim.clip_norm --allow-change optim.lr"):
        prepare_run_dir(lower, world_size=1, is_main=True)
    with pytest.raises(ConfigError, match="--allow-change optim.clip_norm"):  # both must be allowed
        prepare_run_dir(lower, world_size=1, is_main=True, allow_changes=["optim.lr"])
    assert not previous_config_path(run_dir).exists()  # a refused resume writes nothing
    prepare_run_dir(lower, world_size=1, is_main=True, allow_changes=["optim.lr", "optim.clip_norm"])
    assert "lr = 0.0005" in (run_dir / "config.prev-1.toml").read_text()
    assert "lr = 0.0001" in (run_dir / "config.toml").read_text()
    # The option never opens batch, data or model fields.
    with pytest.raises(ConfigError, match="batch.seconds differ"):
        prepare_run_dir(load_config(None, [*base, "optim.lr=1e-4", "optim.clip_norm=1.0", "batch.seconds=60"]),
                        world_size=1, is_main=True, allow_changes=["batch.seconds"])


def test_allow_change_takes_only_planned_fields_and_restart_names_a_checkpoint(tmp_path):
    import argparse

    from speechbs.train.resume import add_arguments, options_from_args, resolve_checkpoint

    parser = argparse.ArgumentParser()
    parser.add_argument("recipe")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    add_arguments(parser)
    args = parser.parse_args(["r.toml", "--set", "optim.lr=1e-4", "--allow-change", "optim.lr,schedule.warmup_steps",
                              "--restart-from", "400"])
    options = options_from_args("pretrain", args)
    assert options.allow_changes == ("optim.lr", "schedule.warmup_steps") and options.restart_from == "400"
    assert options.command == ("pretrain", "r.toml", "--set", "optim.lr=1e-4")
    with pytest.raises(ConfigError, match="--allow-change optim.betas, model.mask_prob: a resume may change only"):
        options_from_args("pretrain", parser.parse_args(["r.toml", "--allow-change", "optim.betas",
                                                         "--allow-change", "model.mask_prob"]))
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    (ckpts / "step_00000400.pt").write_bytes(b"")
    assert resolve_checkpoint(tmp_path, "400") == (400, ckpts / "step_00000400.pt")
    assert resolve_checkpoint(tmp_path, "checkpoints/step_00000400.pt") == (400, ckpts / "step_00000400.pt")
    assert resolve_checkpoint(tmp_path, "0") == (0, None)
    with pytest.raises(ConfigError, match="holds no such checkpoint; it has steps 400"):
        resolve_checkpoint(tmp_path, "300")
    (tmp_path / "elsewhere.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match="not a checkpoint in"):
        resolve_checkpoint(tmp_path, str(tmp_path / "elsewhere.pt"))


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_pretrain_and_finetune_take_the_resume_options(command):
    import argparse
    import importlib

    module = importlib.import_module(f"speechbs.{command}")
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    args = parser.parse_args(["r.toml", "--allow-change", "optim.lr", "--restart-from", "2", "--backend", "gloo"])
    assert (args.allow_changes, args.restart_from) == (["optim.lr"], "2")
