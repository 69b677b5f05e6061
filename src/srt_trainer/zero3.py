"""Forwards of a student whose parameters DeepSpeed ZeRO-3 partitioned, run outside any DeepSpeed engine.

Under ``accelerate launch`` with a ZeRO-3 config (``zero3_init_flag``), every parameter is cut across the
processes when the student is loaded; each process holds a slice, and a forward first needs the full tensors.
``ParameterFetcher`` gets them with DeepSpeed's own ``GatheredParameters``, one unit at a time (a decoder layer,
or a module outside the layers that owns parameters) around that unit's forward, so a process holds at most about
one decoder layer's full parameters above its slice; ``whole=True`` gathers the whole model once instead (no
gathering per forward, where a full copy fits). Gathering is collective, so with per-unit gathering every process
must run the same sequence of forwards: ``Lockstep`` has a process that ran out of work join the others' forwards
with an empty one until all are done.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch

GATHER_MODES = ("layer", "model")


def is_partitioned(model: torch.nn.Module) -> bool:
    """Whether ZeRO-3 partitioned ``model``'s parameters (they carry DeepSpeed's ``ds_id``)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


def _zero_params(module: torch.nn.Module, recurse: bool) -> list[torch.nn.Parameter]:
    # adapter weights added after loading (PEFT) are ordinary tensors: nothing to gather
    return [p for p in module.parameters(recurse=recurse) if hasattr(p, "ds_id")]


def gather_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules gathered as one: each block of a ``ModuleList`` (a decoder layer), and every other module that
    owns parameters directly (embeddings, the final norm, the output layer)."""
    units: list[torch.nn.Module] = []
    inside: set[int] = set()
    for module in model.modules():
        if id(module) in inside:
            continue
        if isinstance(module, torch.nn.ModuleList):
            for block in module:
                units.append(block)
                inside.update(id(m) for m in block.modules())
            inside.add(id(module))
        elif _zero_params(module, recurse=False):
            units.append(module)
    return units


class ParameterFetcher:
    """Full parameters of a ZeRO-3-partitioned model where its forwards need them (see the module docstring).

    Per-unit gathering (``whole=False``) hooks each unit of ``gather_units``; ``held`` gathers a unit for code that
    reads its weights directly (the scorer's tiled output layer). ``close`` removes the hooks and gives every
    gathered tensor back to its partition, leaving the model as it was for the trainer's DeepSpeed engine.
    """

    def __init__(self, model: torch.nn.Module, whole: bool = False) -> None:
        import deepspeed

        self._gathered = deepspeed.zero.GatheredParameters
        self._open: dict[int, Any] = {}  # id(unit) -> its open GatheredParameters context
        self._hooks: list[Any] = []
        self.whole = whole
        self.total_numel = sum(p.ds_numel for p in _zero_params(model, recurse=True))
        self.peak_numel = 0  # the most gathered parameter elements held at once (per-unit gathering)
        if whole:
            self._enter(model, _zero_params(model, recurse=True), by_hook=False)
            return
        for unit in gather_units(model):
            self._hooks.append(unit.register_forward_pre_hook(self._pre_hook))
            self._hooks.append(unit.register_forward_hook(self._post_hook))

    def _enter(self, unit: torch.nn.Module, params: list[torch.nn.Parameter], by_hook: bool) -> bool:
        if id(unit) in self._open or not params:
            return False
        context = self._gathered(params, modifier_rank=None)
        context.__enter__()
        self._open[id(unit)] = (context, sum(p.ds_numel for p in params), by_hook)
        self.peak_numel = max(self.peak_numel, sum(numel for _, numel, _ in self._open.values()))
        return True

    def _exit(self, key: int) -> None:
        context, _, _ = self._open.pop(key)
        context.__exit__(None, None, None)

    def _pre_hook(self, unit: torch.nn.Module, args: Any) -> None:
        self._enter(unit, _zero_params(unit, recurse=True), by_hook=True)

    def _post_hook(self, unit: torch.nn.Module, args: Any, output: Any) -> None:
        # a unit that ``held`` gathered stays gathered until that block ends
        if self._open.get(id(unit), (None, 0, False))[2]:
            self._exit(id(unit))

    @contextlib.contextmanager
    def held(self, units: Iterable[torch.nn.Module | None]) -> Iterator[None]:
        """``units`` gathered for the block (their own hooks then leave them be); a no-op for the whole model."""
        entered = [
            u for u in units if u is not None and not self.whole and self._enter(u, _zero_params(u, True), False)
        ]
        try:
            yield
        finally:
            for unit in reversed(entered):
                self._exit(id(unit))

    def release(self) -> None:
        """Give back what a failed forward left gathered (its post-hooks never ran)."""
        for key in [k for k, (_, _, by_hook) in self._open.items() if by_hook]:
            self._exit(key)

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        for key in list(self._open):
            self._exit(key)


class Lockstep:
    """Keeps the processes' forwards in step: before each forward every process says whether it has real work
    (an all-reduce of one number); while any has, the others run an empty forward beside it."""

    def __init__(self, device: torch.device) -> None:
        import torch.distributed as dist

        self._dist = dist
        # gloo reduces CPU tensors; NCCL and the other accelerator backends reduce on the device
        backend = dist.get_backend() if dist.is_initialized() else "gloo"
        self._device = torch.device("cpu") if backend == "gloo" else device

    def any_working(self, working: bool) -> bool:
        """Whether any process has a real forward to run now (every process must call this before each forward)."""
        if not self._dist.is_initialized() or self._dist.get_world_size() == 1:
            return working
        flag = torch.tensor([1 if working else 0], device=self._device)
        self._dist.all_reduce(flag, op=self._dist.ReduceOp.MAX)
        return bool(flag.item())
