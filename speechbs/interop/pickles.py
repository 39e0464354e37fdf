"""Reading another toolkit's pickled checkpoint without running any of its code (and without the toolkit).

fairseq checkpoints are ``torch.save`` pickles that may name classes of fairseq and its
dependencies: ``argparse.Namespace`` (the ``args`` of older checkpoints), omegaconf's
``DictConfig`` (the ``cfg`` of some), fairseq's ``Dictionary`` (HuBERT's ``task_state``), its
meters, numpy scalars. ``torch.load(weights_only=True)`` refuses those; full unpickling would
import fairseq and omegaconf and run whatever the file names.

:func:`load_foreign` unpickles with an allowlist instead: tensors are rebuilt by torch's own
rebuild functions, and every other class the file names becomes an inert :class:`Stand`, a
record of the class's dotted name and the arguments and state the pickle gave it. Nothing is
imported or called but those torch functions, ``collections.OrderedDict`` and a few builtin
containers, so no code from the file runs (the guarantee of ``weights_only``, the same reason).
:func:`plain` then turns the records into dicts, lists and scalars: an omegaconf container
into its content, a ``Namespace`` into its attributes, a ``Dictionary`` into its fields.
"""

from __future__ import annotations

import collections
import pickle
import re
import types
from pathlib import Path
from typing import Any

import torch

from speechbs.errors import DataError

_TORCH_CALLABLES = {
    "torch._utils": ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
                     "_rebuild_parameter_with_state", "_rebuild_device_tensor_from_numpy"),
    "torch": ("Size",),
}
"""Functions a checkpoint may call: torch's tensor rebuilders (storages come through torch.load itself)."""
_BUILTINS = {"set": set, "frozenset": frozenset, "list": list, "dict": dict, "tuple": tuple,
             "bytearray": bytearray, "complex": complex, "slice": slice, "object": object}


class Stand:
    """An object of a class a foreign pickle names, never imported: its name and what built it."""

    global_name = "?"
    """The dotted name of the class (or function) in the pickle, e.g. ``fairseq.data.dictionary.Dictionary``."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Stand:
        obj = object.__new__(cls)
        obj.args, obj.state, obj.items, obj.values = args, None, {}, []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass  # what the pickle passed is kept by __new__

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:  # a dict subclass's items
        self.items[key] = value

    def append(self, value: Any) -> None:  # a list subclass's items
        self.values.append(value)

    def extend(self, values: Any) -> None:
        self.values.extend(values)

    def __repr__(self) -> str:
        return f"<{self.global_name}>"


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """``copyreg._reconstructor`` (protocol 0/1 objects) for stand-ins only."""
    if isinstance(cls, type) and issubclass(cls, Stand):
        return cls()
    raise pickle.UnpicklingError(f"refusing to rebuild {cls!r} from {base!r}")


class _Unpickler(pickle.Unpickler):
    """A pickle reader whose ``find_class`` gives torch's rebuild functions, builtin containers or stand-ins."""

    stands: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if name in _TORCH_CALLABLES.get(module, ()):
            return getattr(torch if module == "torch" else torch._utils, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module in ("builtins", "__builtin__") and name in _BUILTINS:
            return _BUILTINS[name]
        if module == "copyreg" and name == "_reconstructor":
            return _reconstructor
        full = f"{module}.{name}"
        if full not in self.stands:
            self.stands[full] = type(f"Stand[{full}]", (Stand,), {"global_name": full})
        return self.stands[full]


def _load(file: Any, **kwargs: Any) -> Any:
    return _Unpickler(file, **kwargs).load()


# torch.load reads a legacy (pre-1.6) file's header with ``pickle_module.load``: the same allowlist there.
_PICKLE_MODULE = types.SimpleNamespace(Unpickler=_Unpickler, load=_load, __name__="speechbs_foreign_pickle")


def load_foreign(path: str | Path) -> Any:
    """The contents of a torch pickle, every foreign class a :class:`Stand` (no code of the file runs)."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_PICKLE_MODULE)
    except Exception as exc:  # noqa: BLE001 - a corrupt or non-torch file: say which and why, on one line
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
        raise DataError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {first[:200]}); is it a "
                        f"PyTorch checkpoint file?") from None


def plain(obj: Any) -> Any:
    """``obj`` with every :class:`Stand` (and container of them) turned into dicts, lists and scalars."""
    if isinstance(obj, torch.Tensor) or obj is None or isinstance(obj, (str, bytes, int, float, bool)):
        return obj
    if isinstance(obj, dict):
        return {key: plain(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [plain(value) for value in obj]
    if isinstance(obj, Stand):
        return _plain_stand(obj)
    return obj


def _plain_stand(obj: Stand) -> Any:
    name, state = obj.global_name, obj.state
    if name.startswith("omegaconf.") and isinstance(state, dict) and "_content" in state:
        return plain(state["_content"])  # DictConfig / ListConfig
    if name.startswith("omegaconf.nodes.") and isinstance(state, dict) and "_val" in state:
        return plain(state["_val"])  # a value node
    if isinstance(state, dict):  # an ordinary object (argparse.Namespace, fairseq's Dictionary): its attributes
        return {key: plain(value) for key, value in state.items()}
    if obj.items:
        return {key: plain(value) for key, value in obj.items.items()}
    if obj.values:
        return [plain(value) for value in obj.values]
    if len(obj.args) == 1 and isinstance(obj.args[0], (str, int, float, bool)):
        return obj.args[0]  # an enum member, rebuilt from its value
    return {"__class__": name, "args": plain(list(obj.args)), "state": plain(state)}


_INTERPOLATION = re.compile(r"^\$\{([A-Za-z_][\w.]*)\}$")


def resolve_interpolations(tree: Any, root: Any | None = None) -> Any:
    """omegaconf's ``${a.b}`` strings (fairseq's ``II("task.label_rate")``) replaced by the value they name."""
    root = tree if root is None else root
    if isinstance(tree, dict):
        return {key: resolve_interpolations(value, root) for key, value in tree.items()}
    if isinstance(tree, list):
        return [resolve_interpolations(value, root) for value in tree]
    match = _INTERPOLATION.match(tree) if isinstance(tree, str) else None
    if match:
        value: Any = root
        for part in match.group(1).split("."):
            if not isinstance(value, dict) or part not in value:
                return tree
            value = value[part]
        return resolve_interpolations(value, root)
    return tree
