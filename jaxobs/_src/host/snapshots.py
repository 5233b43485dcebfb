"""Host snapshots of the training state, for rollbacks and for crash dumps.

A snapshot is taken in two halves. On the training thread, right after the step is
dispatched, `Snapshots.take` makes device copies of the state's arrays (the caller may
donate the originals to the next step). On the delivery thread, once the step has been
judged, `Snapshots.keep` moves the copies to host memory, keyed by the state's own step
number (the snapshot is the state *before* that step). The newest kept snapshot is saved
with orbax into a crash dump (`Snapshots.save_checkpoint`).

JAX is imported where it is used: this module is part of the host layer.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import pathlib
import threading
from typing import Any

__all__ = ["PendingSnapshot", "Snapshot", "Snapshots"]

logger = logging.getLogger("jaxobs")


@dataclasses.dataclass(frozen=True)
class PendingSnapshot:
    """Device copies of a state's leaves, not yet judged (see `Snapshots.take`)."""

    treedef: Any
    copies: list[Any]
    shardings: list[Any]


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A state kept in host memory.

    Attributes:
      step: The step this state is the input of (the state's own step number).
      treedef: The state's tree structure.
      leaves: Its leaves as host (NumPy) arrays.
      shardings: Each leaf's sharding on the device (None for non-arrays).
    """

    step: int
    treedef: Any
    leaves: list[Any]
    shardings: list[Any]

    def tree(self) -> Any:
        """The state put back on the device, each leaf with its own sharding."""
        import jax

        return jax.tree.unflatten(
            self.treedef,
            [
                jax.device_put(h, s) if s is not None else h
                for h, s in zip(self.leaves, self.shardings, strict=True)
            ],
        )

    def host_tree(self) -> Any:
        """The state with host (NumPy) leaves."""
        import jax

        return jax.tree.unflatten(self.treedef, self.leaves)


class Snapshots:
    """The last ``keep`` good states of an observed step (thread-safe).

    Args:
      keep: How many snapshots to hold (the newest ones).
    """

    def __init__(self, keep: int = 2):
        self._kept: collections.deque[Snapshot] = collections.deque(maxlen=keep)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._kept)

    @staticmethod
    def take(tree: Any) -> PendingSnapshot:
        """Device copies of ``tree``'s arrays now, before the caller can donate them."""
        import jax
        import jax.numpy as jnp

        leaves, treedef = jax.tree.flatten(tree)
        copies = [jnp.copy(x) if isinstance(x, jax.Array) else x for x in leaves]
        shardings = [getattr(x, "sharding", None) for x in leaves]
        return PendingSnapshot(treedef, copies, shardings)

    def keep(self, pending: PendingSnapshot, step: int) -> Snapshot:
        """Move ``pending`` to host memory as the state before ``step``; returns it."""
        import jax

        snapshot = Snapshot(
            int(step), pending.treedef, jax.device_get(pending.copies), pending.shardings
        )
        with self._lock:
            self._kept.append(snapshot)
        return snapshot

    def newest(self, at_or_before: int | None = None) -> Snapshot | None:
        """The newest snapshot (whose step is at most ``at_or_before``, when given)."""
        with self._lock:
            kept = [s for s in self._kept if at_or_before is None or s.step <= at_or_before]
        return kept[-1] if kept else None

    def save_checkpoint(self, directory: pathlib.Path) -> dict[str, Any] | None:
        """Save the newest snapshot with orbax as ``<directory>/ckpt-<step>``.

        Returns:
          ``{"path": "crash/ckpt-<step>", "step": step}`` for the crash dump, or None when
          there is no snapshot or it could not be saved (a warning says why).
        """
        snapshot = self.newest()
        if snapshot is None:
            return None
        path = (pathlib.Path(directory) / f"ckpt-{snapshot.step}").absolute()
        if not path.exists():
            try:
                import orbax.checkpoint as ocp
            except ImportError as e:
                logger.warning(
                    "jaxobs: no checkpoint in the crash dump (%s): pip install orbax-checkpoint "
                    "(or 'jaxobs[demo]')",
                    e,
                )
                return None
            try:
                tree = snapshot.host_tree()
                with contextlib.suppress(ImportError):
                    from flax import serialization

                    tree = serialization.to_state_dict(tree)
                checkpointer = ocp.StandardCheckpointer()
                checkpointer.save(path, tree)
                checkpointer.wait_until_finished()
                checkpointer.close()
            except Exception as e:  # a failed checkpoint must not hide the failure itself
                logger.warning(
                    "jaxobs: no checkpoint in the crash dump: orbax could not save %s: %s: %s",
                    path,
                    type(e).__name__,
                    e,
                )
                return None
        return {"path": f"{path.parent.name}/ckpt-{snapshot.step}", "step": snapshot.step}
