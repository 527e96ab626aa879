"""What the CPU censuses (training.census, training.launch_census) share: the line of code an op is counted at,
patches of torch functions that act in one thread only, and the tensors known to live in host memory."""

from __future__ import annotations

import os
import sys
import threading
import weakref

import torch

# the repository root: sites are named from it
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TORCH = os.path.dirname(torch.__file__)
_OPTIM = os.path.join(_TORCH, "optim")
_TRITON = os.sep + "triton" + os.sep
# frames that are the census's own machinery, never a site
_CENSUS_FILES = tuple(
    os.path.join(ROOT, "training", name)
    for name in ("census_sites.py", "census.py", "launch_census.py", "launch_table.py")
)


class Site:
    """Where an op was called from: the innermost frame outside torch, Triton, the census and generated code
    (``where``: "path:line" from the repository root, or None when every frame is such a frame), and what the
    frames inside it were."""

    __slots__ = ("where", "in_triton", "in_optim")

    def __init__(self, frame):
        self.where, self.in_triton, self.in_optim = None, False, False
        while frame is not None:
            path = frame.f_code.co_filename
            self.in_triton = self.in_triton or _TRITON in path
            self.in_optim = self.in_optim or path.startswith(_OPTIM)
            if not (path.startswith((_TORCH, "<")) or _TRITON in path or path in _CENSUS_FILES):
                self.where = f"{os.path.relpath(path, ROOT)}:{frame.f_lineno}"
                return
            frame = frame.f_back


class ThreadPatches:
    """Replaces attributes of torch (functions, Tensor methods) for the duration of a census; the replacements
    act only in the thread that made the patches (``mine()``), other threads get the original behaviour."""

    def __init__(self):
        self.thread = threading.get_ident()
        self._saved: list[tuple[object, str, object]] = []

    def mine(self) -> bool:
        return threading.get_ident() == self.thread

    def patch(self, owner, name: str, make) -> None:
        """owner.name = make(original)."""
        original = getattr(owner, name)
        self._saved.append((owner, name, original))
        setattr(owner, name, make(original))

    def undo(self) -> None:
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
        self._saved.clear()


class HostTensors:
    """Tensors that a CUDA run would hold in host memory, as far as a CPU run can tell (on CPU every tensor is
    a "device" tensor otherwise): made from Python or numpy data without a device (``torch.tensor(data)``,
    ``torch.as_tensor(data)``, ``torch.from_numpy``), copied to the host (``.cpu()``, ``.to("cpu")`` of a
    device tensor), and ``.to(dtype)`` of one of these; views of them count too. Tensors made in other
    threads, or before the census began, are not known (they count as device tensors).

    install() patches the calls that make or move such tensors; each copy between host and device they make
    is reported to ``on_copy(name, direction, site)`` (direction "h2d" or "d2h"), unless it cannot block the
    host (``non_blocking`` from pinned memory, or into pinned memory for ``.to("cpu", non_blocking=True)``)."""

    def __init__(self, patches: ThreadPatches, on_copy=None):
        self.patches = patches
        self.on_copy = on_copy or (lambda name, direction, site: None)
        self._tensors: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

    def add(self, tensor) -> None:
        if isinstance(tensor, torch.Tensor):
            self._tensors[id(tensor)] = tensor

    def has(self, tensor) -> bool:
        if not isinstance(tensor, torch.Tensor):
            return False
        base = tensor._base if tensor._base is not None else tensor
        return self._tensors.get(id(tensor)) is tensor or self._tensors.get(id(base)) is base

    def all_host(self, tensors: list) -> bool:
        """Every tensor of an op's arguments lives on the host (an op on host tensors runs on the CPU)."""
        return bool(tensors) and all(self.has(t) for t in tensors)

    def install(self) -> None:
        p = self.patches
        for name in ("tensor", "as_tensor", "asarray"):
            p.patch(torch, name, lambda original, name=name: self._from_data(name, original))
        p.patch(torch, "from_numpy", lambda original: self._made_on_host(original))
        p.patch(torch.Tensor, "new_tensor", self._new_tensor)
        p.patch(torch.Tensor, "to", self._to)
        p.patch(torch.Tensor, "cpu", lambda original: self._to_host("cpu", original))
        for name in ("tolist", "numpy"):
            p.patch(torch.Tensor, name, lambda original, name=name: self._read(name, original))

    def _copy(self, name: str, direction: str) -> None:
        self.on_copy(name, direction, Site(sys._getframe(1)))

    def _moved(self, tensor, out) -> None:
        """out is tensor's copy in host memory; on a CPU run the copy is often tensor itself, which stays a
        device tensor (a later read of it counts again: an upper bound)."""
        if out is not tensor:
            self.add(out)

    def _from_data(self, name: str, original):
        def wrapper(data, *args, **kwargs):
            if not self.patches.mine():
                return original(data, *args, **kwargs)
            positional = args[1] if name == "as_tensor" and len(args) > 1 else None
            device = kwargs.get("device", positional)
            out = original(data, *args, **kwargs)
            host_source = not isinstance(data, torch.Tensor) or self.has(data)
            if device is None:
                if host_source:
                    self.add(out)
            elif host_source:
                self._copy(name, "h2d")  # a pageable host->device copy: waits for the stream
            return out

        return wrapper

    def _made_on_host(self, original):
        def wrapper(*args, **kwargs):
            out = original(*args, **kwargs)
            if self.patches.mine():
                self.add(out)
            return out

        return wrapper

    def _new_tensor(self, original):
        def wrapper(tensor, data, *args, **kwargs):
            out = original(tensor, data, *args, **kwargs)
            if not self.patches.mine():
                return out
            if kwargs.get("device") is None and self.has(tensor):
                self.add(out)
            else:
                self._copy("new_tensor", "h2d")
            return out

        return wrapper

    def _to(self, original):
        def wrapper(tensor, *args, **kwargs):
            out = original(tensor, *args, **kwargs)
            if not self.patches.mine():
                return out
            device = _target_device(args, kwargs)
            non_blocking = kwargs.get("non_blocking", any(a is True for a in args))
            if self.has(tensor):
                if device is None:
                    self.add(out)  # a dtype cast on the host
                    return out
                self._tensors.pop(id(out), None)  # on a CPU run out may be tensor itself
                if not (non_blocking and tensor.is_pinned()):
                    self._copy("to", "h2d")  # pageable, or not non_blocking: waits for the stream
            elif device is not None and device.type == "cpu":
                self._moved(tensor, out)
                if not non_blocking:  # non_blocking: into pinned memory, read after an event
                    self._copy("to", "d2h")
            return out

        return wrapper

    def _to_host(self, name: str, original):
        def wrapper(tensor, *args, **kwargs):
            out = original(tensor, *args, **kwargs)
            if self.patches.mine() and not self.has(tensor):
                self._moved(tensor, out)
                self._copy(name, "d2h")
            return out

        return wrapper

    def _read(self, name: str, original):
        def wrapper(tensor, *args, **kwargs):
            if self.patches.mine() and not self.has(tensor):
                self._copy(name, "d2h")
            return original(tensor, *args, **kwargs)

        return wrapper


def _target_device(args, kwargs) -> torch.device | None:
    """The device of Tensor.to(...)'s arguments, if it names one."""
    for a in (*args, kwargs.get("device")):
        if isinstance(a, (str, torch.device)):
            return torch.device(a)
        if isinstance(a, torch.Tensor):  # .to(other): other's device
            return a.device
    return None
