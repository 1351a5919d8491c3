"""What the train loop does after each step: log, evaluate, checkpoint, stop. One object.

The loop asks `plan(step)` what a step calls for, runs it, and reports back to `finish(step,
...)` whether the evaluation ran and whether a stop was asked for (SIGTERM, seen by the
preemption watcher, or an evaluation cut short by one). The answer says whether to checkpoint,
whether that checkpoint is evaluation-pending (the step's evaluation must be redone first on
resume), and whether to leave the loop now. The rules:

- log every `log_every` steps and at the last step; evaluate every `eval_every` steps and
  at the last step (that one in full);
- checkpoint every `checkpoint_every` steps, after every evaluation, at the last step, and
  whenever a stop was asked for;
- an interrupted evaluation stops the run (preempted) and marks its checkpoint pending;
- a stop asked for at the last step is no preemption: the run has finished anyway.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class StepPlan:
    log: bool
    evaluate: bool
    full_evaluation: bool  # the last step: every example of every split
    announce: bool  # the first step of this start compiled the program: say so now


@dataclasses.dataclass(frozen=True)
class StepOutcome:
    save: bool
    evaluation_pending: bool
    leave: bool  # preempted: stop training now, skip the wrap-up


@dataclasses.dataclass
class LoopControl:
    """The loop's cadence and whether the run was preempted (the one mutable flag)."""

    start_step: int
    total_steps: int
    log_every: int
    eval_every: int
    checkpoint_every: int
    preempted: bool = False

    def keeps_training(self, step: int) -> bool:
        return step < self.total_steps and not self.preempted

    def plan(self, step: int) -> StepPlan:
        """What step `step` (just taken, 1-based count of optimizer steps) calls for."""
        last = step == self.total_steps
        return StepPlan(
            log=step % self.log_every == 0 or last,
            evaluate=step % self.eval_every == 0 or last,
            full_evaluation=last,
            announce=step == self.start_step + 1 and step % self.log_every != 0 and not last,
        )

    def finish(
        self, step: int, *, evaluated: bool, evaluation_interrupted: bool, stop_requested: bool
    ) -> StepOutcome:
        """After the step's evaluation (if any): checkpoint? pending? leave the loop?"""
        last = step == self.total_steps
        stop = evaluation_interrupted or stop_requested
        leave = evaluation_interrupted or (stop and not last)
        self.preempted = self.preempted or leave
        return StepOutcome(
            save=step % self.checkpoint_every == 0 or evaluated or last or stop,
            evaluation_pending=evaluation_interrupted,
            leave=leave,
        )

    def pending_evaluation_interrupted(self) -> None:
        """The evaluation a resumed run redoes first was cut short again: stop at once."""
        self.preempted = True
