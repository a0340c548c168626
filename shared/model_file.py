"""Open a registered model's files without running code from them.

A model file is code: skops builds objects by importing the names written in the
file, and trusts every type the model's own ``MLmodel`` lists. So every stage that
loads a model (serving, hot reload, lineage recompute, ``fti predict-batch``,
``fti reproduce``, training's round trip and gate) goes through :func:`load_model_dir`,
which decides from fti's own source alone:

1. **Exact names.** Every node in ``schema.json`` is a pair (skops loader, dotted
   name); each pair must be in :data:`ALLOWED`, written out here in full. No prefixes
   (``numpy.testing._private.utils.runstring`` is ``exec`` and starts with ``numpy.``),
   no functions, methods, reduce or operator nodes: no pipeline fti builds needs one.
2. **Declared sizes.** Every ``.npy`` member must hold exactly the bytes its header
   declares, object dtypes are refused, and the unpacked archive is bounded.
3. **Memory.** The load is first rehearsed in a child process (forked from a clean helper, see :func:`rehearse`)
   under ``RLIMIT_AS`` (``memory_limit_mb``), so a file that asks for a huge allocation in a
   constructor, loops or crashes kills only the rehearsal.
4. **Integrity.** :func:`artifact_digest` over the model directory is recorded at
   training (``fti.artifact_sha256``) and compared at every load.

A refusal is :class:`ModelFileRefused`, whose message names the reason and what to do.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import yaml

SKOPS_PROTOCOL = 2  # skops 0.16 writes protocol 2; other protocols use other node classes
MAX_SCHEMA_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_UNPACKED_BYTES = 4 * 1024 * 1024 * 1024
MAX_NODES = 5_000_000

_BUILTIN_VALUES = frozenset({"builtins.str", "builtins.int", "builtins.float", "builtins.bool",
                             "builtins.NoneType", "builtins.complex"})
_NUMPY_SCALARS = frozenset({
    "numpy.bool", "numpy.bool_", "numpy.int8", "numpy.int16", "numpy.int32", "numpy.int64", "numpy.uint8",
    "numpy.uint16", "numpy.uint32", "numpy.uint64", "numpy.float16", "numpy.float32", "numpy.float64",
    "numpy.longdouble", "numpy.str_", "numpy.intp", "numpy.uintp"})

#: The estimators and internals of the pipelines fti trains (see ``docs/security.md``).
_SKLEARN_OBJECTS = frozenset({
    "sklearn.pipeline.Pipeline",
    "sklearn.compose._column_transformer.ColumnTransformer",
    "sklearn.impute._base.SimpleImputer",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.preprocessing._encoders.OneHotEncoder",
    "sklearn.preprocessing._encoders.OrdinalEncoder",
    "sklearn.preprocessing._data.RobustScaler",
    # HistGradientBoosting with categorical features keeps its own ColumnTransformer, whose numeric block
    # is FunctionTransformer(func=functools.partial(check_array, ...)): the one callable fti loads (below).
    "sklearn.preprocessing._function_transformer.FunctionTransformer",
    "sklearn.preprocessing._label.LabelBinarizer",
    "sklearn.preprocessing._label.LabelEncoder",
    # estimators
    "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.linear_model._stochastic_gradient.SGDClassifier",
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.ensemble._forest.RandomForestClassifier",
    "sklearn.ensemble._forest.ExtraTreesClassifier",
    "sklearn.ensemble._gb.GradientBoostingClassifier",
    "sklearn.ensemble._weight_boosting.AdaBoostClassifier",
    "sklearn.ensemble._bagging.BaggingClassifier",
    "sklearn.tree._classes.DecisionTreeClassifier",
    "sklearn.tree._classes.DecisionTreeRegressor",
    "sklearn.tree._classes.ExtraTreeClassifier",
    "sklearn.dummy.DummyClassifier",
    # regressors (model.task: regression)
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingRegressor",
    "sklearn.ensemble._forest.RandomForestRegressor",
    "sklearn.ensemble._forest.ExtraTreesRegressor",
    "sklearn.ensemble._gb.GradientBoostingRegressor",
    "sklearn.tree._classes.ExtraTreeRegressor",
    "sklearn.dummy.DummyRegressor",
    "sklearn.linear_model._base.LinearRegression",
    "sklearn.linear_model._ridge.Ridge",
    "sklearn.linear_model._coordinate_descent.Lasso",
    "sklearn.linear_model._coordinate_descent.ElasticNet",
    "sklearn.naive_bayes.GaussianNB",
    "sklearn.naive_bayes.BernoulliNB",
    "sklearn.neighbors._classification.KNeighborsClassifier",
    "sklearn.svm._classes.SVC",
    "sklearn.discriminant_analysis.LinearDiscriminantAnalysis",
    "sklearn.discriminant_analysis.QuadraticDiscriminantAnalysis",
    "sklearn.neural_network._multilayer_perceptron.MLPClassifier",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
    "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
    "sklearn._loss.link.Interval",
    "sklearn._loss.link.LogitLink",
    "sklearn._loss.link.MultinomialLogit",
    "sklearn._loss.link.IdentityLink",
    "sklearn._loss.loss.HalfBinomialLoss",
    "sklearn._loss.loss.HalfMultinomialLoss",
    "sklearn._loss.loss.HalfSquaredError",
    # fti's own transformers
    "shared.transformers.ModelInputCaster",
})

#: skops loader -> the exact dotted names it may build. Nothing else is ever constructed.
ALLOWED: dict[str, frozenset[str]] = {
    "ObjectNode": _SKLEARN_OBJECTS,
    "DictNode": frozenset({"builtins.dict"}),
    "ListNode": frozenset({"builtins.list"}),
    "TupleNode": frozenset({"builtins.tuple"}),
    "SliceNode": frozenset({"builtins.slice"}),
    "JsonNode": frozenset({"builtins.str"}),  # skops writes every JSON value under this one name
    "TypeNode": _BUILTIN_VALUES | _NUMPY_SCALARS,
    "DTypeNode": frozenset({"numpy.dtype"}),
    "NdArrayNode": frozenset({"numpy.ndarray"}) | _NUMPY_SCALARS,
    "TreeNode": frozenset({"sklearn.tree._tree.Tree"}),
    "LossNode": frozenset({"sklearn._loss._loss.CyHalfBinomialLoss", "sklearn._loss._loss.CyHalfMultinomialLoss",
                           "sklearn._loss._loss.CyHalfSquaredError"}),
    "RandomStateNode": frozenset({"numpy.random.mtrand.RandomState"}),
    "RandomGeneratorNode": frozenset({"numpy.random._generator.Generator"}),
    # Callables: exactly the ones a pipeline fti trains holds, and nothing that can run code or touch files:
    # check_array validates and converts an array; a partial of it only fixes its keyword arguments.
    "PartialNode": frozenset({"functools.partial"}),
    "FunctionNode": frozenset({"sklearn.utils.validation.check_array"}),
}


class ModelFileRefused(Exception):
    """The model's files are refused before any of their content is built; the message says why."""


class ModelFileTampered(ModelFileRefused):
    """The files differ from the digest the registry recorded at training."""


# ---------------------------------------------------------------------------- digest


# Written by MLflow into every download of a registered version (its name and version number), not
# logged with the model: a copy of a version registered under another number is the same model.
_DOWNLOAD_METADATA = frozenset({"registered_model_meta"})


def _digest_files(model_dir: Path) -> Iterator[Path]:
    for path in sorted(model_dir.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        if path.parent == model_dir and path.name in _DOWNLOAD_METADATA:
            continue
        yield path


def artifact_digest(model_dir: str | os.PathLike[str]) -> str:
    """sha256 over every file of a downloaded MLflow model directory (relative path and content).

    Covers ``MLmodel``, the skops file, the certificate and the environment fingerprint, so a
    swapped certificate is as visible as a swapped model."""
    root = Path(model_dir)
    outer = hashlib.sha256()
    for path in _digest_files(root):
        inner = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                inner.update(block)
        outer.update(f"{path.relative_to(root).as_posix()}\0{inner.hexdigest()}\n".encode())
    return outer.hexdigest()


# ---------------------------------------------------------------------------- audit


def _refuse(path: Path, why: str) -> ModelFileRefused:
    return ModelFileRefused(f"model file {path.name} refused: {why}")


def _strict_json(raw: bytes, path: Path) -> Any:
    def no_constant(token: str) -> Any:
        raise ValueError(f"non-JSON number {token}")

    def bounded_int(text: str) -> int:
        if len(text) > 40:
            raise ValueError("integer literal longer than 40 digits")
        return int(text)

    try:
        return json.loads(raw, parse_constant=no_constant, parse_int=bounded_int)
    except (ValueError, RecursionError) as exc:
        raise _refuse(path, f"schema.json is not a valid skops schema ({type(exc).__name__}: {str(exc)[:120]})"
                      ) from None


def _npy_declared_bytes(data: bytes) -> tuple[int, int]:
    """(header length, bytes the header declares) of one ``.npy`` member; refuses object dtypes."""
    import io

    import numpy as np
    from numpy.lib import format as npy

    buf = io.BytesIO(data)
    major, _minor = npy.read_magic(buf)
    reader = {1: npy.read_array_header_1_0, 2: npy.read_array_header_2_0}.get(major)
    if reader is None:
        raise ValueError(f"unsupported .npy version {major}")
    shape, _fortran, dtype = reader(buf, max_header_size=10_000)
    if dtype.hasobject:
        raise ValueError("object dtype (would need pickle)")
    count = 1
    for n in shape:
        count *= int(n)
    return buf.tell(), count * int(np.dtype(dtype).itemsize)


def audit(path: str | os.PathLike[str], *, max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_BYTES) -> list[str]:
    """Every dotted name the skops file at ``path`` would build, after checking each against :data:`ALLOWED`.

    Reads only the zip directory, ``schema.json`` and the ``.npy`` headers: nothing is imported
    or constructed. Raises :class:`ModelFileRefused` naming the first reason found."""
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise _refuse(path, f"not a skops archive ({type(exc).__name__})") from None
    with zf:
        infos = {i.filename: i for i in zf.infolist()}
        unpacked = sum(i.file_size for i in infos.values())
        if unpacked > max_unpacked_bytes:
            raise _refuse(path, f"it unpacks to {unpacked:,} bytes, above the limit of {max_unpacked_bytes:,}")
        schema_info = infos.get("schema.json")
        if schema_info is None:
            raise _refuse(path, "no schema.json")
        if schema_info.file_size > MAX_SCHEMA_BYTES:
            raise _refuse(path, f"schema.json is {schema_info.file_size:,} bytes (limit {MAX_SCHEMA_BYTES:,})")
        schema = _strict_json(zf.read("schema.json"), path)
        if not isinstance(schema, dict) or schema.get("protocol") != SKOPS_PROTOCOL or \
                isinstance(schema.get("protocol"), bool):
            raise _refuse(path, f"skops protocol {schema.get('protocol') if isinstance(schema, dict) else None!r} "
                                f"(fti reads protocol {SKOPS_PROTOCOL} only)")
        names: set[str] = set()
        arrays: list[str] = []
        _walk(schema, path, names, arrays)
        for member in arrays:
            info = infos.get(member)
            if info is None:
                raise _refuse(path, f"array member {member!r} is missing from the archive")
            data = zf.read(member)
            try:
                header, declared = _npy_declared_bytes(data)
            except ValueError as exc:
                raise _refuse(path, f"array {member!r}: {exc}") from None
            if header + declared != len(data):
                raise _refuse(path, f"array {member!r} declares {declared:,} bytes but holds {len(data) - header:,}")
    return sorted(names)


def _walk(schema: Any, path: Path, names: set[str], arrays: list[str]) -> None:
    """Iterative walk (a deep file cannot exhaust the stack); every object with a class is checked."""
    stack = [schema]
    seen = 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > MAX_NODES:
            raise _refuse(path, f"more than {MAX_NODES:,} nodes")
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        if "__class__" in node or "__module__" in node or "__loader__" in node:
            loader, module, cls = node.get("__loader__"), node.get("__module__"), node.get("__class__")
            if not all(isinstance(v, str) for v in (loader, module, cls)):
                raise _refuse(path, f"a node without a loader, module and class ({str(node)[:80]})")
            name = f"{module}.{cls}"
            allowed = ALLOWED.get(str(loader))
            if allowed is None:
                raise _refuse(path, f"it uses the skops loader {loader} for {name}, which no fti pipeline needs "
                                    "(methods, reduce and operator nodes are never loaded, functions only by "
                                    "exact name)")
            if name not in allowed:
                raise _refuse(path, f"{name} ({loader}) is not in fti's model allow-list "
                                    "(shared/model_file.py ALLOWED): only the types of the pipelines fti trains "
                                    "are ever built")
            names.add(name)
            if loader == "NdArrayNode" and node.get("type") == "numpy":
                member = node.get("file")
                if not isinstance(member, str):
                    raise _refuse(path, "an array node without its file")
                arrays.append(member)
        stack.extend(node.values())


# ---------------------------------------------------------------------------- load


def skops_file(model_dir: Path) -> Path:
    """The skops file of an MLflow sklearn model directory; refuses any other serialisation."""
    try:
        mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ModelFileRefused(f"model at {model_dir.name} has no readable MLmodel ({type(exc).__name__})"
                               ) from None
    flavor = ((mlmodel or {}).get("flavors") or {}).get("sklearn") or {}
    if flavor.get("serialization_format") != "skops":
        raise ModelFileRefused(f"model is saved as {flavor.get('serialization_format')!r}, not skops: fti loads "
                               "skops models only (pickle and cloudpickle run code on load)")
    name = str(flavor.get("pickled_model", "model.skops"))
    target = (model_dir / name).resolve()
    if target.parent != model_dir.resolve() or not target.is_file():
        raise ModelFileRefused(f"model file {name!r} named by MLmodel is not a file of the model directory")
    return target


def rehearse(path: Path, memory_limit_mb: int, *, timeout: float = 300.0, method: str | None = None) -> None:
    """Build the model once in a child process under ``RLIMIT_AS``; refuse it if that fails.

    The limit is the child's address space at the start plus ``memory_limit_mb``. That is exact only in a
    child whose heap holds no free room: memory the parent had freed but kept mapped (a long process's
    malloc heap, uncollected garbage) is reused by the build without growing the address space -- a CI run
    let a 200 MB model through a 64 MB rehearsal forked from the test process. So by default
    (``method="zygote"``) the child is forked from a clean helper, an interpreter started once per process
    that has only imported numpy, scikit-learn, skops and the allow-listed modules (see
    :class:`_Zygote`): the first rehearsal pays its start (about 3 s), later ones the build alone, and any
    thread may call it. ``method="fork"`` forks the caller (what the helper itself does; exact only in a
    clean caller); ``"spawn"`` starts ``python -m shared.model_file`` for this one build (and is what a
    platform without ``fork`` gets)."""
    if method is None:
        method = "zygote" if hasattr(os, "fork") else "spawn"
    logging.getLogger(__name__).debug("model rehearsal by %s", method)
    if method == "zygote":
        code, last = _ZYGOTE.rehearse(path, memory_limit_mb, timeout)
    elif method == "fork":
        code, last = _rehearse_forked(path, memory_limit_mb, timeout)
    else:
        code, last = _rehearse_spawned(path, memory_limit_mb, timeout)
    if code == 2:  # the child's own refusal (the structure of what it built)
        raise ModelFileRefused(f"model file {path.name} refused: {last.split(': ', 1)[-1][:300]}")
    if code == _TIMED_OUT:
        raise _timed_out(path, timeout)
    if code != 0:
        raise ModelFileRefused(f"model file {path.name} refused: building it under a {memory_limit_mb} MB memory "
                               f"limit failed ({last[:200]})")


_TIMED_OUT = 124


def _timed_out(path: Path, timeout: float) -> ModelFileRefused:
    return ModelFileRefused(f"model file {path.name} refused: building it took over {timeout:.0f}s")


def _clean_env() -> dict[str, str]:
    """A rehearsal interpreter's environment: no fti or MLflow settings, one thread per library."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FTI_", "MLFLOW_"))}
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _rehearse_spawned(path: Path, memory_limit_mb: int, timeout: float) -> tuple[int, str]:
    try:
        proc = subprocess.run([sys.executable, "-m", "shared.model_file", str(path), str(memory_limit_mb)],
                              env=_clean_env(), capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return _TIMED_OUT, "timed out"
    return proc.returncode, (proc.stdout.strip().splitlines() or proc.stderr.strip().splitlines() or ["killed"])[-1]


class _Zygote:
    """The clean helper the rehearsals are forked from: ``python -m shared.model_file --zygote``.

    One per process, started at the first rehearsal and kept until this process exits (its stdin closes,
    it leaves). Requests are one JSON line each way, one at a time under a lock; the helper forks a child
    per request (:func:`_rehearse_forked`, which also enforces the build's timeout). A helper that died,
    hung or answered nonsense is killed and started again once; if that fails too the model is refused
    (nothing is built in this process unrehearsed). A fork of this process starts its own helper."""

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner = 0
        self._ready = False
        self._hooked = False

    @property
    def pid(self) -> int | None:
        """The running helper's pid (for tests and logs), or None."""
        return self._proc.pid if self._proc is not None and self._owner == os.getpid() else None

    def rehearse(self, path: Path, memory_limit_mb: int, timeout: float) -> tuple[int, str]:
        request = json.dumps({"path": str(path), "limit": memory_limit_mb, "timeout": timeout}).encode() + b"\n"
        with self._lock:
            for attempt in (1, 2):
                try:
                    proc = self._started()
                    assert proc.stdin is not None
                    proc.stdin.write(request)
                    proc.stdin.flush()
                    reply = json.loads(self._line(proc, timeout + 60.0))
                    return int(reply["code"]), str(reply["message"])
                except (OSError, ValueError, KeyError, TypeError, TimeoutError) as exc:
                    logging.getLogger(__name__).warning("model rehearsal helper failed (%s: %s); %s",
                                                        type(exc).__name__, exc,
                                                        "starting it again" if attempt == 1 else "giving up")
                    self._stop()
        return 4, "the rehearsal helper process failed twice"

    def start(self) -> None:
        """Start the helper now without waiting for it (its imports overlap the caller's download)."""
        with self._lock:
            try:
                self._launched()
            except OSError as exc:  # the rehearsal itself will try again and say what failed
                logging.getLogger(__name__).warning("model rehearsal helper did not start: %s", exc)

    def _launched(self) -> subprocess.Popen[bytes]:
        if self._owner != os.getpid():  # a fork of the process that started it: leave the parent's alone
            self._proc = None
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self._stop()
        if not self._hooked:
            import atexit

            atexit.register(self.close)
            self._hooked = True
        proc = subprocess.Popen([sys.executable, "-m", "shared.model_file", "--zygote"], env=_clean_env(),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._proc, self._owner, self._ready = proc, os.getpid(), False
        return proc

    def _started(self) -> subprocess.Popen[bytes]:
        proc = self._launched()
        if not self._ready:
            if self._line(proc, 300.0) != b"ready":
                raise OSError("the rehearsal helper did not start")
            self._ready = True
        return proc

    @staticmethod
    def _line(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
        import select

        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"no answer in {timeout:.0f}s")
        line = proc.stdout.readline()
        if not line:
            raise OSError(f"the helper exited ({proc.poll()})")
        return line.strip()

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or self._owner != os.getpid():
            return
        proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()

    def close(self) -> None:
        """Let the helper leave (end of this process)."""
        proc = self._proc
        if proc is None or self._owner != os.getpid():
            return
        try:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        self._proc = None


_ZYGOTE = _Zygote()


def prepare_rehearsal(memory_limit_mb: int) -> None:
    """Start the rehearsal helper in the background before downloading a model that will be rehearsed
    (nothing when ``memory_limit_mb`` is 0 or the platform has no ``fork``)."""
    if memory_limit_mb > 0 and hasattr(os, "fork"):
        _ZYGOTE.start()


def _zygote_main() -> int:
    """The helper's loop: import what a build needs, say ready, then one forked rehearsal per request."""
    import gc
    import importlib

    import sklearn  # noqa: F401
    import skops.io  # noqa: F401

    for name in sorted({n.rsplit(".", 1)[0] for names in ALLOWED.values() for n in names}):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    gc.collect()
    out = sys.stdout.buffer
    out.write(b"ready\n")
    out.flush()
    for line in sys.stdin.buffer:
        request = json.loads(line)
        code, message = _rehearse_forked(Path(request["path"]), int(request["limit"]), float(request["timeout"]))
        out.write(json.dumps({"code": code, "message": message}).encode() + b"\n")
        out.flush()
        gc.collect()
    return 0


def _rehearse_forked(path: Path, memory_limit_mb: int, timeout: float) -> tuple[int, str]:
    import faulthandler
    import select
    import signal
    import time

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into the caller's code
        code = 4
        try:
            os.close(read_end)
            faulthandler.disable()  # a crafted file that crashes the build must not dump into the caller's log
            code, message = _build_limited(str(path), memory_limit_mb)
            os.write(write_end, message.encode("utf-8", "replace")[:4000])
        finally:
            os._exit(code)
    os.close(write_end)
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return _TIMED_OUT, "timed out"
            ready, _, _ = select.select([read_end], [], [], left)
            if ready:
                data = os.read(read_end, 4096)
                if not data:
                    break
                chunks.append(data)
    finally:
        os.close(read_end)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    text = b"".join(chunks).decode("utf-8", "replace").strip()
    if code < 0:
        text = f"killed by signal {-code}"
    return code, (text.splitlines() or ["killed"])[-1]


def _objects(root: Any, limit: int = 1_000_000) -> Iterator[Any]:
    """Every object reachable from the loaded pipeline through attributes, lists, tuples, dicts and
    object arrays (each once)."""
    import numpy as np

    seen: set[int] = set()
    stack = [root]
    while stack and len(seen) < limit:
        obj = stack.pop()
        if id(obj) in seen or obj is None or isinstance(obj, (str, bytes, int, float, bool)):
            continue
        seen.add(id(obj))
        yield obj
        if isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple)):
            stack.extend(obj)
        elif isinstance(obj, np.ndarray):
            if obj.dtype == object:
                stack.extend(obj.ravel().tolist())
        elif hasattr(obj, "__dict__"):
            stack.extend(vars(obj).values())


def check_structure(model: Any) -> None:
    """Refuse trees whose node arrays point outside themselves.

    scikit-learn walks tree nodes without bounds checks, so a crafted ``Tree`` or ``TreePredictor``
    (made only of allow-listed types) would read or crash out of bounds at the first prediction."""
    from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor
    from sklearn.tree._tree import Tree

    for obj in _objects(model):
        if isinstance(obj, Tree):
            n = int(obj.node_count)
            left, right, feature = obj.children_left, obj.children_right, obj.feature
            inner = left != -1
            idx = np.arange(n)
            if len(left) != n or np.any(inner & ((left <= idx) | (left >= n) | (right <= idx) | (right >= n))) \
                    or np.any(~inner & (right != -1)) \
                    or np.any(inner & ((feature < 0) | (feature >= int(obj.n_features)))):
                raise ModelFileRefused("a decision tree in the model has nodes that point outside the tree")
        elif isinstance(obj, TreePredictor):
            nodes = obj.nodes
            n = len(nodes)
            inner = nodes["is_leaf"] == 0
            idx = np.arange(n)
            cat = inner & (nodes["is_categorical"] != 0)
            n_bitsets = len(getattr(obj, "raw_left_cat_bitsets", ()))
            if np.any(inner & ((nodes["left"] <= idx) | (nodes["left"] >= n) | (nodes["right"] <= idx)
                               | (nodes["right"] >= n))) or np.any(cat & (nodes["bitset_idx"] >= n_bitsets)):
                raise ModelFileRefused("a boosted tree in the model has nodes that point outside the tree")


def load_model_dir(model_dir: str | os.PathLike[str], *, expected_digest: str | None = None,
                   memory_limit_mb: int = 2048, max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_BYTES) -> Any:
    """Load an MLflow sklearn model directory through every check above.

    ``expected_digest``: the registry's ``fti.artifact_sha256``; a different directory is refused.
    ``memory_limit_mb``: 0 skips the rehearsal (only for models this process just wrote itself)."""
    import skops.io

    root = Path(model_dir)
    if expected_digest is not None:
        got = artifact_digest(root)
        if got != expected_digest:
            raise ModelFileTampered(f"model files differ from what the registry recorded at training "
                                   f"(sha256 {got[:12]} vs {expected_digest[:12]}): the local copy was changed or "
                                   "damaged; delete it from the model cache to fetch it again")
    path = skops_file(root)
    names = audit(path, max_unpacked_bytes=max_unpacked_bytes)
    if memory_limit_mb > 0:
        rehearse(path, memory_limit_mb)
    try:
        model = skops.io.load(path, trusted=names)
    except Exception as exc:  # a malformed but allow-listed file: refuse, do not crash the caller
        raise _refuse(path, f"skops could not build it ({type(exc).__name__})") from None
    check_structure(model)
    return model


def _build_limited(path: str, memory_limit_mb: int) -> tuple[int, str]:
    """Audit and build once under an address-space limit: (exit code, one line saying why)."""
    import gc
    import resource

    import sklearn  # noqa: F401  (imported before the limit: its own mappings are not the model's)
    import skops.io

    # Garbage the forked caller still held (cycles not yet collected) would be freed during the build and
    # its room reused by the model, past the limit: collect it before measuring (a CI run saw a 200 MB
    # model pass a 64 MB rehearsal; tests/unit/shared/test_model_file.py reproduces it with a 400 MB cycle).
    gc.collect()
    with open("/proc/self/statm") as fh:
        current = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = current + memory_limit_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        names = audit(Path(path))
        check_structure(skops.io.load(path, trusted=names))
    except MemoryError:
        return 3, "MemoryError: the model asks for more memory than the limit"
    except ModelFileRefused as exc:
        return 2, str(exc).removeprefix(f"model file {Path(path).name} refused: ")
    except Exception as exc:  # noqa: BLE001 - only the class is reported: the text may echo file content
        return 4, type(exc).__name__
    return 0, "ok"


def _child(path: str, memory_limit_mb: int) -> int:
    """``python -m shared.model_file PATH MB``: the spawned rehearsal."""
    code, message = _build_limited(path, memory_limit_mb)
    sys.stdout.write(message + "\n")
    return code


if __name__ == "__main__":
    raise SystemExit(_zygote_main() if sys.argv[1:] == ["--zygote"] else _child(sys.argv[1], int(sys.argv[2])))
