"""Waiting for a kernel's answers over jupyter_client's channels, giving up when it dies.

Each wait raises ``queue.Empty`` past its time or as soon as the kernel's process has ended (it
would never answer); callers turn that into their own error.
"""

from __future__ import annotations

import queue
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from analysis.runner.kernels import KernelProcess

__all__ = ["connected", "idle_after", "reply_to"]


async def _next(get: Any, kernel: KernelProcess, give_up: float) -> dict[str, Any]:
    """The next message from ``get`` (a channel's ``get_*_msg``); ``queue.Empty`` past ``give_up``
    or as soon as the kernel has died (it would never answer)."""
    while True:
        try:
            msg: dict[str, Any] = await get(timeout=max(0.0, min(0.1, give_up - time.monotonic())))
            return msg
        except queue.Empty:
            if time.monotonic() >= give_up or not kernel.is_alive():
                raise


async def reply_to(client: Any, kernel: KernelProcess, msg_id: str, timeout_s: float) -> dict[str, Any]:
    """The shell reply to ``msg_id`` (``queue.Empty`` past ``timeout_s``, or if the kernel dies)."""
    give_up = time.monotonic() + timeout_s
    while True:
        reply = await _next(client.get_shell_msg, kernel, give_up)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply


async def connected(client: Any, kernel: KernelProcess, timeout_s: float) -> None:
    """Until a ``kernel_info`` request is answered on shell *and* iopub is subscribed.

    A reply on shell does not mean the iopub subscription is in place: a SUB socket that
    connects after the kernel published loses those messages (ZeroMQ's "slow joiner"), and a
    job waiting for its ``idle`` would wait out its deadline. The kernel's XPUB socket sends
    ``iopub_welcome`` as the subscription reaches it (JEP 65, ipykernel 7); the idle status of
    the request shows it too. Until one of them arrives the request is repeated, as
    ``jupyter_client``'s ``wait_for_ready`` does.
    """
    give_up = time.monotonic() + timeout_s
    while True:
        msg_id = client.kernel_info()
        await reply_to(client, kernel, msg_id, max(0.0, give_up - time.monotonic()))
        try:
            await _subscribed(client, kernel, msg_id, min(0.5, max(0.0, give_up - time.monotonic())))
            return
        except queue.Empty:
            if time.monotonic() >= give_up or not kernel.is_alive():
                raise


async def _subscribed(client: Any, kernel: KernelProcess, msg_id: str, timeout_s: float) -> None:
    """Read iopub until the kernel's welcome, or its idle status after ``msg_id``."""
    give_up = time.monotonic() + timeout_s
    while True:
        msg = await _next(client.get_iopub_msg, kernel, give_up)
        if msg["msg_type"] == "iopub_welcome" or _idle_after(msg, msg_id):
            return


def _idle_after(msg: dict[str, Any], msg_id: str) -> bool:
    """Whether ``msg`` is the kernel's idle status after the request ``msg_id``."""
    return bool(
        msg["parent_header"].get("msg_id") == msg_id
        and msg["msg_type"] == "status"
        and msg["content"].get("execution_state") == "idle"
    )


async def idle_after(client: Any, kernel: KernelProcess, msg_id: str, timeout_s: float) -> None:
    """Read iopub until the kernel reports idle after ``msg_id`` (as :func:`reply_to` gives up)."""
    give_up = time.monotonic() + timeout_s
    while True:
        msg = await _next(client.get_iopub_msg, kernel, give_up)
        if _idle_after(msg, msg_id):
            return
