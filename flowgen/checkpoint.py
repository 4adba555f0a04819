"""Safe checkpoint files: plain data only, atomic writes, and generators rebuilt from metadata.

A flowgen checkpoint is a ``torch.save`` file holding only tensors, containers
(``dict``/``list``/``tuple``/``OrderedDict``) and primitives, so it is always read with
``torch.load(..., weights_only=True)``; nothing in it is ever unpickled as code. Next to
Lightning's usual keys (``state_dict``, ``optimizer_states``, ``loops``, …) it carries a
``"flowgen"`` entry (:data:`METADATA_KEY`) with everything needed to sample later
without the training YAML:

=================== ===============================================================
key                 meaning
=================== ===============================================================
``format``          metadata layout version (:data:`FORMAT_VERSION`)
``flowgen_version`` the version that wrote it
``kind``            ``"teacher"``, or e.g. ``"student"`` for distilled generators
``path``            :func:`flowgen.paths.path_to_config` of the probability path
``prediction``      the :class:`~flowgen.Prediction` value the network outputs
``model``           ``{"class_path": str, "init_args": dict}`` (plain data, nested specs allowed)
``weights_prefix``  prefix in ``state_dict`` of the generator weights (the EMA copy)
``online_prefix``   prefix of the raw trained weights
``data_shape``      per-sample shape ``[*D]``
``num_classes``     number of classes of a class-conditional model, else ``None``
``sampler``         default ``{"method": str, "steps": int | None}`` for sampling
=================== ===============================================================

Writes go to a temporary file in the same folder, are flushed to disk and then moved over
the destination with :func:`os.replace`, so a crash during a write leaves the previous file
intact. Model classes named in a checkpoint are only imported from trusted module prefixes
(``flowgen.`` and ``torch.nn.`` by default) and must be ``torch.nn.Module`` subclasses.

This module imports only torch, numpy and the standard library (no Lightning), so the core,
the samplers and the distillers can use it.
"""

from __future__ import annotations

import importlib
import inspect
import io
import os
import pickle
import pickletools
import random
import secrets
import warnings
import zipfile
from collections import OrderedDict
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

__all__ = [
    "METADATA_KEY",
    "FORMAT_VERSION",
    "CheckpointError",
    "UnsafeCheckpointError",
    "CorruptCheckpointError",
    "MissingMetadataError",
    "safe_load",
    "atomic_save",
    "check_plain",
    "to_plain",
    "module_spec",
    "build_module",
    "make_metadata",
    "read_metadata",
    "extract_state_dict",
    "load_generator",
    "LoadedGenerator",
    "capture_rng_state",
    "restore_rng_state",
    "TRUSTED_MODULE_PREFIXES",
]

#: Key of the flowgen metadata inside a checkpoint dict.
METADATA_KEY = "flowgen"
#: Version of the metadata layout written by this flowgen.
FORMAT_VERSION = 1
#: Module prefixes whose classes a checkpoint may name without further trust.
TRUSTED_MODULE_PREFIXES: tuple[str, ...] = ("flowgen.", "torch.nn.")

_PRIMITIVES = (str, int, float, bool, bytes, type(None), complex)


class CheckpointError(ValueError):
    """A checkpoint file cannot be used; the message names the file and the reason."""


class UnsafeCheckpointError(CheckpointError):
    """The file carries pickled code or objects that are not plain data; it was not loaded."""


class CorruptCheckpointError(CheckpointError):
    """The file is truncated, corrupted or not a torch checkpoint."""


class MissingMetadataError(CheckpointError):
    """The checkpoint lacks the flowgen metadata (path, prediction, model) needed to sample from it."""


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------
def _pickle_bytes(raw: bytes) -> list[bytes]:
    """The pickle streams inside a checkpoint: ``*/data.pkl`` of a zip file, or the raw bytes."""
    if zipfile.is_zipfile(io.BytesIO(raw)):
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            return [zf.read(n) for n in zf.namelist() if n.endswith(".pkl")]
    return [raw]


_SAFE_GLOBAL_PREFIXES = ("torch.", "torch._utils.", "collections.OrderedDict", "builtins.set", "builtins.frozenset",
                         "builtins.complex", "builtins.bytearray", "_codecs.encode", "numpy.core.multiarray._reconstruct",
                         "numpy.dtype", "numpy.ndarray")


def _unsafe_globals(raw: bytes) -> list[str]:
    """Statically list the globals (``module.name``) a pickle would import; nothing is executed."""
    found = []
    for stream in _pickle_bytes(raw):
        strings: list[str] = []
        try:
            for op, arg, _ in pickletools.genops(stream):
                if op.name in ("GLOBAL", "INST"):
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                if isinstance(arg, str):
                    strings.append(arg)
        except Exception:  # truncated or garbage stream: report what was seen so far
            pass
    return [g for g in found if not g.startswith(_SAFE_GLOBAL_PREFIXES)]


def safe_load(path, map_location="cpu") -> dict:
    """Load a checkpoint with ``torch.load(weights_only=True)`` and turn failures into clear errors.

    Args:
        path: the checkpoint file.
        map_location: passed to :func:`torch.load` (``"cpu"`` by default).

    Returns:
        The checkpoint dict.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        UnsafeCheckpointError: if the file carries pickled code or custom objects (e.g. a
            reference to ``os.system`` or to a user class); it is refused, never executed.
        CorruptCheckpointError: if the file is truncated, corrupted or not a checkpoint.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        what = "is a directory, not a checkpoint file" if os.path.isdir(path) else "does not exist"
        raise FileNotFoundError(f"checkpoint file {path!r} {what}")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pickle protocol.*")
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        with open(path, "rb") as f:
            raw = f.read()
        bad = _unsafe_globals(raw)
        msg = str(err)
        if bad or "GLOBAL" in msg:
            names = ", ".join(sorted(set(bad))) or msg.split("GLOBAL", 1)[1].split()[0]
            raise UnsafeCheckpointError(
                f"refusing to load checkpoint {path!r}: it is unsafe, its pickle references code or custom objects "
                f"({names}); flowgen checkpoints hold only tensors, containers and primitives and are read with "
                f"weights_only=True"
            ) from None
        raise CorruptCheckpointError(
            f"checkpoint file {path!r} is corrupted or not a torch checkpoint (unpickling failed: {_first_line(msg)})"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError, IndexError) as err:
        reason = "the file is empty" if isinstance(err, EOFError) else _first_line(str(err)) or type(err).__name__
        raise CorruptCheckpointError(
            f"checkpoint file {path!r} is truncated or corrupted ({reason}); resume from an earlier checkpoint"
        ) from None
    if not isinstance(obj, dict):
        raise CorruptCheckpointError(f"checkpoint file {path!r} holds a {type(obj).__name__}, expected a dict")
    return obj


def _first_line(msg: str) -> str:
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip() and "Weights only load failed" not in ln]
    return lines[0][:200] if lines else ""


# --------------------------------------------------------------------------------------------
# saving
# --------------------------------------------------------------------------------------------
def check_plain(obj, where: str = "checkpoint") -> None:
    """Raise TypeError unless ``obj`` is made only of tensors, containers and primitives.

    The error names the offending entry (e.g. ``checkpoint['hyper_parameters']['model']``).
    """
    if isinstance(obj, torch.Tensor) or isinstance(obj, _PRIMITIVES):
        return
    if isinstance(obj, (torch.dtype, torch.device, torch.Size)):
        return
    if type(obj) in (dict, OrderedDict):
        for k, v in obj.items():
            if not isinstance(k, (str, int, float, bool, type(None), tuple)):
                raise TypeError(f"{where} has a key of type {type(k).__name__}; only plain keys can be stored safely")
            check_plain(v, f"{where}[{k!r}]")
        return
    if type(obj) in (list, tuple, set, frozenset):
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where} holds a {type(obj).__module__}.{type(obj).__qualname__}, which cannot be stored in a safe "
        f"checkpoint; only tensors, dicts, lists, tuples and primitives are allowed"
    )


def to_plain(obj):
    """Copy ``obj`` turning dict/list/tuple subclasses (AttributeDict, namedtuples, numpy scalars/arrays)
    into plain containers, so that it can be saved and read back with ``weights_only=True``.

    Anything else that is not plain is left as is (and later refused by :func:`check_plain`).
    """
    if isinstance(obj, torch.Tensor) or isinstance(obj, _PRIMITIVES) or isinstance(obj, (torch.dtype, torch.device)):
        return obj
    if isinstance(obj, torch.Size):
        return obj
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, OrderedDict) and type(obj) is OrderedDict:
        return OrderedDict((k, to_plain(v)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v) for v in obj) if type(obj) in (list, tuple) else [to_plain(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return type(obj)(to_plain(v) for v in obj) if type(obj) in (set, frozenset) else set(to_plain(v) for v in obj)
    return obj


def atomic_save(obj, path, *, check: bool = True) -> None:
    """``torch.save`` to a temporary file in the destination folder, fsync, then :func:`os.replace`.

    A crash at any point leaves either the previous file or the complete new one. The temporary
    file ``.<name>.<pid>.<random>.tmp`` is created with the process's umask (as ``torch.save``
    would); after a successful save, temporary files of the same destination left by processes
    that no longer run (killed mid-write) are removed.

    Args:
        obj: the object (normally a checkpoint dict).
        path: destination file.
        check: run :func:`check_plain` first so nothing is written that could not be read back safely.
    """
    path = os.fspath(path)
    if check:
        check_plain(obj)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    prefix = f".{os.path.basename(path)}."
    tmp = os.path.join(folder, f"{prefix}{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable where the platform allows it
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:  # pragma: no cover - e.g. Windows
        pass
    _remove_stale_temporaries(folder, prefix)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # exists but not ours, or the platform cannot tell: keep its file
        return True
    return True


def _remove_stale_temporaries(folder: str, prefix: str) -> None:
    """Delete ``<prefix><pid>.<hex>.tmp`` files in ``folder`` whose writing process is gone."""
    try:
        names = os.listdir(folder)
    except OSError:  # pragma: no cover
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        pid = name[len(prefix):-len(".tmp")].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            try:
                os.unlink(os.path.join(folder, name))
            except OSError:  # pragma: no cover - removed concurrently
                pass


# --------------------------------------------------------------------------------------------
# model specs: class path + init args as plain data
# --------------------------------------------------------------------------------------------
def _is_plain_value(v) -> bool:
    if isinstance(v, _PRIMITIVES):
        return True
    if type(v) in (list, tuple):
        return all(_is_plain_value(x) for x in v)
    if type(v) is dict:
        return all(isinstance(k, str) and _is_plain_value(x) for k, x in v.items())
    return False


def _class_path(obj) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def module_spec(module: nn.Module, *, verify: bool = True) -> dict | None:
    """Best-effort ``{"class_path", "init_args"}`` of a module, read back from its attributes.

    Each ``__init__`` argument is looked up as an attribute of the same name (nested modules and
    flowgen paths become nested specs). Arguments not found are left at their defaults. With
    ``verify`` the module is rebuilt from the spec and its state-dict keys and shapes compared with
    the original; a mismatch returns ``None``. Arguments that do not change any shape (e.g. a time
    scale) cannot be verified: pass an explicit spec where those differ from their defaults.

    Returns:
        The spec, with the names of defaulted arguments under ``"defaulted"``, or ``None``.
    """
    from .paths import Path, path_to_config

    cls = type(module)
    try:
        sig = inspect.signature(cls.__init__)
    except (TypeError, ValueError):
        return None
    init_args, defaulted = {}, []
    for name, p in list(sig.parameters.items())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if hasattr(module, name):
            value = getattr(module, name)
            if isinstance(value, nn.Module):
                sub = module_spec(value, verify=False)
                if sub is None:
                    return None
                sub.pop("defaulted", None)
                init_args[name] = sub
                continue
            if isinstance(value, Path):
                init_args[name] = {"path_config": path_to_config(value)}
                continue
            if _is_plain_value(value):
                init_args[name] = list(value) if isinstance(value, tuple) else value
                continue
        if p.default is inspect.Parameter.empty:
            return None
        defaulted.append(name)
    spec = {"class_path": _class_path(module), "init_args": init_args}
    if verify:
        try:
            with torch.random.fork_rng(devices=[]):
                rebuilt = build_module(spec, trusted=(_class_path(module),))
        except Exception:
            return None
        a = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        b = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
        if a != b:
            return None
    if defaulted:
        spec["defaulted"] = defaulted
    return spec


def _resolve(class_path: str, trusted: tuple[str, ...]):
    if not isinstance(class_path, str) or "." not in class_path:
        raise CheckpointError(f"model class_path must be a dotted 'module.Class' string, got {class_path!r}")
    allowed = tuple(TRUSTED_MODULE_PREFIXES) + tuple(trusted) + tuple(
        p.strip() for p in os.environ.get("FLOWGEN_TRUSTED_MODULES", "").split(",") if p.strip()
    )
    if not any(class_path.startswith(p) if p.endswith(".") else class_path == p or class_path.startswith(p + ".")
               for p in allowed):
        raise CheckpointError(
            f"model class {class_path!r} is not from a trusted module ({', '.join(allowed)}); pass it as trusted "
            f"(flowgen sample --trust-module PREFIX, or FLOWGEN_TRUSTED_MODULES) if you trust the checkpoint"
        )
    parts = class_path.split(".")
    obj, err = None, None
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError as e:
            err = e
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError as e:
            err, obj = e, None
            continue
        break
    if obj is None:
        raise CheckpointError(f"cannot import model class {class_path!r}: {err}")
    return obj


def build_module(spec: dict, *, trusted: tuple[str, ...] = ()) -> nn.Module:
    """Instantiate ``{"class_path": ..., "init_args": {...}}`` (nested specs allowed).

    Only ``torch.nn.Module`` subclasses from trusted module prefixes are built
    (:data:`TRUSTED_MODULE_PREFIXES`, plus ``trusted`` and the comma-separated environment
    variable ``FLOWGEN_TRUSTED_MODULES``); nested ``{"path_config": ...}`` entries become flowgen paths.

    Raises:
        CheckpointError: for untrusted, unknown or non-module classes, or arguments that do not fit.
    """
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise CheckpointError(f"model spec must be a dict with 'class_path' and 'init_args', got {spec!r}")
    cls = _resolve(spec["class_path"], tuple(trusted))
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise CheckpointError(f"model class_path {spec['class_path']!r} does not name a torch.nn.Module subclass")
    kwargs = {}
    for k, v in dict(spec.get("init_args") or {}).items():
        kwargs[k] = _build_arg(v, trusted)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise CheckpointError(f"cannot build {spec['class_path']} from init_args {spec.get('init_args')!r}: {err}") from None


def _build_arg(v, trusted):
    from .paths import path_from_config

    if isinstance(v, dict) and "class_path" in v:
        if v["class_path"].startswith("flowgen.paths."):
            return _build_path_spec(v)
        return build_module(v, trusted=trusted)
    if isinstance(v, dict) and set(v) == {"path_config"}:
        return path_from_config(v["path_config"])
    return v


def _build_path_spec(v: dict):
    """A flowgen path given as a LightningCLI-style spec (class or classmethod under ``flowgen.paths``)."""
    obj = _resolve(v["class_path"], ())
    from .paths import Path

    args = dict(v.get("init_args") or {})
    if not (callable(obj) and (isinstance(obj, type) and issubclass(obj, Path) or inspect.ismethod(obj))):
        raise CheckpointError(f"{v['class_path']!r} is not a flowgen path")
    out = obj(**args)
    if not isinstance(out, Path):
        raise CheckpointError(f"{v['class_path']!r} did not produce a flowgen path")
    return out


# --------------------------------------------------------------------------------------------
# metadata and generators
# --------------------------------------------------------------------------------------------
def make_metadata(
    *,
    path,
    prediction,
    model_spec: dict | None,
    data_shape,
    weights_prefix: str,
    online_prefix: str | None = None,
    num_classes: int | None = None,
    kind: str = "teacher",
    sampler: dict | None = None,
    extra: dict | None = None,
) -> dict:
    """The plain-data ``checkpoint["flowgen"]`` entry (see the module docstring for its keys).

    Args:
        path: the flowgen :class:`~flowgen.paths.Path` the model was trained on.
        prediction: :class:`~flowgen.Prediction` (or its value) the network outputs.
        model_spec: ``{"class_path", "init_args"}`` of the network, or ``None`` if unknown.
        data_shape: per-sample shape ``(*D)``.
        weights_prefix: prefix in the checkpoint's ``state_dict`` of the weights to sample with.
        online_prefix: prefix of the raw (non-EMA) weights, if different.
        num_classes: classes of a class-conditional model.
        kind: ``"teacher"``, ``"student"``, ….
        sampler: default ``{"method", "steps"}``.
        extra: more plain data (e.g. a distiller's supported step counts).
    """
    from . import __version__
    from .parameterization import Prediction
    from .paths import path_to_config

    meta = {
        "format": FORMAT_VERSION,
        "flowgen_version": __version__,
        "kind": str(kind),
        "path": path_to_config(path),
        "prediction": Prediction.parse(prediction).value,
        "model": None if model_spec is None else to_plain(model_spec),
        "weights_prefix": str(weights_prefix),
        "online_prefix": None if online_prefix is None else str(online_prefix),
        "data_shape": [int(d) for d in data_shape] if data_shape is not None else None,
        "num_classes": None if num_classes is None else int(num_classes),
        "sampler": to_plain(dict(sampler or {})),
    }
    if extra:
        meta.update(to_plain(dict(extra)))
    check_plain(meta, "flowgen metadata")
    return meta


def read_metadata(checkpoint, *, require: tuple[str, ...] = ("path", "prediction"), name: str | None = None) -> dict:
    """The flowgen metadata of a checkpoint (a dict or a file name), checked for ``require`` keys.

    Raises:
        MissingMetadataError: naming the file and the missing keys (e.g. a checkpoint without path metadata).
    """
    if not isinstance(checkpoint, dict):
        name = os.fspath(checkpoint)
        checkpoint = safe_load(name)
    where = f"checkpoint {name!r}" if name else "checkpoint"
    meta = checkpoint.get(METADATA_KEY)
    if not isinstance(meta, dict):
        raise MissingMetadataError(
            f"{where} has no flowgen metadata (no path, prediction or model description), so flowgen cannot "
            f"sample from it; it was not written by flowgen's training or distillation"
        )
    missing = [k for k in require if meta.get(k) in (None, {}, "")]
    if missing:
        what = ", ".join(missing)
        raise MissingMetadataError(f"{where} lacks the {what} metadata needed to sample from it")
    return meta


def extract_state_dict(state_dict: dict, prefix: str) -> "OrderedDict[str, torch.Tensor]":
    """The entries of ``state_dict`` under ``prefix`` with the prefix removed."""
    out = OrderedDict((k[len(prefix):], v) for k, v in state_dict.items() if k.startswith(prefix))
    return out


class LoadedGenerator(NamedTuple):
    """What :func:`load_generator` returns (unpacks as ``model, path, prediction, metadata``)."""

    model: nn.Module
    path: Any
    prediction: Any
    metadata: dict


def load_generator(
    checkpoint,
    *,
    map_location="cpu",
    weights: str = "ema",
    model: nn.Module | None = None,
    trusted: tuple[str, ...] = (),
) -> LoadedGenerator:
    """Rebuild the generator of a flowgen checkpoint: network (eval mode, EMA weights), path, prediction.

    Args:
        checkpoint: file name (read with :func:`safe_load`) or an already loaded dict.
        map_location: where the tensors go.
        weights: ``"ema"`` (the generator weights, default) or ``"online"`` (the raw trained weights).
        model: an already built network to load the weights into (then the model spec is not needed).
        trusted: extra module prefixes whose classes may be built (see :func:`build_module`).

    Returns:
        :class:`LoadedGenerator` ``(model, path, prediction, metadata)``.

    Raises:
        MissingMetadataError: the checkpoint lacks path/prediction (or model) metadata.
        CheckpointError: unsafe/corrupt file, untrusted class, or weights that do not fit the model.
    """
    from .parameterization import Prediction
    from .paths import path_from_config

    name = None if isinstance(checkpoint, dict) else os.fspath(checkpoint)
    ckpt = checkpoint if isinstance(checkpoint, dict) else safe_load(name, map_location=map_location)
    where = f"checkpoint {name!r}" if name else "checkpoint"
    meta = read_metadata(ckpt, require=("path", "prediction") + (() if model is not None else ("model",)), name=name)
    path = path_from_config(meta["path"])
    prediction = Prediction.parse(meta["prediction"])
    if weights not in ("ema", "online"):
        raise ValueError(f"weights must be 'ema' or 'online', got {weights!r}")
    prefix = meta.get("weights_prefix") if weights == "ema" else (meta.get("online_prefix") or meta.get("weights_prefix"))
    state = ckpt.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"{where} has no state_dict")
    sub = extract_state_dict(state, prefix or "")
    if not sub and meta.get("online_prefix"):
        sub = extract_state_dict(state, meta["online_prefix"])
    if not sub:
        raise CheckpointError(f"{where} holds no weights under prefix {prefix!r}")
    net = model if model is not None else build_module(meta["model"], trusted=tuple(trusted))
    try:
        net.load_state_dict(sub, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"the weights in {where} do not fit the model: {_first_line(str(err))}") from None
    net = net.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu").eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return LoadedGenerator(net, path, prediction, meta)


# --------------------------------------------------------------------------------------------
# RNG state (torch CPU + CUDA, numpy, python) as plain data
# --------------------------------------------------------------------------------------------
def capture_rng_state() -> dict:
    """Global RNG states as plain data: torch CPU (and CUDA) ByteTensors, numpy's MT19937, python's."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
