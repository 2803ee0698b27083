"""Optional packages imported where they are needed: a missing one is a UserError naming the pip command, never an
ImportError trace. Needs only errors.py, so any module may use it."""
from __future__ import annotations

import importlib

from .errors import UserError


def require(module: str, extra: str | None = None, what: str | None = None, package: str | None = None,
            otherwise: str = ""):
    """`module` imported, or a UserError: "<package> is not installed: pip install groupvit-edge[<extra>]", or
    with `what` "<what> needs <package>: …". `package` is the name a user knows (default `module`); without
    `extra` the pip command installs `module` itself; `otherwise` is appended as is (", or pass --flag")."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package = package or module
        need = f"{what} needs {package}" if what else f"{package} is not installed"
        pip = f"pip install groupvit-edge[{extra}]" if extra else f"pip install {module}"
        raise UserError(f"{need}: {pip}{otherwise}") from None
