"""The slowdown itself (see sitecustomize.py beside it): imported only when
RNNLM_TEST_SLOWDOWN is set."""

from __future__ import annotations

from typing import Any

# What is slowed: module -> (class, methods).
TARGETS = {
    "rnnlm.models.batch": ("Batch", ("step", "add")),
    "rnnlm.models.engine": ("Engine", ("_score",)),
}


def slowed(fn: Any, factor: float) -> Any:
    """`fn`, then a sleep of (factor - 1) times what it took."""
    import functools
    import time

    @functools.wraps(fn)  # the original stays reachable as `__wrapped__`
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            time.sleep((factor - 1) * (time.perf_counter() - t0))

    wrapper.rnnlm_slowdown = factor  # type: ignore[attr-defined]
    return wrapper


def _patch_on_import(factor: float) -> None:
    import importlib.abc
    import sys
    from types import ModuleType

    def patch(module: ModuleType) -> None:
        cls_name, methods = TARGETS[module.__name__]
        cls = getattr(module, cls_name)
        for name in methods:  # an AttributeError here: a renamed method, said at once
            setattr(cls, name, slowed(getattr(cls, name), factor))

    class Loader(importlib.abc.Loader):
        """The module's own loader, then the patch."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:  # get_source for tracebacks, and the rest
            return getattr(self.inner, name)

        def create_module(self, spec: Any) -> Any:
            return self.inner.create_module(spec)

        def exec_module(self, module: ModuleType) -> None:
            self.inner.exec_module(module)
            patch(module)

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
            if name not in TARGETS:
                return None
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(name, path, target)
                if spec is not None and spec.loader is not None:
                    spec.loader = Loader(spec.loader)
                    return spec
            return None

    for name in TARGETS:
        if name in sys.modules:  # imported already (not at startup, but to be sure)
            patch(sys.modules[name])
    sys.meta_path.insert(0, Finder())


def install(value: str) -> None:
    """Slow the engine down by the factor `value` (RNNLM_TEST_SLOWDOWN's text)."""
    try:
        factor = float(value)
    except ValueError:
        factor = float("nan")
    if not factor >= 1:
        raise ValueError(f"RNNLM_TEST_SLOWDOWN must be a number >= 1, not {value!r}")
    if factor > 1:
        _patch_on_import(factor)
