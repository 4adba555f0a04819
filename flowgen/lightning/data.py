"""LightningDataModules that draw whole batches directly on the training device.

Lightning's usual ``DataLoader`` collates a batch item by item on the CPU and copies it to the
device every step; for small models that dominates the step time. The modules here instead hand
Lightning a stream of cheap :class:`BatchRequest` tokens and build each batch in one tensor
operation inside :meth:`transfer_batch_to_device`, on the device the module trains on:

* :class:`ToyDataModule` — 2-D toys (``moons``, ``8gaussians``, ``checkerboard``, ``gmm``),
  sampled afresh every step from a ``torch.Generator`` on the device; a fixed held-out set
  (drawn from its own seed) for validation.
* :class:`DigitsDataModule` — scikit-learn's bundled 8×8 digits ``(N, 1, 8, 8)`` in ``[-1, 1]``
  with labels; its fixed test split is the held-out set.
* :class:`TensorFileDataModule` — a ``.npy``/``.npz``/``.pt`` tensor of any shape ``(N, *D)``.
* :class:`ImageFolderDataModule` — a folder of images.

Tensor datasets are indexed a whole batch at a time (one gather) from a per-epoch permutation that
is a pure function of ``(seed, epoch)``; they stay on the CPU unless ``on_device=True`` moves them
to the device once. Because a batch is built only when its training step runs (tokens are
prefetched, data is not), the module's :meth:`state_dict` — a count of consumed batches and the
toy generator's state — is exact at every step boundary, so a resumed run sees the same batches as
an uninterrupted one. Under DDP each rank draws its own toy stream (seed offset by rank) or its own
stride of the shared permutation.
"""

from __future__ import annotations

import os

import lightning.pytorch as pl
from lightning.pytorch.plugins.precision import Precision
import torch
from torch import Tensor

__all__ = [
    "BatchRequest",
    "ToyDataModule",
    "DigitsDataModule",
    "TensorFileDataModule",
    "ImageFolderDataModule",
    "WholeBatchDataModule",
]


class BatchRequest:
    """A token standing for one batch; the data module turns it into tensors on the device.

    A plain immutable object rather than a frozen dataclass: Lightning's precision plugins (FSDP,
    ``bf16-true``, ``64-true``) walk each batch with ``apply_to_collection``, which refuses frozen
    dataclasses. The tensors built from the token pass through the plugin afterwards.
    """

    __slots__ = ("split", "index")

    def __init__(self, split: str, index: int):
        object.__setattr__(self, "split", split)
        object.__setattr__(self, "index", int(index))

    def __setattr__(self, name, value):
        raise AttributeError("BatchRequest is immutable")

    def __eq__(self, other) -> bool:
        return isinstance(other, BatchRequest) and (self.split, self.index) == (other.split, other.index)

    def __hash__(self) -> int:
        return hash((self.split, self.index))

    def __repr__(self) -> str:
        return f"BatchRequest(split={self.split!r}, index={self.index})"


class _TokenStream:
    """An iterable of :class:`BatchRequest` with a length (one epoch); restarts mid-epoch after a resume."""

    def __init__(self, owner: "WholeBatchDataModule", split: str, length: int):
        self.owner, self.split, self.length = owner, split, int(length)

    def __len__(self) -> int:
        return self.length

    # The position lives in the data module's state (saved with the checkpoint); these make Lightning
    # treat the stream as resumable mid-epoch.
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        pass

    def __iter__(self):
        start = self.owner._consumed % self.length if self.split == "train" else 0
        for i in range(start, self.length):
            yield BatchRequest(self.split, i)


def _check_positive_int(value, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value < 2**31:
        raise ValueError(f"{name} must be a positive int below 2**31, got {value!r}")
    return value


class WholeBatchDataModule(pl.LightningDataModule):
    """Base class: token streams, batch materialisation on the device, exact resumable state.

    Subclasses implement :meth:`_train_batch` and :meth:`_val_data`, and set ``data_shape``
    (per-sample shape), ``num_classes`` and ``_init_args`` (plain data for checkpoints).
    """

    def __init__(self, batch_size: int = 256, seed: int | None = None, val_batch_size: int | None = None):
        super().__init__()
        self.batch_size = _check_positive_int(batch_size, "batch_size")
        self.val_batch_size = None if val_batch_size is None else _check_positive_int(val_batch_size, "val_batch_size")
        if seed is not None and not isinstance(seed, int):
            raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
        self.seed = seed
        self.data_shape: tuple[int, ...] = ()
        self.num_classes: int | None = None
        self._consumed = 0
        self._device = torch.device("cpu")
        self._rank, self._world = 0, 1
        self._val_cache: dict = {}
        self._init_args: dict = {}

    # --- plumbing --------------------------------------------------------------------------
    def _base_seed(self) -> int:
        return int(self.seed) if self.seed is not None else int(torch.initial_seed() % (2**62))

    def setup(self, stage: str | None = None) -> None:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            self._device = trainer.strategy.root_device
            self._rank, self._world = int(trainer.global_rank), int(trainer.world_size)
        self._setup_data()

    def _setup_data(self) -> None:  # pragma: no cover - overridden
        pass

    def describe(self) -> dict:
        """``{"class_path", "init_args"}`` of this module as plain data (stored in checkpoints)."""
        cls = type(self)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": dict(self._init_args)}

    @property
    def batches_per_epoch(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def train_dataloader(self):
        return _TokenStream(self, "train", self.batches_per_epoch)

    def val_dataloader(self):
        n = self._val_data()[0].shape[0]
        vbs = self.val_batch_size or n
        return _TokenStream(self, "val", -(-n // vbs))

    def transfer_batch_to_device(self, batch, device, dataloader_idx: int):
        if isinstance(batch, BatchRequest):
            if batch.split == "train":
                out = self._train_batch(device)
                self._consumed += 1
            else:
                out = self._val_batch(batch.index, device)
            return self._convert_precision(out)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def _convert_precision(self, batch):
        """The precision plugin's input conversion (``bf16-true``, ``64-true``, FSDP…), which Lightning
        applied to the token, before the tensors existed."""
        trainer = getattr(self, "trainer", None)
        plugin = getattr(trainer, "precision_plugin", None) if trainer is not None else None
        if plugin is None or type(plugin).convert_input is Precision.convert_input:
            return batch  # the default plugin leaves inputs as they are
        return plugin.convert_input(batch)

    def _val_batch(self, index: int, device):
        key = str(device)
        if key not in self._val_cache:
            data, labels = self._val_data()
            self._val_cache = {key: (data.to(device), None if labels is None else labels.to(device))}
        data, labels = self._val_cache[key]
        vbs = self.val_batch_size or data.shape[0]
        sl = slice(index * vbs, (index + 1) * vbs)
        return data[sl] if labels is None else (data[sl], labels[sl])

    def reference(self, device=None) -> Tensor:
        """The fixed held-out data ``(N, *D)`` (validation reference for metrics)."""
        self._setup_data()
        data = self._val_data()[0]
        return data if device is None else data.to(device)

    def reference_labels(self) -> Tensor | None:
        """Labels ``(N,)`` of :meth:`reference` where the data has them."""
        self._setup_data()
        return self._val_data()[1]

    # --- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"consumed": int(self._consumed)}

    def load_state_dict(self, state_dict: dict) -> None:
        self._consumed = int(state_dict.get("consumed", 0))

    # --- to implement -----------------------------------------------------------------------
    def _train_batch(self, device):  # pragma: no cover - overridden
        raise NotImplementedError

    def _val_data(self) -> tuple[Tensor, Tensor | None]:  # pragma: no cover - overridden
        raise NotImplementedError


class ToyDataModule(WholeBatchDataModule):
    """2-D toy data drawn afresh every step, in whole batches, on the training device.

    Args:
        name: ``"moons"``, ``"8gaussians"``, ``"checkerboard"`` or ``"gmm"`` (see :mod:`flowgen.data.toys`).
        batch_size: points per training step (per device under DDP).
        val_size: size of the fixed held-out set used for validation metrics.
        batches_per_epoch: length of one (virtual) epoch.
        seed: seed of the training stream (default: the global seed set by ``seed_everything``);
            rank ``r`` uses ``seed + 1_000_003·r``.
        val_seed: seed of the held-out set (independent of the training seed).
    """

    def __init__(self, name: str = "moons", batch_size: int = 256, val_size: int = 2000, batches_per_epoch: int = 1000,
                 seed: int | None = None, val_seed: int = 12345, val_batch_size: int | None = None):
        super().__init__(batch_size=batch_size, seed=seed, val_batch_size=val_batch_size)
        from ..data.toys import Toy

        self.name = Toy.parse(name).value
        self.val_size = _check_positive_int(val_size, "val_size")
        self._bpe = _check_positive_int(batches_per_epoch, "batches_per_epoch")
        self.val_seed = int(val_seed)
        self.data_shape = (2,)
        self._generator: torch.Generator | None = None
        self._pending_gen_state: Tensor | None = None
        self._val: Tensor | None = None
        self._init_args = {"name": self.name, "batch_size": batch_size, "val_size": val_size,
                           "batches_per_epoch": batches_per_epoch, "seed": seed, "val_seed": self.val_seed}

    @property
    def batches_per_epoch(self) -> int:
        return self._bpe

    def _setup_data(self) -> None:
        if self._val is None:
            from ..data.toys import sample_toy

            self._val = sample_toy(self.name, self.val_size, generator=torch.Generator().manual_seed(self.val_seed))

    def _gen(self, device) -> torch.Generator:
        device = torch.device(device)
        if self._generator is None or self._generator.device != device:
            state = self._generator.get_state() if self._generator is not None else self._pending_gen_state
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(self._base_seed() + 1_000_003 * self._rank)
            if state is not None:
                self._generator.set_state(state)
            self._pending_gen_state = None
        return self._generator

    def _train_batch(self, device):
        from ..data.toys import sample_toy

        return sample_toy(self.name, self.batch_size, generator=self._gen(device), device=device)

    def _val_data(self):
        self._setup_data()
        return self._val, None

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self._generator is not None:
            state["generator"] = self._generator.get_state()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        gen = state_dict.get("generator")
        if gen is not None:
            if self._generator is not None:
                self._generator.set_state(gen)
            else:
                self._pending_gen_state = gen


class _TensorDataModule(WholeBatchDataModule):
    """Shared logic of the tensor datasets: held-out split, per-epoch permutations, whole-batch gathers."""

    def __init__(self, batch_size: int = 256, val_fraction: float = 0.1, val_size: int | None = None,
                 on_device: bool = False, seed: int | None = None, split_seed: int = 0,
                 val_batch_size: int | None = None, labels: bool = True):
        super().__init__(batch_size=batch_size, seed=seed, val_batch_size=val_batch_size)
        if not (0.0 <= float(val_fraction) < 1.0):
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
        self.val_fraction, self.val_size, self.on_device = float(val_fraction), val_size, bool(on_device)
        self.split_seed, self.use_labels = int(split_seed), bool(labels)
        self._train: tuple[Tensor, Tensor | None] | None = None
        self._val: tuple[Tensor, Tensor | None] | None = None
        self._train_device = torch.device("cpu")

    def _load(self) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:  # pragma: no cover
        """``(train_data, train_labels, val_data | None, val_labels | None)``."""
        raise NotImplementedError

    def _setup_data(self) -> None:
        if self._train is None:
            x, y, vx, vy = self._load()
            if not self.use_labels:
                y = vy = None
            if vx is None:
                n = x.shape[0]
                n_val = self.val_size if self.val_size is not None else int(round(self.val_fraction * n))
                if n_val >= n:
                    raise ValueError(f"val_size {n_val} leaves no training data out of {n} samples")
                perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed))
                vi, ti = perm[:n_val].sort().values, perm[n_val:].sort().values
                vx, vy = x[vi], None if y is None else y[vi]
                x, y = x[ti], None if y is None else y[ti]
            self._train, self._val = (x, y), (vx, vy)
            self.data_shape = tuple(x.shape[1:])
            if y is not None:
                self.num_classes = int(max(int(y.max()), int(vy.max()) if vy is not None and len(vy) else 0)) + 1
        if self.on_device and self._train_device != self._device:
            x, y = self._train
            self._train = (x.to(self._device), None if y is None else y.to(self._device))
            self._train_device = self._device
        if self._train[0].shape[0] < self.batch_size * self._world:
            raise ValueError(
                f"batch_size {self.batch_size} × {self._world} device(s) is larger than the training set "
                f"({self._train[0].shape[0]} samples)"
            )

    @property
    def num_train(self) -> int:
        self._setup_data()
        return self._train[0].shape[0]

    @property
    def batches_per_epoch(self) -> int:
        return max(1, self.num_train // (self.batch_size * self._world))

    def _train_batch(self, device):
        bpe = self.batches_per_epoch
        epoch, pos = divmod(self._consumed, bpe)
        gen = torch.Generator().manual_seed((self._base_seed() * 1_000_003 + epoch) % (2**62))
        perm = torch.randperm(self.num_train, generator=gen)
        start = (pos * self._world + self._rank) * self.batch_size
        idx = perm[start:start + self.batch_size]
        x, y = self._train
        if x.device != torch.device("cpu"):
            idx = idx.to(x.device)
        xb = x[idx].to(device, non_blocking=True)
        if y is None:
            return xb
        return xb, y[idx].to(device, non_blocking=True)

    def _val_data(self):
        self._setup_data()
        return self._val


class DigitsDataModule(_TensorDataModule):
    """The 8×8 handwritten digits bundled with scikit-learn, ``(N, 1, 8, 8)`` in ``[-1, 1]`` with labels.

    The fixed stratified test split of :func:`flowgen.data.load_digits` is the held-out set.
    Batches are ``(images, labels)`` (or images only with ``labels=False``).
    """

    def __init__(self, batch_size: int = 128, on_device: bool = False, seed: int | None = None,
                 labels: bool = True, val_batch_size: int | None = None):
        super().__init__(batch_size=batch_size, on_device=on_device, seed=seed, labels=labels,
                         val_batch_size=val_batch_size)
        self.data_shape, self.num_classes = (1, 8, 8), 10 if labels else None
        self._init_args = {"batch_size": batch_size, "labels": labels}

    def _load(self):
        from ..data.digits import load_digits

        x, y = load_digits("train")
        vx, vy = load_digits("test")
        return x, y, vx, vy


class TensorFileDataModule(_TensorDataModule):
    """User data from a tensor file ``(N, *D)`` of any shape (``.npy``, ``.npz``, ``.pt``).

    Args:
        path: the file; a bad file (wrong dtype, NaN/Inf, empty, pickled content) is refused with
            a ValueError naming it and the reason.
        batch_size: samples per step.
        val_fraction: share held out for validation (a fixed permutation from ``split_seed``).
        on_device: move the whole training set to the device once (default: keep it on the CPU
            and copy each gathered batch).
        labels: use the file's labels (``"labels"`` entry of a ``.pt`` dict / ``.npz``) as ``cond``.
    """

    def __init__(self, path: str, batch_size: int = 256, val_fraction: float = 0.1, on_device: bool = False,
                 seed: int | None = None, split_seed: int = 0, labels: bool = True, val_batch_size: int | None = None):
        super().__init__(batch_size=batch_size, val_fraction=val_fraction, on_device=on_device, seed=seed,
                         split_seed=split_seed, labels=labels, val_batch_size=val_batch_size)
        self.path = os.fspath(path)
        self._init_args = {"path": self.path, "batch_size": batch_size, "val_fraction": self.val_fraction,
                           "split_seed": self.split_seed, "labels": labels}

    def _load(self):
        from ..data.files import load_tensor_file_with_labels

        x, y = load_tensor_file_with_labels(self.path)
        if x.dim() < 2:
            raise ValueError(f"data file {self.path!r} refused: shape {tuple(x.shape)} has no per-sample dimensions; "
                             f"expected (N, *D) with at least one D")
        return x, y, None, None


class ImageFolderDataModule(_TensorDataModule):
    """Images under a folder (recursively), ``(N, C, H, W)`` in ``[-1, 1]``.

    Args:
        path: the folder; with ``labels=True`` each top-level subfolder is a class.
        size: ``None`` (all images the same size), an int or ``(H, W)`` to resize to.
        grayscale: ``True``/``False`` to force 1/3 channels, ``None`` to decide from the images.
    """

    def __init__(self, path: str, batch_size: int = 64, size: int | None = None, grayscale: bool | None = None,
                 val_fraction: float = 0.1, on_device: bool = False, seed: int | None = None, split_seed: int = 0,
                 labels: bool = False, val_batch_size: int | None = None):
        super().__init__(batch_size=batch_size, val_fraction=val_fraction, on_device=on_device, seed=seed,
                         split_seed=split_seed, labels=labels, val_batch_size=val_batch_size)
        self.path, self.size, self.grayscale = os.fspath(path), size, grayscale
        self._init_args = {"path": self.path, "batch_size": batch_size, "size": size, "grayscale": grayscale,
                           "val_fraction": self.val_fraction, "split_seed": self.split_seed, "labels": labels}

    def _load(self):
        from ..data.files import load_image_folder

        if self.use_labels:
            x, y, _ = load_image_folder(self.path, size=self.size, grayscale=self.grayscale, return_labels=True)
        else:
            x, y = load_image_folder(self.path, size=self.size, grayscale=self.grayscale), None
        return x, y, None, None
