"""Ablation table from DVC experiments: configurations over seeds, paired differences, report and figure."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from assurexray.assessment.ablation import (
    COLUMNS,
    experiments_from_exp_show,
    main,
    measure,
    plot,
    render_markdown,
    summarise,
)

CLASSES = ["Normal", "Benign", "Malignant"]


def _predictions(seed: int, skill: float, first_test_row: int = 0) -> str:
    """val + test predictions; a higher ``skill`` puts more probability on the true class."""
    rng = np.random.default_rng(seed)
    rows = []
    for partition, n in (("val", 30), ("test", 45)):
        labels = np.arange(n) % 3
        for i, y in enumerate(labels):
            logits = rng.normal(size=3) + skill * np.eye(3)[y]
            p = np.exp(logits) / np.exp(logits).sum()
            rows.append({"row": first_test_row + i if partition == "test" else 100 + i, "image_id": f"IMG{i}", "partition": partition,
                         "label": CLASSES[y], "label_idx": y, "prob_Normal": p[0], "prob_Benign": p[1],
                         "prob_Malignant": p[2], "group": f"g{i // 2}", "center": 2 + i % 2})
    return pd.DataFrame(rows).to_csv(index=False)


def _files(seed: int, skill: float) -> dict[str, str]:
    auc = lambda v: {"value": v, "ci_low": v - 0.05, "ci_high": v + 0.05}  # noqa: E731
    center = {"headline": {"macro_auc": auc(0.6 + skill / 20)},
              "by_center": {"2": {"headline": {"macro_auc": auc(0.65 + skill / 20)}},
                            "3": {"headline": {"macro_auc": auc(0.55 + skill / 20)}}}}
    return {"metrics/center/eval/metrics.json": json.dumps(center),
            "metrics/stratified/eval/metrics.json": json.dumps({"headline": {"macro_auc": auc(0.9)}}),
            "metrics/center/explain/metrics.json": json.dumps(
                {"model": {"overall": {"pointing_game": auc(0.3 + skill / 10)}},
                 "baseline": {"overall": {"pointing_game": auc(0.2)}},
                 "validation": {"pointing_game": 0.1 + skill / 20 + seed / 100}}),
            "metrics/center/eval/predictions.csv": _predictions(seed, skill),
            # the stratified split is carved by base.seed: each seed has its own test images
            "metrics/stratified/eval/predictions.csv": _predictions(seed + 10, skill, first_test_row=1000 * seed)}


def _exp_show(grid: dict[str, tuple[dict, int]]) -> list[dict]:
    """A `dvc exp show --json` document: a baseline commit with the experiments of ``grid`` under it."""
    def node(name, rev, params):
        return {"rev": rev, "name": name, "data": {"rev": rev, "name": name, "status": "Success",
                                                   "params": {"params.yaml": {"data": params}}}}
    exps = [{"revs": [node(name, f"rev-{name}", {"base": {"seed": seed}, "train": {"augment": augment}})]}
            for name, (augment, seed) in grid.items()]
    return [{"rev": "workspace", "data": {}}, {"rev": "head", "data": {}, "experiments": exps}]


GRID = {"base-s1": ({"gamma": 0.0}, 1), "base-s2": ({"gamma": 0.0}, 2), "base-s3": ({"gamma": 0.0}, 3),
        "gamma-s1": ({"gamma": 0.3}, 1), "gamma-s2": ({"gamma": 0.3}, 2), "gamma-s3": ({"gamma": 0.3}, 3)}
SKILL = {"base": 1.0, "gamma": 2.5}


def _reader(rev: str, path: str):
    name = rev.removeprefix("rev-")
    return _files(int(name[-1]), SKILL[name.split("-")[0]]).get(path)


def test_seeds_of_one_configuration_are_grouped_and_a_better_lever_shows_a_positive_paired_difference():
    experiments = experiments_from_exp_show(_exp_show(GRID))
    assert [e.name for e in experiments] == list(GRID)
    rows = [measure(e, _reader) for e in experiments]
    summary = summarise(rows, experiments, baseline="base-s1", resamples=200)
    assert summary["config"].tolist() == ["baseline", "baseline [ensemble of 3 seeds]", "train.augment.gamma=0.3",
                                          "train.augment.gamma=0.3 [ensemble of 3 seeds]"]
    assert summary["n_seeds"].tolist() == [3, 3, 3, 3]
    summary = summary.set_index("config")
    better = summary.loc["train.augment.gamma=0.3"]
    assert better["val_macro_auc_mean"] > summary.loc["baseline", "val_macro_auc_mean"]
    assert better["paired_diff_center_value"] > 0 and better["paired_diff_center_ci_low"] > 0
    assert better["paired_diff_center_n_pairs"] == 3
    assert better["center_3_mean"] == pytest.approx(0.55 + 2.5 / 20)


def test_the_report_quotes_the_summary_and_the_command(tmp_path):
    experiments = experiments_from_exp_show(_exp_show(GRID))
    summary = summarise([measure(e, _reader) for e in experiments], experiments, baseline="base-s1", resamples=50)
    text = render_markdown(summary, command="python -m assurexray.assessment.ablation --baseline base-s1", date="2026-12-01")
    assert "NOT FOR CLINICAL USE" in text and "--baseline base-s1" in text
    numbers = {f"{v:.3f}" for v in summary.select_dtypes("number").to_numpy().ravel() if not np.isnan(v)}
    numbers |= {f"{v:+.3f}" for v in summary.select_dtypes("number").to_numpy().ravel() if not np.isnan(v)}
    table = text.split("| Configuration")[1]
    for number in re.findall(r"[+-]?\d\.\d{3}", table):
        assert number in numbers, number
    plot(summary, tmp_path / "ablation.png")
    assert (tmp_path / "ablation.png").stat().st_size > 1000


def test_an_unknown_baseline_or_mismatched_test_images_are_refused():
    experiments = experiments_from_exp_show(_exp_show(GRID))
    rows = [measure(e, _reader) for e in experiments]
    with pytest.raises(ValueError, match=r"baseline 'nope' is not an experiment"):
        summarise(rows, experiments, baseline="nope")
    rows[3]["_test_predictions"] = rows[3]["_test_predictions"].assign(row=lambda f: f["row"] + 1000)
    with pytest.raises(ValueError, match=r"were tested on different images"):
        summarise(rows, experiments, baseline="base-s1", resamples=20)


def test_the_command_writes_report_figure_and_csv_from_a_saved_exp_show(tmp_path, monkeypatch):
    saved = tmp_path / "exp_show.json"
    saved.write_text(json.dumps(_exp_show(GRID)))
    monkeypatch.setattr("assurexray.assessment.ablation.git_reader", lambda repo: _reader)
    assert main(["--baseline", "base-s1", "--exp-show-json", str(saved), "--out", str(tmp_path / "out"),
                 "--resamples", "50"]) == 0
    for name in ("ablation.md", "ablation.png", "ablation.csv"):
        assert (tmp_path / "out" / name).is_file()
    assert set(f"{c}_mean" for c in COLUMNS) <= set(pd.read_csv(tmp_path / "out" / "ablation.csv").columns)


def test_a_seed_ensemble_scores_the_averaged_probabilities_and_is_paired_with_the_baseline_ensemble():
    experiments = experiments_from_exp_show(_exp_show(GRID))
    rows = [measure(e, _reader) for e in experiments]
    summary = summarise(rows, experiments, baseline="base-s1", resamples=200).set_index("config")
    frames = [pd.read_csv(io.StringIO(_files(seed, SKILL["gamma"])["metrics/center/eval/predictions.csv"]))
              for seed in (1, 2, 3)]
    probs = np.mean([f[["prob_Normal", "prob_Benign", "prob_Malignant"]].to_numpy() for f in frames], axis=0)
    labels = frames[0]["label_idx"].to_numpy()
    test, center3 = (frames[0]["partition"] == "test").to_numpy(), (frames[0]["center"] == 3).to_numpy()
    ensemble = summary.loc["train.augment.gamma=0.3 [ensemble of 3 seeds]"]
    expected = roc_auc_score(labels[test], probs[test], multi_class="ovr", average="macro")
    assert ensemble["center_pooled_mean"] == pytest.approx(expected)
    expected3 = roc_auc_score(labels[test & center3], probs[test & center3], multi_class="ovr", average="macro")
    assert ensemble["center_3_mean"] == pytest.approx(expected3)
    # averaging independent noise helps: the ensemble beats the seeds' mean on validation
    assert ensemble["val_macro_auc_mean"] > summary.loc["train.augment.gamma=0.3", "val_macro_auc_mean"]
    assert ensemble["paired_diff_center_value"] > 0 and ensemble["paired_diff_center_n_pairs"] == 1
    assert summary.loc["baseline [ensemble of 3 seeds]", "paired_diff_center_value"] == 0.0
    # one ensemble against the other is one comparison, not a count of seeds
    text = render_markdown(summary.reset_index(), command="x", date="2026-12-04")
    line = next(t for t in text.splitlines() if t.startswith("| train.augment.gamma=0.3 [ensemble of 3 seeds] |"))
    assert f"{ensemble['paired_diff_center_value']:+.3f} (" in line and "ensemble vs ensemble)" in line
    assert "seed(s)" not in line


def test_only_selects_experiments_by_name(tmp_path, monkeypatch):
    saved = tmp_path / "exp_show.json"
    saved.write_text(json.dumps(_exp_show(GRID)))
    monkeypatch.setattr("assurexray.assessment.ablation.git_reader", lambda repo: _reader)
    assert main(["--baseline", "base-s1", "--exp-show-json", str(saved), "--out", str(tmp_path / "out"),
                 "--resamples", "20", "--only", "base-*"]) == 0
    table = pd.read_csv(tmp_path / "out" / "ablation.csv")
    assert table["config"].tolist() == ["baseline", "baseline [ensemble of 3 seeds]"]
    with pytest.raises(SystemExit, match="no experiment matches"):
        main(["--baseline", "base-s1", "--exp-show-json", str(saved), "--out", str(tmp_path / "o2"), "--only", "x*"])


def test_stratified_metrics_inherited_from_the_parent_commit_are_not_reported():
    experiments = experiments_from_exp_show(_exp_show(GRID))

    def reader(rev, path):
        if path == "dvc.lock":  # the stratified branch was trained with seed 42, not this experiment's seed
            return yaml.safe_dump({"stages": {"train@stratified": {"params": {"params.yaml": {"base": {"seed": 42}}}}}})
        return _reader(rev, path)

    assert measure(experiments[0], reader)["stratified"] is None
    assert measure(experiments[0], reader)["_strat_test_predictions"] is None  # nor a paired difference
    assert measure(experiments[0], _reader)["stratified"] == 0.9  # no lock to contradict it

    def fresh(rev, path):
        seed = int(rev[-1])
        if path == "dvc.lock":
            return yaml.safe_dump({"stages": {"train@stratified": {"params": {"params.yaml": {"base": {"seed": seed}}}}}})
        return _reader(rev, path)

    assert measure(experiments[0], fresh)["stratified"] == 0.9


def test_queued_running_and_workspace_experiments_are_not_measured():
    """Only finished experiments enter the table: a running one has half-written files and no commit."""
    document = _exp_show(GRID)
    running = [{"rev": "workspace", "name": "base-s4", "data": {"rev": "workspace", "name": "base-s4",
                                                                "params": {"params.yaml": {"data": {}}}}},
               {"rev": "rev-q", "name": "q", "data": {"rev": "rev-q", "name": "q", "status": "Queued"}},
               {"rev": "rev-r", "name": "r", "data": {"rev": "rev-r", "name": "r", "status": "Running"}}]
    document[1]["experiments"].append({"revs": running})
    # the shape DVC 3.x writes: the state is the executor's, the revision that of the queue stash
    for name, state in (("queued-s1", "queued"), ("running-s1", "running"), ("failed-s1", "failed")):
        stash = {"rev": f"stash-{name}", "name": name, "data": {"rev": f"stash-{name}", "timestamp": None,
                                                               "params": {"params.yaml": {"data": {}}}}}
        document[1]["experiments"].append({"name": name, "executor": {"state": state}, "revs": [stash]})
    finished = {"rev": "rev-done", "name": "done-s1", "data": {"rev": "rev-done", "params": {"params.yaml": {"data": {}}}}}
    document[1]["experiments"].append({"name": "done-s1", "executor": {"state": "success"}, "revs": [finished]})
    names = sorted(e.name for e in experiments_from_exp_show(document))
    assert names == sorted([*GRID, "done-s1"])


def test_the_stratified_split_gets_its_own_paired_difference_seed_by_seed():
    """Each seed's stratified test set differs, so the lever is paired with the baseline of its own seed."""
    experiments = experiments_from_exp_show(_exp_show(GRID))
    rows = [measure(e, _reader) for e in experiments]
    summary = summarise(rows, experiments, baseline="base-s1", resamples=200).set_index("config")
    better = summary.loc["train.augment.gamma=0.3"]
    assert better["paired_diff_stratified_value"] > 0 and better["paired_diff_stratified_ci_low"] > 0
    assert better["paired_diff_stratified_n_pairs"] == 3
    assert summary.loc["baseline", "paired_diff_stratified_value"] == 0.0
    assert pd.isna(summary.loc["train.augment.gamma=0.3 [ensemble of 3 seeds]", "paired_diff_stratified_value"])
    text = render_markdown(summary.reset_index(), command="x", date="2026-12-03")
    assert "Paired Δ stratified vs baseline" in text and "Centred-Gaussian pointing game" in text
    gamma_line = next(line for line in text.splitlines() if line.startswith("| train.augment.gamma=0.3 |"))
    assert f"{better['paired_diff_stratified_value']:+.3f} (" in gamma_line
    # a lever whose stratified branch was inherited from the parent has no stratified pair: n/a, not a number
    rows[3]["_strat_test_predictions"] = None
    rows[4]["_strat_test_predictions"] = None
    rows[5]["_strat_test_predictions"] = None
    stale = summarise(rows, experiments, baseline="base-s1", resamples=20).set_index("config")
    assert pd.isna(stale.loc["train.augment.gamma=0.3", "paired_diff_stratified_value"])
    # mismatched images within one seed are refused, as on the centre test set
    rows = [measure(e, _reader) for e in experiments]
    rows[3]["_strat_test_predictions"] = rows[3]["_strat_test_predictions"].assign(row=lambda f: f["row"] + 1)
    with pytest.raises(ValueError, match=r"were tested on different images"):
        summarise(rows, experiments, baseline="base-s1", resamples=20)


def test_the_validation_difference_is_taken_seed_by_seed_and_counts_the_seeds_that_agree():
    experiments = experiments_from_exp_show(_exp_show(GRID))
    rows = [measure(e, _reader) for e in experiments]
    val = {r["name"]: r["val_macro_auc"] for r in rows}
    summary = summarise(rows, experiments, baseline="base-s1", resamples=20).set_index("config")
    deltas = [val[f"gamma-s{s}"] - val[f"base-s{s}"] for s in (1, 2, 3)]
    lever = summary.loc["train.augment.gamma=0.3"]
    assert lever["val_delta_mean"] == pytest.approx(np.mean(deltas))
    assert lever["val_delta_positive"] == sum(d > 0 for d in deltas) and lever["val_delta_n"] == 3
    # not the difference of the seed means when a seed is missing: drop the lever's seed 3
    partial = [r for r in rows if r["name"] != "gamma-s3"]
    one_short = summarise(partial, [e for e in experiments if e.name != "gamma-s3"], baseline="base-s1",
                          resamples=20).set_index("config").loc["train.augment.gamma=0.3"]
    assert one_short["val_delta_mean"] == pytest.approx(np.mean(deltas[:2])) and one_short["val_delta_n"] == 2
    assert summary.loc["baseline", "val_delta_mean"] == 0.0
    assert pd.isna(summary.loc["train.augment.gamma=0.3 [ensemble of 3 seeds]", "val_delta_mean"])
    text = render_markdown(summary.reset_index(), command="x", date="2026-12-04")
    lever_line = next(line for line in text.splitlines() if line.startswith("| train.augment.gamma=0.3 |"))
    assert f"{np.mean(deltas):+.4f} ({sum(d > 0 for d in deltas)} of 3 seeds > 0)" in lever_line
    assert "+0.0000 (reference)" in next(line for line in text.splitlines() if line.startswith("| baseline |"))


def test_the_validation_pointing_game_comes_from_the_explain_validation_block_or_else_the_chosen_layer():
    """What chooses explain settings: the heatmaps' pointing game on centre-1 validation, never the test one."""
    experiments = experiments_from_exp_show(_exp_show(GRID))
    rows = [measure(e, _reader) for e in experiments]
    summary = summarise(rows, experiments, baseline="base-s1", resamples=20).set_index("config")
    expected = np.mean([0.1 + SKILL["gamma"] / 20 + s / 100 for s in (1, 2, 3)])
    assert summary.loc["train.augment.gamma=0.3", "val_pointing_game_mean"] == pytest.approx(expected)
    assert summary.loc["train.augment.gamma=0.3", "val_pointing_game_sd"] == pytest.approx(0.01)
    assert pd.isna(summary.loc["train.augment.gamma=0.3 [ensemble of 3 seeds]", "val_pointing_game_mean"])
    text = render_markdown(summary.reset_index(), command="x", date="2026-12-04")
    assert "Centre-1 val pointing game (chooses explain settings)" in text

    def older(explain):  # a metrics file written before the validation block existed
        def read(rev, path):
            files = _files(1, 1.0)
            files["metrics/center/explain/metrics.json"] = json.dumps(explain)
            return files.get(path)
        return measure(experiments[0], read)["val_pointing_game"]

    scores = {"blocks.5": 0.25, "bn2": 0.5}
    assert older({"target_layer": "blocks.5", "layer_search": scores}) == 0.25
    assert older({"target_layer": "bn2", "layer_search": {}}) is None


def _lock(*, center_epochs: int, prepared: str, center_prepared: str, seed: int = 1) -> str:
    """A dvc.lock where ``prepare`` last wrote ``prepared`` and ``train@center`` ran on ``center_prepared``."""
    params = lambda epochs: {"params.yaml": {"base": {"seed": seed}, "train": {"epochs": epochs}}}  # noqa: E731
    return yaml.safe_dump({"stages": {
        "prepare": {"params": {"params.yaml": {"prepare": {"image_px": 160}}},
                    "outs": [{"path": "data/prepared", "md5": prepared}]},
        "train@center": {"params": params(center_epochs), "deps": [{"path": "data/prepared", "md5": center_prepared}],
                         "outs": [{"path": "models/center/model.pt", "md5": "m1"}]},
        "explain@center": {"params": {"params.yaml": {"base": {"seed": seed}}},
                           "deps": [{"path": "models/center/model.pt", "md5": "m1"}]},
        "train@stratified": {"params": params(12), "deps": [{"path": "data/prepared", "md5": prepared}]}}})


def test_centre_metrics_inherited_from_the_parent_are_not_reported():
    """A lever run on the stratified variant only carries its parent's centre outputs: those columns are n/a."""
    exp = experiments_from_exp_show(_exp_show(GRID))[0]
    exp = type(exp)(exp.name, exp.rev, {**exp.params, "train.epochs": 12})

    def reader_with(lock):
        return lambda rev, path: lock if path == "dvc.lock" else _reader(rev, path)

    fresh = measure(exp, reader_with(_lock(center_epochs=12, prepared="a.dir", center_prepared="a.dir")))
    assert fresh["center_pooled"] is not None and fresh["val_macro_auc"] is not None
    assert fresh["pointing_game_center"] is not None and fresh["stratified"] == 0.9
    # the centre model was trained for 5 epochs, the experiment says 12: its centre files are the parent's
    old_schedule = measure(exp, reader_with(_lock(center_epochs=5, prepared="a.dir", center_prepared="a.dir")))
    # prepare reran (e.g. another image size) and train@center did not: same params, stale input
    old_images = measure(exp, reader_with(_lock(center_epochs=12, prepared="b.dir", center_prepared="a.dir")))
    for row in (old_schedule, old_images):
        assert row["center_pooled"] is None and row["center_2"] is None and row["val_macro_auc"] is None
        assert row["_test_predictions"] is None and row["_all_predictions"] is None
        assert row["pointing_game_center"] is None and row["val_pointing_game"] is None  # explain ran on that model
        assert row["stratified"] == 0.9  # the stratified variant is this experiment's own
    experiments = experiments_from_exp_show(_exp_show(GRID))
    rows = [measure(e, _reader) for e in experiments]
    for i in (3, 4, 5):  # the lever's centre columns inherited: no centre pair, no ensemble, stratified kept
        rows[i].update(center_pooled=None, center_2=None, center_3=None, val_macro_auc=None,
                       _test_predictions=None, _all_predictions=None)
    summary = summarise(rows, experiments, baseline="base-s1", resamples=20).set_index("config")
    lever = summary.loc["train.augment.gamma=0.3"]
    assert pd.isna(lever["paired_diff_center_value"]) and pd.isna(lever["val_delta_mean"])
    assert lever["paired_diff_stratified_n_pairs"] == 3
    assert "train.augment.gamma=0.3 [ensemble of 3 seeds]" not in summary.index


def test_only_takes_several_globs(tmp_path, monkeypatch):
    saved = tmp_path / "exp_show.json"
    saved.write_text(json.dumps(_exp_show({**GRID, "other-s1": ({"gamma": 0.7}, 1)})))
    monkeypatch.setattr("assurexray.assessment.ablation.git_reader",
                        lambda repo: lambda rev, path: None if "other" in rev else _reader(rev, path))
    assert main(["--baseline", "base-s1", "--exp-show-json", str(saved), "--out", str(tmp_path / "out"),
                 "--resamples", "20", "--only", "base-*", "gamma-*"]) == 0
    table = pd.read_csv(tmp_path / "out" / "ablation.csv")
    assert set(table["config"]) == {"baseline", "baseline [ensemble of 3 seeds]", "train.augment.gamma=0.3",
                                    "train.augment.gamma=0.3 [ensemble of 3 seeds]"}
