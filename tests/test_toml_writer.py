"""The TOML writer (configio.toml_str, dump_toml): every string reads back equal through tomllib.

json.dumps used to write the strings: it escapes a character beyond U+FFFF (an emoji) as a
surrogate pair, which TOML refuses, so a run name with an emoji made config.toml unreadable.
"""

from __future__ import annotations

import tomllib

import pytest

from speechbs.configio import config_from_toml, dump_toml, load_config, parse_override, toml_str
from speechbs.errors import ConfigError

TRICKY = ["run 😀 emoji", 'a "quoted" name', "C:\\data\\run\\", "tab\there", "line\nbreak\r\n",
          "\ufeffBOM first", "bell\x07 del\x7f nul\x00 esc\x1b", "é ü 中文 𝄞", "",
          "'single' and \"\"\" triple", "\\u0041 not an escape"]


@pytest.mark.parametrize("text", TRICKY)
def test_toml_str_round_trips(text):
    assert tomllib.loads(f"v = {toml_str(text)}")["v"] == text
    assert parse_override(f"run.name={toml_str(text)}") == ("run.name", text)


def test_non_bmp_and_other_characters_are_written_literally():
    assert toml_str("😀é") == '"😀é"'
    assert toml_str("\x01\t") == '"\\u0001\\t"'


def test_a_dumped_config_with_tricky_strings_reads_back():
    for text in TRICKY:
        cfg = load_config(None, [f"run.name={toml_str(text)}", f"data.train_manifest={toml_str(text + '.tsv')}"])
        back = config_from_toml(dump_toml(cfg), "test")
        assert back.run.name == text and back.data.train_manifest == text + ".tsv"
        assert tomllib.loads(dump_toml(cfg))["run"]["name"] == text


def test_a_lone_surrogate_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="surrogate U\\+DCFF"):
        toml_str("bad\udcffname")
