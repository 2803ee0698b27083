"""Measuring one configuration apart from the command that asked for it (`bench`'s rows, `tune`'s configurations).

Each runs in a spawned process of its own, so its peak RSS is its own and a crash in a backend's native code (a
segfault, the out-of-memory killer) ends that process, not the command. What a backend raises while opening an
artifact or running a graph is that configuration's failure (`BackendFailed`, told apart by `GuardedRuntime`
from errors in the measuring code around it). A user error found only while measuring ends the command with its
sentence; an error in the measuring code is a bug and stays a traceback.
"""
from __future__ import annotations

import multiprocessing
import queue as queues
import signal
import traceback
from dataclasses import dataclass
from typing import Callable, TypeVar

from ..errors import UserError
from ..runtimes.base import Runtime

POLL_SECONDS = 1.0      # how often the parent checks that a silent child is still alive
Result = TypeVar("Result")


@dataclass(frozen=True)
class Failure:
    """Why a configuration could not be measured: the first line of what its backend said, and the traceback
    when it raised (None when its process died)."""
    reason: str
    traceback: str | None = None

    @classmethod
    def of(cls, error: BaseException) -> Failure:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        return cls(reason, "".join(traceback.format_exception(error)))


class BackendFailed(Exception):
    """The backend raised while running one of the artifact's graphs (the cause is its own exception)."""


def backend_call(call, *args):
    try:
        return call(*args)
    except Exception as error:
        raise BackendFailed(str(error)) from error


class GuardedRuntime(Runtime):
    """A runtime whose every call that reaches the backend turns what it raises into BackendFailed."""

    def __init__(self, runtime: Runtime):
        self.runtime, self.name, self.manifest = runtime, runtime.name, runtime.manifest
        if hasattr(runtime, "encode_images_async"):
            self.encode_images_async = self._encode_stream

    @property
    def description(self) -> str:
        return backend_call(lambda: self.runtime.description)

    def encode_image(self, pixels):
        return backend_call(self.runtime.encode_image, pixels)

    def encode_text(self, token_ids):
        return backend_call(self.runtime.encode_text, token_ids)

    def _encode_stream(self, windows):
        encodings = self.runtime.encode_images_async(windows)
        while True:
            try:
                encoding = next(encodings)
            except StopIteration:
                return
            except Exception as error:
                raise BackendFailed(str(error)) from error
            yield encoding

    def close(self) -> None:
        self.runtime.close()


def open_guarded(open_runtime: Callable[[], Runtime]) -> GuardedRuntime | Failure:
    """The runtime `open_runtime()` returns, guarded; or the Failure of the backend refusing to open it (a missing
    device or precision, a file that fails its check, a graph the backend cannot compile)."""
    try:
        return GuardedRuntime(open_runtime())
    except Exception as error:
        return Failure.of(error)


def run_isolated(function: Callable[..., Result], *args) -> Result | Failure:
    """`function(*args)` in a spawned process: its result, or the Failure of the process dying before it sent one.
    A UserError it raises is raised here with its sentence; anything else it raises is a bug, raised as one."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(function, args, queue))
    process.start()
    try:
        message = _receive(process, queue)
    except BaseException:
        process.kill()
        raise
    finally:
        process.join()
    if message is None:
        return Failure(_death(process.exitcode))
    kind, payload = message
    if kind == "user_error":
        raise UserError(payload)
    if kind == "bug":
        raise RuntimeError(f"measuring in a separate process raised:\n{payload}")
    return payload


def _child(function, args, queue):
    """The spawned side sends ("result", value), ("user_error", sentence) or ("bug", traceback)."""
    try:
        message = ("result", function(*args))
    except UserError as error:
        message = ("user_error", str(error))
    except Exception:
        message = ("bug", traceback.format_exc())
    queue.put(message)


def _receive(process, queue):
    """What the child sent, or None when it died without sending anything (a crash in native code, a kill, the
    out-of-memory killer)."""
    while process.is_alive():
        try:
            return queue.get(timeout=POLL_SECONDS)
        except queues.Empty:
            continue
    try:        # it may have sent its message just before it exited
        return queue.get(timeout=POLL_SECONDS)
    except queues.Empty:
        return None


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit {exitcode}"
