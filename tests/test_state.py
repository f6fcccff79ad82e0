"""TrainState: the checkpoint's progress keys written and read in one place; `is_finished`; `record`."""

from __future__ import annotations

from training.loop import TrainState


def test_to_dict_and_from_dict_are_inverse_and_ignore_other_keys() -> None:
    state = TrainState(epoch=3, batch=2, step=40, best_acc=0.5, best_epoch=2, bad_epochs=1, stopped_early=False)
    checkpoint = {"model": {}, "optimizer": {}, "scheduler": {"last_epoch": 40}, **state.to_dict()}
    assert TrainState.from_dict(checkpoint) == state


def test_is_finished_when_stopped_early_or_every_epoch_is_trained() -> None:
    assert not TrainState(epoch=2).is_finished(3)
    assert TrainState(epoch=3).is_finished(3)
    assert not TrainState(epoch=3, batch=1).is_finished(4)  # inside epoch 4
    assert not TrainState(epoch=3).is_finished(5)  # extended with --epochs
    assert TrainState(epoch=1, stopped_early=True).is_finished(5)


def test_record_tracks_the_best_epoch_and_stops_after_patience_bad_epochs() -> None:
    state = TrainState()
    assert state.record(0.5, 1, patience=2) and (state.best_epoch, state.epoch, state.batch) == (1, 1, 0)
    assert not state.record(0.5, 2, patience=2) and state.bad_epochs == 1 and not state.stopped_early
    assert not state.record(0.4, 3, patience=2) and state.stopped_early
    assert (state.best_acc, state.best_epoch) == (0.5, 1)
    never = TrainState()
    for epoch in range(1, 6):
        never.record(0.0 if epoch > 1 else 0.1, epoch, patience=0)
    assert not never.stopped_early  # patience 0: no early stopping
