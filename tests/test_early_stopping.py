"""Keep-best: a run whose validation score peaks early returns the best epoch's weights, not the last epoch's."""

from __future__ import annotations

import pytest
import torch

import assurexray.learning.training as training
from test_training import _options
from training_options import train

#: The monitored score (macro AUC, larger is better) per epoch: best at epoch 1, then worse every epoch.
PEAKS_EARLY = {1: 0.9, 2: 0.6, 3: 0.5}


@pytest.mark.parametrize("patience", [None, 1], ids=["no-early-stop", "stops-after-epoch-2"])
def test_a_run_whose_validation_peaks_early_keeps_the_best_epochs_weights_not_the_last(tmp_path, monkeypatch,
                                                                                       patience):
    validated: list[dict[str, torch.Tensor]] = []  # the weights validated at each epoch, in epoch order
    real_predict, real_scores = training.predict_shard, training.val_scores

    def recording_predict(model, *args, **kwargs):
        validated.append({k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        return real_predict(model, *args, **kwargs)

    def peaking_scores(*args, epoch, **kwargs):
        return {**real_scores(*args, epoch=epoch, **kwargs), "macro_auc": PEAKS_EARLY[epoch]}

    monkeypatch.setattr(training, "predict_shard", recording_predict)
    monkeypatch.setattr(training, "val_scores", peaking_scores)
    result = train(**_options(tmp_path, epochs=3, patience=patience, monitor="macro_auc", live_dir=None))

    ran = 3 if patience is None else 2  # patience 1: epoch 2 does not improve, so the run stops there
    assert [row["epoch"] for row in result.history] == list(range(1, ran + 1)) and len(validated) == ran
    assert result.meta["best_epoch"] == 1 and result.meta["best_score"] == PEAKS_EARLY[1]
    best, last = validated[0], validated[-1]
    # Training moved the weights after epoch 1, so "best" and "last" are distinguishable...
    assert any(not torch.equal(best[k], last[k]) for k in best if best[k].is_floating_point())
    # ...and the returned model holds epoch 1's, every parameter and buffer.
    returned = {k: v.detach().cpu() for k, v in result.model.state_dict().items()}
    assert returned.keys() == best.keys()
    assert all(torch.equal(returned[k], best[k]) for k in best)
