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
