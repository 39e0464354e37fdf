"""Where numbers go: metrics.jsonl always, the console as plain lines in logs or a bar on a terminal."""

from __future__ import annotations

import io
import json

from speechbs.train.metrics import MetricsLogger


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(stream: io.StringIO, tmp_path) -> str:
    log = MetricsLogger(tmp_path, enabled=True, total_steps=10, log_every=5, tensorboard=False, stream=stream)
    for step in range(1, 11):
        log.log_step(step, {"loss": 1.0 / step, "lr": 1e-3, "noise_b_simple_s": float("nan")})
    log.log_step(10, {"loss": 0.5}, kind="valid")
    log.close()
    return stream.getvalue()


def test_logs_get_plain_lines_every_log_every_steps(tmp_path):
    out = run(io.StringIO(), tmp_path)
    lines = out.splitlines()
    assert [line.split(" |")[0] for line in lines[:2]] == ["step 5/10", "step 10/10"]
    assert "[valid] step 10" in lines[2] and "\r" not in out and "eta" in lines[0]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 11 and records[0]["noise_b_simple_s"] == "nan"  # NaN stays visible in JSON
    assert (tmp_path / "log.txt").read_text().count("step ") == 3


def test_a_terminal_gets_a_progress_bar_redrawn_every_step(tmp_path):
    out = run(Terminal(), tmp_path)
    assert out.count("% step ") == 10 and out.count("\r\033[K[") == 11  # 10 bars, then cleared for a message
    assert "[##########.........." in out and "[####################] 100%" in out
