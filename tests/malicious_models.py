"""A catalogue of crafted skops model files, each built from a real fitted pipeline.

Every entry takes a genuine skops file (what ``fti train`` logs) and changes its
``schema.json`` or its members the way an attacker with registry write access would: a
payload node is planted as the pipeline's ``memory`` attribute, so building the pipeline
builds the payload. Code-running entries try to create ``marker`` (a path the test owns);
:func:`naive_load` shows each payload is live by loading the file the way a loader that
trusts the file's own type list does (``mlflow.sklearn.load_model`` with the model's
``skops_trusted_types``): the marker appears. fti's loaders must refuse every entry with the
marker never created.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------- schema node builders


def json_node(value: Any) -> dict[str, Any]:
    return {"__class__": "str", "__module__": "builtins", "__loader__": "JsonNode", "content": json.dumps(value),
            "is_json": True}


def tuple_node(*items: dict[str, Any]) -> dict[str, Any]:
    return {"__class__": "tuple", "__module__": "builtins", "__loader__": "TupleNode", "content": list(items)}


def list_node(*items: dict[str, Any]) -> dict[str, Any]:
    return {"__class__": "list", "__module__": "builtins", "__loader__": "ListNode", "content": list(items)}


def dict_node(**items: dict[str, Any]) -> dict[str, Any]:
    return {"__class__": "dict", "__module__": "builtins", "__loader__": "DictNode", "content": dict(items),
            "key_types": list_node(*[{"__class__": "str", "__module__": "builtins", "__loader__": "TypeNode"}
                                     for _ in items])}


def call(module: str, name: str, *args: dict[str, Any]) -> dict[str, Any]:
    """``module.name(*args)`` at load time (skops' ConstructorFromReduceNode)."""
    return {"__class__": name, "__module__": module, "__loader__": "ConstructorFromReduceNode",
            "content": tuple_node(*args)}


def function(module: str, name: str) -> dict[str, Any]:
    return {"__class__": name, "__module__": module, "__loader__": "FunctionNode"}


def touch_code(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').write('pwned')"


# ---------------------------------------------------------------- the catalogue


@dataclass(frozen=True)
class Crafted:
    name: str
    what: str
    # "load": naive_load runs the payload; "alloc": naive_load exhausts memory; "static": refused by the file
    # audit anyway; "build": only allow-listed types, refused once built (in the rehearsal child)
    live: str
    build: Callable[[bytes, Path], bytes]  # genuine skops bytes, marker -> crafted skops bytes


def _edit_schema(genuine: bytes, edit: Callable[[dict[str, Any]], None], *, drop: tuple[str, ...] = ()) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(genuine))
    schema = json.loads(src.read("schema.json"))
    edit(schema)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            if info.filename == "schema.json" or info.filename in drop:
                continue
            dst.writestr(info.filename, src.read(info.filename))
        dst.writestr("schema.json", json.dumps(schema))
    return out.getvalue()


def _plant(payload: Callable[[Path], dict[str, Any]]) -> Callable[[bytes, Path], bytes]:
    def build(genuine: bytes, marker: Path) -> bytes:
        def edit(schema: dict[str, Any]) -> None:
            schema["content"]["content"]["memory"] = payload(marker)
        return _edit_schema(genuine, edit)
    return build


def _npy_bomb(genuine: bytes, marker: Path) -> bytes:
    """One array member's header claims 2**40 float64 values (8 TiB) while holding a few bytes."""
    src = zipfile.ZipFile(io.BytesIO(genuine))
    member = next(n for n in src.namelist() if n.endswith(".npy"))
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (1099511627776,), }"
    header = header + " " * (63 - (10 + len(header)) % 64) + "\n"
    blob = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode("latin1") + b"\0" * 64
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, blob if info.filename == member else src.read(info.filename))
    return out.getvalue()


def _tree_out_of_bounds(genuine: bytes, marker: Path) -> bytes:
    """Only allow-listed types, but one tree node's child index points far outside its tree: scikit-learn
    would read out of bounds (or crash) at the first prediction."""
    import numpy as np

    src = zipfile.ZipFile(io.BytesIO(genuine))
    out = io.BytesIO()
    done = False
    with zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if not done and info.filename.endswith(".npy"):
                arr = np.load(io.BytesIO(data), allow_pickle=False)
                field = next((f for f in ("left", "left_child") if arr.dtype.names and f in arr.dtype.names), None)
                if field is not None and len(arr) > 1:
                    arr = arr.copy()
                    arr[0][field] = 10_000_000
                    buf = io.BytesIO()
                    np.save(buf, arr, allow_pickle=False)
                    data, done = buf.getvalue(), True
            dst.writestr(info.filename, data)
    if not done:
        raise ValueError("the genuine model has no tree to corrupt")
    return out.getvalue()


def _protocol_downgrade(genuine: bytes, marker: Path) -> bytes:
    def edit(schema: dict[str, Any]) -> None:
        schema["protocol"] = 0
    return _edit_schema(genuine, edit)


def _foreign_estimator(genuine: bytes, marker: Path) -> bytes:
    """A FunctionTransformer step whose func is exec: it would run the request's values at predict time."""
    def edit(schema: dict[str, Any]) -> None:
        step = {"__class__": "FunctionTransformer", "__module__": "sklearn.preprocessing._function_transformer",
                "__loader__": "ObjectNode",
                "content": dict_node(func=function("builtins", "exec"), validate=json_node(False),
                                     accept_sparse=json_node(False), check_inverse=json_node(False))}
        schema["content"]["content"]["memory"] = step
    return _edit_schema(genuine, edit)


def _partial_exec(genuine: bytes, marker: Path) -> bytes:
    """The shape a native-categorical HistGradientBoosting legitimately holds -- FunctionTransformer(func=
    functools.partial(...)) -- with exec in place of check_array: it would run code at predict time."""
    def edit(schema: dict[str, Any]) -> None:
        partial = {"__class__": "partial", "__module__": "functools", "__loader__": "PartialNode",
                   "content": {"func": function("builtins", "exec"), "args": tuple_node(json_node(touch_code(marker))),
                               "kwds": dict_node(), "namespace": dict_node()}}
        step = {"__class__": "FunctionTransformer", "__module__": "sklearn.preprocessing._function_transformer",
                "__loader__": "ObjectNode",
                "content": dict_node(func=partial, validate=json_node(False), accept_sparse=json_node(False),
                                     check_inverse=json_node(False))}
        schema["content"]["content"]["memory"] = step
    return _edit_schema(genuine, edit)


CATALOGUE: list[Crafted] = [
    Crafted("numpy-runstring", "numpy.testing._private.utils.runstring (exec under a numpy. name)", "load",
            _plant(lambda m: call("numpy.testing._private.utils", "runstring", json_node(touch_code(m)),
                                  dict_node()))),
    Crafted("builtins-exec", "builtins.exec", "load",
            _plant(lambda m: call("builtins", "exec", json_node(touch_code(m))))),
    Crafted("builtins-eval", "builtins.eval", "load",
            _plant(lambda m: call("builtins", "eval", json_node(f"__import__('pathlib').Path({str(m)!r}).touch()")))),
    Crafted("builtins-open", "builtins.open: a file the model chooses", "load",
            _plant(lambda m: call("builtins", "open", json_node(str(m)), json_node("w")))),
    Crafted("posix-system", "posix.system (os.system)", "load",
            _plant(lambda m: call("posix", "system", json_node(f"touch {m}")))),
    Crafted("subprocess", "subprocess.getoutput", "load",
            _plant(lambda m: call("subprocess", "getoutput", json_node(f"touch {m}")))),
    Crafted("operator-call", "operator.call(exec, code)", "load",
            _plant(lambda m: call("operator", "call", function("builtins", "exec"), json_node(touch_code(m))))),
    Crafted("functools-reduce", "functools.reduce(exec, [code, {}])", "load",
            _plant(lambda m: call("functools", "reduce", function("builtins", "exec"),
                                  list_node(json_node(touch_code(m)), dict_node())))),
    Crafted("importlib-chain", "operator.call(getattr(importlib.import_module('os'), 'system'), ...)", "load",
            _plant(lambda m: call("operator", "call",
                                  call("builtins", "getattr", call("importlib", "import_module", json_node("os")),
                                       json_node("system")),
                                  json_node(f"touch {m}")))),
    Crafted("nested-decode-exec", "exec(codecs.decode(<hex>, 'hex')): the code never appears in clear", "load",
            _plant(lambda m: call("builtins", "exec",
                                  call("codecs", "decode", json_node(touch_code(m).encode().hex()),
                                       json_node("hex"))))),
    Crafted("sklearn-run-script", "sklearn.utils._testing.assert_run_python_script_without_output", "load",
            _plant(lambda m: call("sklearn.utils._testing", "assert_run_python_script_without_output",
                                  json_node(touch_code(m))))),
    Crafted("numpy-save", "numpy.save: writes a file the model chooses", "load",
            _plant(lambda m: call("numpy", "save", json_node(str(m)), list_node()))),
    Crafted("scipy-savemat", "scipy.io.savemat: writes a file the model chooses", "load",
            _plant(lambda m: call("scipy.io", "savemat", json_node(str(m)), dict_node()))),
    Crafted("function-transformer-exec", "a FunctionTransformer step with func=exec (runs at predict)", "static",
            _foreign_estimator),
    Crafted("partial-exec", "FunctionTransformer(func=functools.partial(exec, code)): the allowed shape, another "
            "function", "static", _partial_exec),
    Crafted("tree-out-of-bounds", "a tree node pointing 10 million nodes past its tree", "build",
            _tree_out_of_bounds),
    Crafted("npy-header-bomb", "an array header declaring 8 TiB", "alloc", _npy_bomb),
    Crafted("protocol-downgrade", "skops protocol 0 (older, looser node classes)", "static", _protocol_downgrade),
]


def naive_load(path: Path) -> Any:
    """What a loader that trusts the file's own type list does (``mlflow.sklearn.load_model``)."""
    import skops.io

    return skops.io.load(path, trusted=skops.io.get_untrusted_types(file=path))


def write_model_dir(genuine_dir: Path, target: Path, skops_bytes: bytes) -> Path:
    """A copy of an MLflow model directory with its skops file replaced."""
    import shutil

    shutil.copytree(genuine_dir, target)
    (target / "model.skops").write_bytes(skops_bytes)
    return target


__all__ = ["CATALOGUE", "Crafted", "naive_load", "write_model_dir"]
