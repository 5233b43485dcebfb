"""What a bad step leads to: the skip / halt / rollback state machine of a `HealthChecker`.

The device guard judges every step; the host learns each verdict one step late. This policy
counts consecutive skipped steps, asks for a rollback (the supervisor restores the last
good snapshot and calls `ActionPolicy.rollback_done`), and decides when to give up and halt.
Steps are always the device's own step numbers (the state's ``step``), never host call
counts.

When a critical alert halts (`ActionPolicy.on_alerts`): under ``halt``, always; under
``skip`` and ``rollback``, only when the device did not skip the step the alert reports
(its ``values["skipped"]`` is not true): skipping a bad update and training on is the
point of those actions, and they give up (``skips_exhausted``, itself critical) after
``max_skips`` skips in a row or ``max_rollbacks`` rollbacks; a critical alert that nothing
protected the state from (a hand-logged NaN loss, a user rule) stops the run. Under
``warn`` nothing halts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from jaxobs._src.host.alerts import ACTIONS, CRITICAL, DANGER, HALT, ROLLBACK, SKIP, WARN, Alert

__all__ = ["ActionPolicy", "RollbackRequest"]


@dataclasses.dataclass(frozen=True)
class RollbackRequest:
    """A rollback the policy asks for.

    Attributes:
      step: The step whose verdict asked for it.
      streak_start: The first step of the run of skipped steps: a snapshot taken at or
        before it is good.
    """

    step: int
    streak_start: int


class ActionPolicy:
    """The state machine behind ``HealthChecker(action=...)``.

    ``warn`` only alerts. ``skip`` skips bad steps on the device and halts after
    ``max_skips`` in a row. ``halt`` halts at the first bad step, at the first critical
    alert, and at the first host trigger (`trigger`). ``rollback`` skips, and after
    ``rollback_after`` skips in a row asks for the last good state to be restored, at most
    ``max_rollbacks`` times before it halts. Under ``skip`` and ``rollback`` a critical
    alert halts when the step it reports was not skipped on the device (`on_alerts`).

    Attributes:
      halt: The alert that stops training, once there is one.
      last_bad: Whether the last judged step was bad.
    """

    def __init__(
        self, action: str, *, max_skips: int, rollback_after: int, max_rollbacks: int
    ) -> None:
        if action not in ACTIONS:
            raise ValueError(f"ActionPolicy(action={action!r}): choose one of {ACTIONS}")
        self.action = action
        self.max_skips = max_skips
        self.rollback_after = rollback_after
        self.max_rollbacks = max_rollbacks
        self.reset()

    def reset(self) -> None:
        """Forget every verdict."""
        self.halt: Alert | None = None
        self.last_bad = False
        self.rollbacks = 0
        self._skips = 0
        self._streak_start: int | None = None
        self._count_from = 0
        self._pending: RollbackRequest | None = None
        self._gave_up = False

    @property
    def skips_on_device(self) -> bool:
        """Whether bad steps are skipped on the device (every action but ``warn``)."""
        return self.action != WARN

    @property
    def consecutive_skips(self) -> int:
        """Bad steps skipped in a row, up to the last judged step."""
        return self._skips

    def judge(
        self, step: int, *, bad: bool, alerts: Sequence[Alert] = (), on_device: bool = True
    ) -> list[Alert]:
        """Take the verdict on ``step``; returns the policy's own alerts.

        Args:
          step: The judged step (the device's step number).
          bad: The verdict.
          alerts: The alerts the rules raised for this step (the first one becomes the
            halting alert under ``action="halt"``).
          on_device: Whether the device guard judged the step (and skipped it when asked).
            False for a verdict the host reached on a logged record alone (a run without
            ``observe``): nothing was skipped, so only ``halt`` acts on it.

        Returns:
          The policy's alerts: ``rollback``, ``skips_exhausted`` or ``bad_step``.
        """
        self.last_bad = bad
        if not on_device:
            return self._halt_at(step, bad, alerts, [])
        skipped = bad and self.skips_on_device and step >= self._count_from
        if skipped:
            if self._skips == 0:
                self._streak_start = step
            self._skips += 1
        else:
            self._skips = 0
        out: list[Alert] = []
        n = self._skips
        if self.action == ROLLBACK and n >= self.rollback_after and self._pending is None:
            if self.rollbacks >= self.max_rollbacks:
                out.extend(self._give_up_alert(step, f"{self.rollbacks} rollbacks did not help"))
            else:
                self.rollbacks += 1
                self._skips = 0
                start = self._streak_start if self._streak_start is not None else step
                self._pending = RollbackRequest(step=step, streak_start=start)
                out.append(
                    Alert(
                        "rollback",
                        DANGER,
                        step,
                        f"{n} consecutive steps skipped since step {start}: restoring the "
                        f"last good state (rollback {self.rollbacks} of at most "
                        f"{self.max_rollbacks}).",
                        values={"skips": n, "streak_start": start},
                    )
                )
        elif self.action in (SKIP, HALT) and n >= self.max_skips:
            out.extend(self._give_up_alert(step, f"{n} consecutive steps were skipped"))
        return self._halt_at(step, bad, alerts, out)

    def _halt_at(
        self, step: int, bad: bool, alerts: Sequence[Alert], out: list[Alert]
    ) -> list[Alert]:
        """Under ``halt``, the first bad step's first alert (or a ``bad_step`` one) halts."""
        if self.action == HALT and bad and self.halt is None:
            found = [*alerts, *out]
            if not found:
                found = [Alert("bad_step", DANGER, step, f"step {step} was bad; halting.")]
                out.extend(found)
            self.halt = found[0]
        return out

    def trigger(self, alert: Alert) -> None:
        """A host trigger fired (seed 001's: ``loss_spike``, or a layer's gradient norm
        above ``gradient_explode_thresh``): under ``halt`` its alert halts the run, unless
        an earlier one already has. The device cannot undo that step (the host judges it
        one step late), so the other actions only alert."""
        if self.action == HALT and self.halt is None:
            self.halt = alert

    def on_alerts(self, alerts: Sequence[Alert]) -> Alert | None:
        """Halt at the first critical alert of ``alerts`` that should stop the run: under
        ``halt`` any; under ``skip`` and ``rollback`` one whose step the device did not
        skip (``alert.values["skipped"]`` not true); under ``warn`` none.

        Returns:
          The alert that halted the run now, or None (no new halt).
        """
        if self.action == WARN or self.halt is not None:
            return None
        for alert in alerts:
            if alert.severity != CRITICAL:
                continue
            if self.action == HALT or alert.values.get("skipped") is not True:
                self.halt = alert
                return alert
        return None

    def take_rollback(self) -> RollbackRequest | None:
        """The pending rollback request, if any (taken: the next call returns None)."""
        request, self._pending = self._pending, None
        return request

    def rollback_done(self, at_step: int) -> None:
        """A rollback landed before step ``at_step`` ran: the verdicts of earlier steps,
        dispatched on the old state, no longer count towards the skip limits."""
        self._count_from = at_step
        self._skips = 0

    def give_up(self, step: int, why: str) -> Alert | None:
        """Halt because nothing can save the run (``why``); returns the alert, once."""
        alerts = self._give_up_alert(step, why)
        return alerts[0] if alerts else None

    def _give_up_alert(self, step: int, why: str) -> list[Alert]:
        if self._gave_up:
            return []
        self._gave_up = True
        alert = Alert(
            "skips_exhausted",
            CRITICAL,
            step,
            f"{why} (since step {self._streak_start}): the state itself is bad, not a batch. "
            "Halting; restart from a checkpoint with a lower learning rate.",
            values={"skips": self._skips, "rollbacks": self.rollbacks},
        )
        if self.halt is None:
            self.halt = alert
        return [alert]
