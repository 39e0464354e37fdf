"""Reading, overriding, checking, writing and hashing a :class:`~speechbs.config.Config`.

Recipes are data: TOML tables that mirror the dataclass tree. Nothing is
evaluated. A value is checked against the field's type annotation and an
unknown key is an error that lists the keys allowed there.
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
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from speechbs.atomic import write_text
from speechbs.config import ALIASES, Config, ModelConfig
from speechbs.errors import ConfigError
from speechbs.models.sizes import SIZES
from speechbs.textio import read_text


def load_config(recipe: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build a config from defaults, an optional TOML recipe and ``key=value`` overrides."""
    tree: dict[str, Any] = {}
    source = "config"
    if recipe is not None:
        source = str(recipe)
        tree = read_toml(recipe)
    if overrides:
        source += " with --set"
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(tree, key, value)
    tree = _apply_aliases(tree, source)
    return build(Config, tree, prefix="", source=source)


def config_from_toml(text: str, source: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Rebuild a config from TOML text, e.g. the ``config_toml`` saved in a checkpoint."""
    try:
        tree = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: the saved config is not valid TOML: {exc}") from None
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(tree, key, value)
    return build(Config, _apply_aliases(tree, source), prefix="", source=source)


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


def toml_str(value: Any) -> str:
    """A string value for ``--set`` that survives TOML parsing whatever it holds (paths, quotes)."""
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


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


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _apply_aliases(tree: dict[str, Any], source: str) -> dict[str, Any]:
    for alias, (canonical, factor) in ALIASES.items():
        a_section, a_key = alias.split(".")
        c_section, c_key = canonical.split(".")
        section = tree.get(a_section)
        if not isinstance(section, dict) or a_key not in section:
            continue
        value = section.pop(a_key)
        if c_key in tree.get(c_section, {}):
            raise ConfigError(f"{source}: both {alias} and {canonical} are set; give one of them")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {alias} must be a number, got {value!r}")
        tree.setdefault(c_section, {})[c_key] = value * factor
    return tree


def build(cls: type, values: dict[str, Any], *, prefix: str, source: str) -> Any:
    """Instantiate dataclass ``cls`` from a nested dict, checking keys and types."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(_unknown_key_message(full, key, list(fields), prefix, source))
        hint = hints[key]
        if hint is ModelConfig:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {full} is a section; write [{full}] with keys under it")
            kwargs[key] = build_model_config(value, prefix=f"{full}.", source=source)
        elif dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {full} is a section; write [{full}] with keys under it")
            kwargs[key] = build(hint, value, prefix=f"{full}.", source=source)
        else:
            kwargs[key] = check_value(full, hint, value, source)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


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
    where = f"[{prefix.rstrip('.')}]" if prefix else "the top level"
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
        return json.dumps(value)  # a JSON string is a valid TOML basic string
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
