"""A kill mid-epoch, for the resume tests of training (test_resume) and pretraining (test_pretraining)."""

from __future__ import annotations

from collections.abc import Callable


class Killed(BaseException):
    """Stands in for SIGKILL: BaseException, so nothing in the loop may catch it."""


def dies_after_first_step(real_epoch: Callable, kill_epoch: int) -> Callable:
    """``real_epoch`` (a loop's per-epoch function taking ``(net, loader, ..., epoch=)``), except that epoch
    ``kill_epoch`` dies after its first optimiser step."""

    def epoch_fn(net, loader, *args, epoch, **kwargs):
        if epoch != kill_epoch:
            return real_epoch(net, loader, *args, epoch=epoch, **kwargs)

        def one_batch_then_die():
            yield next(iter(loader))
            raise Killed

        return real_epoch(net, one_batch_then_die(), *args, epoch=epoch, **kwargs)

    return epoch_fn
