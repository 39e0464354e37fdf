"""The malloc settings apply on Linux/glibc and step aside for a user's own choice."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from speechbs.host_malloc import reason_to_skip


def test_applies_on_plain_linux() -> None:
    assert reason_to_skip({}, "linux") is None


@pytest.mark.parametrize("env,why", [
    ({"SPEECHBS_MALLOC_TUNING": "0"}, "SPEECHBS_MALLOC_TUNING=0"),
    ({"MALLOC_TRIM_THRESHOLD_": "0"}, "MALLOC_TRIM_THRESHOLD_ is set"),
    ({"MALLOC_MMAP_THRESHOLD_": "65536"}, "MALLOC_MMAP_THRESHOLD_ is set"),
    ({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}, "another allocator is preloaded"),
])
def test_steps_aside_for_the_users_choice(env: dict[str, str], why: str) -> None:
    assert reason_to_skip(env, "linux") == why


def test_not_on_other_systems() -> None:
    assert reason_to_skip({}, "darwin") == "not Linux"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt settings are glibc's")
def test_mallopt_accepts_the_settings() -> None:
    # In a fresh interpreter, so this test process keeps its own allocator settings.
    code = "from speechbs.host_malloc import tune_host_malloc as t; import sys; sys.exit(0 if t() else 1)"
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("MALLOC_") and key not in ("LD_PRELOAD", "SPEECHBS_MALLOC_TUNING")}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
