"""Reading, overriding, checking, writing and hashing configs.

:func:`load` reads every schema (a run's :class:`~speechbs.config.Config`, a sweep
recipe's :class:`~speechbs.sweep.config.SweepConfig`); :func:`load_config` and
:func:`config_from_toml` are its uses for a run. Recipes are data: TOML tables that
mirror the dataclass tree. Nothing is evaluated. A value is checked against the field's
type annotation and an unknown key is an error that lists the keys allowed there.

What a schema class may declare for the loader (class attributes, not fields):

- ``ALIASES``: keys a recipe may write in other units, e.g. ``BatchConfig.ALIASES``
  maps ``minutes`` to ``seconds`` x 60 (:class:`~speechbs.config.Alias`);
- ``REQUIRED_TABLES``: tables that must be present, with the message that explains why.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import hashlib
import inspect
import json
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from speechbs.atomic import write_text
from speechbs.config import Alias, Config, ModelConfig
from speechbs.errors import ConfigError
from speechbs.models.sizes import SIZES
from speechbs.textio import read_text

T = TypeVar("T")


def load(schema: type[T], path: str | Path | None = None, overrides: Sequence[str] = (), *,
         text: str | None = None, source: str | None = None) -> T:
    """Build dataclass ``schema`` from its defaults, a TOML file or text, and ``--set`` overrides.

    The one way a config is read, for every schema (a run's :class:`Config`, a sweep recipe):
    ``path`` (a recipe) or ``text`` (e.g. the TOML saved in a checkpoint) is parsed, each
    ``section.key=value`` of ``overrides`` replaces what it names, each table's aliases
    (``ALIASES`` on its class, e.g. ``batch.minutes``) become their fields, and the tree is
    checked against the type annotations while it is built, lists of tables
    (``[[finetune]]``) included. Every error is a one-line :class:`ConfigError` that starts
    with ``source`` (default: the path, or ``config``) and names the key.
    """
    if path is not None and text is not None:
        raise TypeError("give load() a path or a text, not both")
    source = source or (str(path) if path is not None else "config")
    tree: dict[str, Any] = {}
    if path is not None:
        tree = read_toml(path)
    elif text is not None:
        try:
            tree = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source} is not valid TOML: {exc}") from None
    if overrides:
        source += " with --set"
    _apply_overrides(tree, overrides)
    return _build(schema, tree, prefix="", source=source)


def load_config(recipe: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Build a run's config from defaults, an optional TOML recipe and ``key=value`` overrides."""
    return load(Config, recipe, overrides)


def config_from_toml(text: str, source: str, overrides: Sequence[str] = ()) -> Config:
    """Rebuild a run's config from TOML text, e.g. the ``config_toml`` saved in a checkpoint."""
    return load(Config, overrides=overrides, text=text, source=source)


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"recipe {path} is a directory; give the path of a .toml file")
    if not path.is_file():
        raise ConfigError(f"recipe {path} does not exist (give a path to a .toml file)")
    try:
        return tomllib.loads(read_text(path, "recipe"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"recipe {path} is not valid TOML: {exc}") from None


_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def toml_str(value: Any) -> str:
    """``value`` as a TOML basic string, which ``tomllib`` reads back equal whatever it holds.

    ``"`` and ``\\`` are escaped, control characters become their short escape or ``\\uXXXX``,
    and every other character is written as itself (UTF-8 in the file). Not ``json.dumps``: JSON
    writes a character beyond U+FFFF (an emoji) as a surrogate pair ``\\ud83d\\ude00``, which TOML
    refuses, so a run name with an emoji made its ``config.toml`` unreadable. Used for ``--set``
    values and for every string of a dumped config.
    """
    text = str(value)
    out = []
    for char in text:
        code = ord(char)
        if char in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[char])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        elif 0xD800 <= code <= 0xDFFF:  # a lone surrogate (an undecodable file name byte) has no TOML form
            raise ConfigError(f"{text!r} holds the unpaired surrogate U+{code:04X}, which TOML cannot write; "
                              f"rename the file or value to valid Unicode")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def parse_override(item: str) -> tuple[str, Any]:
    """``batch.seconds=600`` -> ("batch.seconds", 600). Values are TOML; bare words are strings."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. --set batch.seconds=600")
    key, raw = item.split("=", 1)
    key, raw = key.strip(), raw.strip()
    if not key:
        raise ConfigError(f"--set {item!r}: the key before '=' is empty")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word such as `crop=shortest` or a path
    return key, value


def _apply_overrides(tree: dict[str, Any], overrides: Sequence[str]) -> None:
    """Write each ``section.key=value`` into ``tree``, making the sections it names."""
    for item in overrides:
        key, value = parse_override(item)
        parts = key.split(".")
        node = tree
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = value


def _build(cls: type[T], values: dict[str, Any], *, prefix: str, source: str) -> T:
    """Instantiate dataclass ``cls`` from a nested dict, checking keys and types."""
    for key, message in getattr(cls, "REQUIRED_TABLES", {}).items():
        if key not in values:
            raise ConfigError(f"{source}: {message}")
    values = _resolve_aliases(cls, values, prefix, source)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            allowed = [*fields, *getattr(cls, "ALIASES", {})]
            raise ConfigError(_unknown_key_message(f"{prefix}{key}", key, allowed, prefix, source))
        kwargs[key] = _build_value(f"{prefix}{key}", hints[key], value, source)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {_in_list_item(exc, prefix)}") from None


def _build_value(key: str, hint: Any, value: Any, source: str) -> Any:
    """One field's value: a table, a list of tables (``[[key]]``), the model section, or a plain value."""
    if hint is ModelConfig or dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} is a section; write [{key}] with keys under it")
        if hint is ModelConfig:
            return build_model_config(value, prefix=f"{key}.", source=source)
        return _build(hint, value, prefix=f"{key}.", source=source)
    item_cls = _table_list_item(hint)
    if item_cls is not None:
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            raise ConfigError(f"{source}: {key} must be written as [[{key}]] tables")
        return [_build(item_cls, item, prefix=f"{key}[{i}].", source=source) for i, item in enumerate(value)]
    return check_value(key, hint, value, source)


def _table_list_item(hint: Any) -> type | None:
    """``FinetuneSpec`` for ``list[FinetuneSpec]``: a field written as ``[[table]]`` items; else None."""
    args = get_args(hint)
    if get_origin(hint) is list and len(args) == 1 and dataclasses.is_dataclass(args[0]):
        return args[0]
    return None


def _resolve_aliases(cls: type, values: dict[str, Any], prefix: str, source: str) -> dict[str, Any]:
    """Replace each alias of ``cls.ALIASES`` (``minutes``) by its field (``seconds``), scaled."""
    aliases: dict[str, Alias] = getattr(cls, "ALIASES", {})
    if not any(alias in values for alias in aliases):
        return values
    values = dict(values)
    hints = typing.get_type_hints(cls)
    for alias, (canonical, factor) in aliases.items():
        if alias not in values:
            continue
        if canonical in values:
            raise ConfigError(f"{source}: both {prefix}{alias} and {prefix}{canonical} are set; give one of them")
        value = check_value(f"{prefix}{alias}", hints[canonical], values.pop(alias), source)
        values[canonical] = [v * factor for v in value] if isinstance(value, list) else value * factor
    return values


def _in_list_item(exc: ConfigError, prefix: str) -> str:
    """The message of a failed check, naming the ``[[table]]`` item it failed in.

    A list item's checks name their keys by table (``finetune.recipe``); the loader knows
    which item it is building (``prefix`` = ``finetune[1].``) and says so: ``finetune[1].recipe``.
    """
    table = prefix.rsplit("[", 1)[0]
    if "[" not in prefix or not exc.key.startswith(f"{table}."):
        return str(exc)
    return f"{prefix}{exc.key[len(table) + 1:]}{str(exc)[len(exc.key):]}"


def build_model_config(values: dict[str, Any], *, prefix: str, source: str) -> ModelConfig:
    """``[model]``: name and size pick the architecture's defaults; other keys override its fields."""
    values = dict(values)
    values.pop("arch", None)  # never a TOML key; tolerate a hand-edited dump
    name = check_value(f"{prefix}name", typing.get_type_hints(ModelConfig)["name"],
                       values.pop("name", ModelConfig.name), source)
    size = check_value(f"{prefix}size", typing.get_type_hints(ModelConfig)["size"],
                       values.pop("size", ModelConfig.size), source)
    sizes = SIZES[name]
    if size not in sizes:
        raise ConfigError(f"{source}: {prefix}size = {size!r} is not defined for {name}; "
                          f"choose one of {', '.join(sizes)}")
    defaults = sizes[size]()
    arch_fields = {f.name: f for f in dataclasses.fields(defaults) if f.init}
    hints = typing.get_type_hints(type(defaults))
    overrides = {}
    for key, value in values.items():
        if key not in arch_fields:
            allowed = ["name", "size", *arch_fields]
            raise ConfigError(_unknown_key_message(f"{prefix}{key}", key, allowed, prefix, source))
        overrides[key] = check_value(f"{prefix}{key}", hints[key], value, source)
    try:
        arch = dataclasses.replace(defaults, **overrides)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return ModelConfig(name=name, size=size, arch=arch)


def _unknown_key_message(full: str, key: str, allowed: list[str], prefix: str, source: str) -> str:
    table = prefix.rstrip(".")
    if not table:
        where = "the top level"
    elif table.endswith("]"):  # an item of a list of tables, finetune[1]
        where = f"[[{table.rsplit('[', 1)[0]}]]"
    else:
        where = f"[{table}]"
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" Did you mean {prefix}{close[0]}?" if close else ""
    return f"{source}: unknown key {full!r}. Allowed in {where}: {', '.join(allowed)}.{hint}"


def check_value(key: str, hint: Any, value: Any, source: str) -> Any:
    """Return ``value`` converted to ``hint`` (int -> float only), or raise naming the key."""
    origin = get_origin(hint)
    if origin is Literal:
        allowed = get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{source}: {key} = {value!r} is not allowed; "
                              f"choose one of {', '.join(repr(a) for a in allowed)}")
        return value
    if origin in (typing.Union, types.UnionType):
        for option in get_args(hint):
            if option is type(None) and value is None:
                return None
            try:
                return check_value(key, option, value, source)
            except ConfigError:
                continue
        raise ConfigError(f"{source}: {key} = {value!r} has the wrong type; expected {_type_name(hint)}")
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key} must be a list ({_type_name(hint)}), got {value!r}")
        (item_hint, *_rest) = get_args(hint) or (Any,)
        items = [check_value(f"{key}[{i}]", item_hint, v, source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
    if hint in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{source}: {key} must be a number ({hint.__name__}), got {value!r}")
    if not isinstance(value, hint):
        quote = (f"; a bare {value!r} is a TOML {type(value).__name__}: for the text, quote it "
                 f"(--set {key}='\"{value}\"', or {key} = \"{value}\" in a recipe)"
                 if hint is str and isinstance(value, (bool, int, float)) else "")
        raise ConfigError(f"{source}: {key} must be {_type_name(hint)}, got {value!r} ({type(value).__name__}){quote}")
    return value


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict; the model's ``arch`` fields are flattened into ``model``."""
    tree = dataclasses.asdict(cfg)
    model = tree.get("model")
    if isinstance(model, dict) and "arch" in model:
        arch = model.pop("arch") or {}
        model.update(arch)
    return tree


def dump_toml(cfg: Config) -> str:
    """The resolved config as TOML (every field, defaults included)."""
    lines: list[str] = []
    _dump_table(to_dict(cfg), [], lines)
    return "\n".join(lines).strip() + "\n"


def _dump_table(table: dict[str, Any], path: list[str], lines: list[str]) -> None:
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
    if path and scalars:
        lines.append(f"\n[{'.'.join(path)}]")
    for key, value in scalars.items():
        lines.append(f"{key} = {_toml_value(value)}")
    for key, value in table.items():
        if isinstance(value, dict):
            _dump_table(value, [*path, key], lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return toml_str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} to TOML")


def config_hash(cfg: Config, length: int = 10) -> str:
    """Stable hash of the resolved config (key order and float formatting do not matter)."""
    canonical = json.dumps(to_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:length]


def save_config(cfg: Config, run_dir: str | Path) -> Path:
    path = Path(run_dir) / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text(path, f"# resolved config, hash {config_hash(cfg)}\n" + dump_toml(cfg))


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of dataclass ``cls`` or of the dataclasses it extends."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a subclass's docstring wins over its base's
        if klass is not object and dataclasses.is_dataclass(klass):
            docs.update(_own_field_docs(klass))
    return docs


def _own_field_docs(cls: type) -> dict[str, str]:
    try:
        tree = ast.parse(inspect.getsource(cls))
    except (OSError, TypeError):  # pragma: no cover - source not available
        return {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def describe(cfg: Any, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, value, doc) for every leaf field, in schema order."""
    rows: list[tuple[str, Any, str]] = []
    docs = field_docs(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(cfg, ModelConfig) and f.name == "arch":
            rows.extend(describe(value, prefix))
        elif dataclasses.is_dataclass(value):
            rows.extend(describe(value, f"{prefix}{f.name}."))
        else:
            rows.append((f"{prefix}{f.name}", value, docs.get(f.name, "")))
    return rows
