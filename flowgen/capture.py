"""A whole training step — forward, backward, gradient clipping, optimizer step — as one CUDA graph.

Core (no Lightning): use it in a custom loop, or through ``FlowModule(cuda_graph=True)``::

    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    make_capturable(opt)
    step = StepGraph(lambda x: objective(model, x), opt, list(model.parameters()))
    for batch in batches:           # (B, *D) tensors on one CUDA device, one shape
        loss = step(batch)          # 3 eager warm-up steps, then capture, then replays

A small network's training step on a GPU is bound by the host: a 3×256 MLP step is about a
hundred kernel launches, each costing the host microseconds, while the GPU idles between them.
Capturing the step once and replaying it (``torch.cuda.CUDAGraph``) turns those launches into one.
:class:`StepGraph` does this for any ``loss_fn(*inputs) → scalar`` and an optimizer that supports
capture (``capturable=True``, a tensor learning rate; :func:`make_capturable` prepares one):

* the first ``warmup`` calls run eagerly on a side stream (real steps; cuDNN/cuBLAS pick their
  kernels and allocate their workspaces there, as capture requires);
* the next call copies its inputs into static buffers, captures the step, and replays it once
  (capture itself runs nothing, so no step is lost or repeated);
* later calls copy their inputs into the buffers and replay. A call whose inputs differ in shape or
  dtype from the captured ones runs eagerly instead (e.g. a smaller last batch).

Random draws inside the step (times, noise, dropout) use PyTorch's graph-safe CUDA generator: each
replay draws fresh values. Anything that reads a device tensor on the host inside the step (a
finiteness check, a data-dependent branch, a sync-ing OT solver) cannot be captured; the capture
then fails with an error that says so.

Reference: the "whole-network capture" recipe of the PyTorch CUDA-graphs documentation
(https://pytorch.org/docs/stable/notes/cuda.html#cuda-graphs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["StepGraph", "make_capturable", "portable_optimizer_state"]


def make_capturable(optimizer: torch.optim.Optimizer) -> None:
    """Prepare ``optimizer`` in place for a captured step.

    Every param group gets ``capturable=True`` (where the optimizer has that option) and its
    learning rate as a 0-dim tensor on the parameters' device, so a scheduler's change
    (``fill_``) reaches the replayed step; step counters move to that device.

    Raises:
        ValueError: the optimizer has no ``capturable`` option.
    """
    for group in optimizer.param_groups:
        params = list(group["params"])
        if not params:
            continue
        device = params[0].device
        if "capturable" not in group:
            raise ValueError(
                f"optimizer {type(optimizer).__name__} has no capturable option; cuda_graph=True needs an optimizer "
                "that can be captured in a CUDA graph (torch.optim.Adam, AdamW, NAdam, RAdam, Adamax, ASGD, ...)"
            )
        group["capturable"] = True
        lr = group["lr"]
        if not isinstance(lr, Tensor):
            group["lr"] = torch.tensor(float(lr), dtype=torch.float32, device=device)
        elif lr.device != device:
            group["lr"] = lr.to(device)
        for p in params:
            state = optimizer.state.get(p)
            if state and isinstance(state.get("step"), Tensor) and state["step"].device != p.device:
                state["step"] = state["step"].to(device=p.device, dtype=torch.float32)


def portable_optimizer_state(state: dict) -> dict:
    """An optimizer ``state_dict`` with host learning rates (a checkpoint that loads on any device)."""
    for group in state.get("param_groups", []):
        if isinstance(group.get("lr"), Tensor):
            group["lr"] = float(group["lr"])
    return state


class StepGraph:
    """Run ``loss_fn(*inputs)`` + backward + clipping + ``optimizer.step()`` as one replayed CUDA graph.

    Args:
        loss_fn: ``(*inputs) → scalar loss`` (differentiable; called with the static buffers when captured).
        optimizer: a capturable optimizer (:func:`make_capturable`).
        params: the parameters the step updates (for clipping and the eager steps' gradients).
        clip: ``grads → None`` applied between backward and the optimizer step, or ``None``.
        warmup: eager steps before the capture (at least 1; PyTorch's recipe uses 3).

    Call it with the step's inputs (tensors on one CUDA device, or ``None``); it returns the loss,
    detached. The returned tensor is the graph's static output: read or copy it before the next call.
    """

    def __init__(self, loss_fn: Callable[..., Tensor], optimizer: torch.optim.Optimizer, params: Sequence[Tensor], *,
                 clip: Callable[[list[Tensor]], None] | None = None, warmup: int = 3):
        if not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"warmup must be a positive int, got {warmup!r}")
        self.loss_fn, self.optimizer, self.params, self.clip, self.warmup = loss_fn, optimizer, list(params), clip, warmup
        self.calls = 0
        self.eager_calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self._static: tuple[Tensor | None, ...] = ()
        self._signature = None
        self._loss: Tensor | None = None
        self._stream: torch.cuda.Stream | None = None

    @property
    def captures_next(self) -> bool:
        """Whether the next call captures the graph."""
        return self.graph is None and self.calls >= self.warmup

    @staticmethod
    def _sig(inputs) -> tuple:
        return tuple(None if x is None else (tuple(x.shape), x.dtype, x.device) for x in inputs)

    def _body(self, inputs) -> Tensor:
        loss = self.loss_fn(*inputs)
        loss.backward()
        if self.clip is not None:
            self.clip([p for p in self.params if p.grad is not None])
        self.optimizer.step()
        return loss.detach()

    def _eager(self, inputs) -> Tensor:
        # before the capture, gradients are freed (the capture then allocates them in its pool); after it,
        # they are the graph's static buffers and are zeroed in place, which the next replay overwrites
        self.optimizer.zero_grad(set_to_none=self.graph is None)
        self.eager_calls += 1
        return self._body(inputs)

    def __call__(self, *inputs: Tensor | None) -> Tensor:
        self.calls += 1
        if self.graph is None and self.calls <= self.warmup:
            current = torch.cuda.current_stream()
            if self._stream is None:
                self._stream = torch.cuda.Stream()
            self._stream.wait_stream(current)
            with torch.cuda.stream(self._stream):
                loss = self._eager(inputs)
            current.wait_stream(self._stream)
            loss.record_stream(current)
            return loss
        if self.graph is None:
            return self._capture(inputs)
        if self._sig(inputs) != self._signature:
            return self._eager(inputs)
        for buf, x in zip(self._static, inputs):
            if buf is not None:
                buf.copy_(x)
        self.graph.replay()
        return self._loss

    def _capture(self, inputs) -> Tensor:
        self._signature = self._sig(inputs)
        self._static = tuple(None if x is None else x.detach().clone() for x in inputs)
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        try:
            # thread-local: a worker thread may be pairing the next batch on the GPU meanwhile (prefetch_pairs)
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                loss = self._body(self._static)
        except Exception as err:  # noqa: BLE001 — re-raised with what to do about it
            raise RuntimeError(
                "cuda_graph=True: capturing the training step as a CUDA graph failed. The step must not read "
                "device tensors on the host (a finiteness check, .item(), a data-dependent branch, an OT solver "
                "that synchronises) and the optimizer must support capture; set cuda_graph=False to train "
                f"without it. Capture error: {type(err).__name__}: {err}"
            ) from err
        self.graph, self._loss = graph, loss
        graph.replay()
        return loss
