"""The train loop's cadence and stop rules (train/loop_control.py), step by step."""

from __future__ import annotations

from sbsd_jax.train.loop_control import LoopControl


def control(start: int = 0, total: int = 10) -> LoopControl:
    return LoopControl(
        start_step=start, total_steps=total, log_every=4, eval_every=5, checkpoint_every=3
    )


def test_logs_evaluates_and_checkpoints_on_their_cadence_and_at_the_last_step():
    loop = control()
    plans = {step: loop.plan(step) for step in range(1, 11)}
    assert [s for s, p in plans.items() if p.log] == [4, 8, 10]
    assert [s for s, p in plans.items() if p.evaluate] == [5, 10]
    assert [s for s, p in plans.items() if p.full_evaluation] == [10]
    saved = [
        step
        for step in range(1, 11)
        if loop.finish(
            step,
            evaluated=plans[step].evaluate,
            evaluation_interrupted=False,
            stop_requested=False,
        ).save
    ]
    assert saved == [3, 5, 6, 9, 10]  # every 3rd, after each evaluation, the last
    assert not loop.preempted and not loop.keeps_training(10) and loop.keeps_training(9)


def test_the_first_step_is_announced_unless_it_logs_anyway():
    assert control(start=0).plan(1).announce
    assert not control(start=3).plan(4).announce  # step 4 logs: nothing to add
    assert not control(start=9).plan(10).announce  # the last step logs too
    assert not control(start=0).plan(2).announce


def test_a_sigterm_checkpoints_this_step_and_leaves():
    loop = control()
    outcome = loop.finish(7, evaluated=False, evaluation_interrupted=False, stop_requested=True)
    assert (outcome.save, outcome.evaluation_pending, outcome.leave) == (True, False, True)
    assert loop.preempted and not loop.keeps_training(7)


def test_an_interrupted_evaluation_is_saved_pending_and_stops_the_run():
    loop = control()
    outcome = loop.finish(5, evaluated=False, evaluation_interrupted=True, stop_requested=False)
    assert (outcome.save, outcome.evaluation_pending, outcome.leave) == (True, True, True)
    assert loop.preempted


def test_a_stop_at_the_last_step_is_no_preemption():
    loop = control()
    outcome = loop.finish(10, evaluated=True, evaluation_interrupted=False, stop_requested=True)
    assert (outcome.save, outcome.leave) == (True, False)
    assert not loop.preempted


def test_an_interrupted_last_evaluation_still_preempts():
    """The final evaluation did not finish: the run is not done, resume must redo it."""
    loop = control()
    outcome = loop.finish(10, evaluated=False, evaluation_interrupted=True, stop_requested=False)
    assert outcome.leave and outcome.evaluation_pending and loop.preempted


def test_a_pending_evaluation_cut_short_again_means_no_step_is_taken():
    loop = control(start=5)
    assert loop.keeps_training(5)
    loop.pending_evaluation_interrupted()
    assert loop.preempted and not loop.keeps_training(5)
