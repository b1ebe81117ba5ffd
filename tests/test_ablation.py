"""Ablation table from DVC experiments: configurations over seeds, paired differences, report and figure."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from assurexray.assessment.ablation import COLUMNS, experiments_from_exp_show, main, measure, summarise
from assurexray.assessment.ablation_report import INTERVALS, plot, render_markdown

REPO_ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["Normal", "Benign", "Malignant"]  # the fake experiments' base.class_names
PROBS = [f"prob_{name}" for name in CLASSES]


def _predictions(seed: int, skill: float, first_test_row: int = 0) -> str:
    """val + test predictions; a higher ``skill`` puts more probability on the true class."""
    rng = np.random.default_rng(seed)
    rows = []
    for partition, n in (("val", 30), ("test", 45)):
        labels = np.arange(n) % 3
        for i, y in enumerate(labels):
            logits = rng.normal(size=3) + skill * np.eye(3)[y]
            p = np.exp(logits) / np.exp(logits).sum()
            rows.append({"row": first_test_row + i if partition == "test" else 100 + i, "image_id": f"IMG{i}",
                         "partition": partition, "label": CLASSES[y], "label_idx": y, **dict(zip(PROBS, p)),
                         "group": f"g{i // 2}", "center": 2 + i % 2})
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


def _params(seed: int, **sections: dict) -> dict:
    """An experiment's params.yaml (nested), as `dvc exp show` lists it."""
    return {"base": {"seed": seed, "class_names": CLASSES}, **sections}


def _exp_show(grid: dict[str, tuple[dict, int]]) -> list[dict]:
    """A `dvc exp show --json` document: a baseline commit with the experiments of ``grid`` under it."""
    return _exp_show_of({name: _params(seed, train={"augment": augment}) for name, (augment, seed) in grid.items()})


def _exp_show_of(params_by_name: dict[str, dict]) -> list[dict]:
    def node(name, rev, params):
        return {"rev": rev, "name": name, "data": {"rev": rev, "name": name, "status": "Success",
                                                   "params": {"params.yaml": {"data": params}}}}
    exps = [{"revs": [node(name, f"rev-{name}", params)]} for name, params in params_by_name.items()]
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
    assert INTERVALS in text and "intervals cover test-set sampling, not seed variance" in text
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
    probs = np.mean([f[PROBS].to_numpy() for f in frames], axis=0)
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
    params = _params(1, train={"augment": {"gamma": 0.0}})
    parent = _params(42, train={"augment": {"gamma": 0.0}})  # the stratified branch was trained with seed 42
    inherited = _lock(params, parent=parent, reran=_stages("center"))
    assert measure(experiments[0], _with_lock(inherited))["stratified"] is None
    assert measure(experiments[0], _with_lock(inherited))["_strat_test_predictions"] is None  # nor a paired difference
    assert measure(experiments[0], _reader)["stratified"] == 0.9  # no lock to contradict it
    assert measure(experiments[0], _with_lock(_lock(params)))["stratified"] == 0.9
    # a lock trimmed to the centre branch (README: a centre-only grid): no stage wrote the stratified files
    trimmed = yaml.safe_load(_lock(params))
    trimmed["stages"] = {k: v for k, v in trimmed["stages"].items() if not k.endswith("@stratified")}
    assert measure(experiments[0], _with_lock(yaml.safe_dump(trimmed)))["stratified"] is None


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



def _near_identical_runs(copies: int, *, per_image_groups: bool = False):
    """A baseline and a lever whose test logits differ by tiny noise, on 45 cases of ``copies`` identical views
    each (groups = cases, or one group per image); val rows are omitted. Returns (rows, experiments)."""
    rng = np.random.default_rng(0)
    labels = np.arange(45) % 3
    base = rng.normal(size=(45, 3)) + np.eye(3)[labels]
    near = base + 0.03 * rng.normal(size=base.shape)  # the same model up to noise

    def csv(logits: np.ndarray) -> str:
        p = np.repeat(np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True), copies, axis=0)
        y = np.repeat(labels, copies)
        groups = [f"img{i:04d}" for i in range(y.size)] if per_image_groups else \
            [f"case{c:03d}" for c in np.repeat(np.arange(45), copies)]
        return pd.DataFrame({"row": np.arange(y.size), "image_id": [f"IMG{i}" for i in range(y.size)],
                             "partition": "test", "label": np.asarray(CLASSES)[y], "label_idx": y,
                             **{f"prob_{c}": p[:, k] for k, c in enumerate(CLASSES)}, "group": groups,
                             "center": 2}).to_csv(index=False)

    files = {"rev-base-s1": csv(base), "rev-near-s1": csv(near)}
    experiments = experiments_from_exp_show(_exp_show({"base-s1": ({"gamma": 0.0}, 1), "near-s1": ({"gamma": 0.3}, 1)}))
    reader = lambda rev, path: files[rev] if path == "metrics/center/eval/predictions.csv" else None  # noqa: E731
    return [measure(e, reader) for e in experiments], experiments


def test_a_near_identical_lever_gets_a_narrow_paired_cluster_interval_around_zero():
    """Paired: both arms are scored on the same resampled cases, so the noise between them is all that varies (an
    unpaired resample would be ~10x wider). Clustered: four copies of each case add no evidence, so the interval
    equals that of the cases alone (an image-level resample would be about half as wide)."""
    def paired(copies: int, **kwargs) -> tuple[float, float, float]:
        summary = summarise(*_near_identical_runs(copies, **kwargs), baseline="base-s1", resamples=400)
        lever = summary.set_index("config").loc["train.augment.gamma=0.3"]
        return tuple(float(lever[f"paired_diff_center_{k}"]) for k in ("value", "ci_low", "ci_high"))

    value, low, high = paired(copies=4)
    assert (value, low, high) == pytest.approx(paired(copies=1))  # clustered
    _, image_low, image_high = paired(copies=4, per_image_groups=True)
    assert high - low > 1.5 * (image_high - image_low)
    assert low < 0.0 < high and abs(value) < 0.01  # paired
    assert high - low < 0.05  # the arms' own macro AUC intervals are ~0.2 wide

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


def test_the_lesion_map_columns_come_from_the_explain_lesion_block_and_old_reports_render_without_them():
    experiments = experiments_from_exp_show(_exp_show(GRID))

    def measured(explain):
        def read(rev, path):
            files = _files(1, 1.0)
            files["metrics/center/explain/metrics.json"] = json.dumps(explain)
            return files.get(path)
        row = measure(experiments[0], read)
        return row["lesion_pointing_game_center"], row["lesion_dice_center"]

    lesion = {"overall": {"pointing_game": {"value": 0.81}, "dice@val": {"value": 0.46}, "n": 250}}
    assert measured({"lesion_map": lesion}) == (0.81, 0.46)
    assert measured({"lesion_map": None}) == (None, None)  # a model without a lesion head
    assert measured({}) == (None, None)  # explain written before lesion maps
    rows = [measure(e, _reader) for e in experiments]
    summary = summarise(rows, experiments, baseline="base-s1", resamples=20)
    assert "Lesion-map pointing game (centres 2+3)" in render_markdown(summary, command="x", date="2026-12-07")
    old = summary.drop(columns=[c for c in summary.columns if c.startswith("lesion_")])
    text = render_markdown(old, command="x", date="2026-12-07")
    assert "Lesion-map" not in text and "Centre-1 val pointing game" in text


#: The stages of dvc.yaml the ablation reads from: stage -> (params sections it records, inputs, outputs).
PIPELINE = {"prepare": (("prepare",), (), ("data/prepared",))}
for _v in ("stratified", "center"):
    PIPELINE |= {
        f"train@{_v}": (("base", "train"), ("data/prepared",), (f"models/{_v}/model.pt",)),
        f"evaluate@{_v}": (("evaluate",), ("data/prepared", f"models/{_v}/model.pt"),
                           (f"metrics/{_v}/eval/metrics.json", f"metrics/{_v}/eval/predictions.csv")),
        f"explain@{_v}": (("base", "explain"), (f"models/{_v}/model.pt", f"metrics/{_v}/eval/predictions.csv"),
                          (f"metrics/{_v}/explain/metrics.json",)),
    }


def _stages(*variants: str) -> set[str]:
    return {s for s in PIPELINE if s.split("@")[-1] in variants}


def _lock(params: dict, *, parent: dict | None = None, reran: set[str] | None = None, run: str = "exp") -> str:
    """The dvc.lock `dvc exp run` leaves: the stages in ``reran`` (default all) ran with ``params``; the others
    are the parent's, run with ``parent``'s params on the parent's inputs. Output hashes name the run that wrote
    them (``run``, or "parent"), so an input a stage ran on matches its producer only when both ran together."""
    reran = set(PIPELINE) if reran is None else reran
    writer = {out: stage for stage, (_, _, outs) in PIPELINE.items() for out in outs}
    tag = lambda stage: run if stage in reran else "parent"  # noqa: E731 (the run that last wrote its outputs)
    stages = {}
    for stage, (sections, deps, outs) in PIPELINE.items():
        ran_with = params if stage in reran else parent
        stages[stage] = {
            "params": {"params.yaml": {k: ran_with.get(k, {}) for k in sections}},
            "deps": [{"path": d, "md5": f"{d}@{tag(writer[d]) if stage in reran else 'parent'}"} for d in deps],
            "outs": [{"path": o, "md5": f"{o}@{tag(stage)}"} for o in outs]}
    return yaml.safe_dump({"stages": stages})


def _with_lock(lock: str, reader=None):
    return lambda rev, path: lock if path == "dvc.lock" else (reader or _reader)(rev, path)


def test_centre_metrics_inherited_from_the_parent_are_not_reported():
    """A lever run on the stratified variant only carries its parent's centre outputs: those columns are n/a."""
    exp = experiments_from_exp_show(_exp_show(GRID))[0]
    exp = type(exp)(exp.name, exp.rev, {**exp.params, "train.epochs": 12, "prepare.image_px": 160})
    params = _params(1, train={"augment": {"gamma": 0.0}, "epochs": 12}, prepare={"image_px": 160})

    fresh = measure(exp, _with_lock(_lock(params)))
    assert fresh["center_pooled"] is not None and fresh["val_macro_auc"] is not None
    assert fresh["pointing_game_center"] is not None and fresh["stratified"] == 0.9
    # the centre model was trained for 5 epochs, the experiment says 12: its centre files are the parent's
    five = _params(1, train={"augment": {"gamma": 0.0}, "epochs": 5}, prepare={"image_px": 160})
    old_schedule = measure(exp, _with_lock(_lock(params, parent=five, reran=_stages("stratified"))))
    # prepare reran (another image size) and the centre stages did not: same params, stale input
    small = _params(1, train={"augment": {"gamma": 0.0}, "epochs": 12}, prepare={"image_px": 128})
    old_images = measure(exp, _with_lock(_lock(params, parent=small, reran={"prepare", *_stages("stratified")})))
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


def _tta_grid(reran_by_tta: set[str]):
    """base-s1/s2 (evaluate.tta_flip off, every stage run) and tta-s1/s2 (on), run from them on ``reran_by_tta``
    only: the other stages' outputs in tta's revisions are the parents', byte for byte. Returns (experiments,
    reader)."""
    params = {f"{arm}-s{seed}": _params(seed, train={"augment": {"gamma": 0.0}}, evaluate={"tta_flip": arm == "tta"})
              for arm in ("base", "tta") for seed in (1, 2)}
    locks = {f"rev-{name}": _lock(p) if name.startswith("base") else
             _lock(p, parent=params[name.replace("tta", "base")], reran=reran_by_tta) for name, p in params.items()}

    def read(rev: str, path: str) -> str | None:
        if path == "dvc.lock":
            return locks[rev]
        rerun = rev.startswith("rev-tta") and any(path in PIPELINE[stage][2] for stage in reran_by_tta)
        return _files(int(rev[-1]), SKILL["gamma"] if rerun else SKILL["base"]).get(path)

    return experiments_from_exp_show(_exp_show_of(params)), read


def test_an_evaluate_only_lever_run_on_one_variant_is_n_a_on_the_other_not_a_zero_difference():
    """evaluate.tta_flip rerun on the centre variant: the stratified evaluation in its revision is the parent's
    (evaluate@stratified ran without the flip), so its stratified columns are n/a, not a paired +0.000."""
    experiments, read = _tta_grid({"evaluate@center", "explain@center"})
    rows = [measure(e, read) for e in experiments]
    tta = next(r for r in rows if r["name"] == "tta-s1")
    assert tta["stratified"] is None and tta["_strat_test_predictions"] is None
    assert tta["center_pooled"] is not None and tta["val_macro_auc"] is not None
    assert tta["pointing_game_center"] is not None  # explain@center reran on the new predictions
    summary = summarise(rows, experiments, baseline="base-s1", resamples=50).set_index("config")
    lever = summary.loc["evaluate.tta_flip=True"]
    assert pd.isna(lever["stratified_mean"]) and pd.isna(lever["paired_diff_stratified_value"])
    assert lever["paired_diff_center_n_pairs"] == 2 and lever["paired_diff_center_value"] > 0
    text = render_markdown(summary.reset_index(), command="x", date="2026-12-07")
    line = next(t for t in text.splitlines() if t.startswith("| evaluate.tta_flip=True |"))
    assert "+0.000 (+0.000 to +0.000" not in line and line.endswith("| n/a (no paired seed) |")
    # re-evaluated but not re-explained: the pointing game in its revision was computed on the parent's predictions
    experiments, read = _tta_grid({"evaluate@center"})
    row = measure(next(e for e in experiments if e.name == "tta-s1"), read)
    assert row["center_pooled"] is not None and row["stratified"] is None
    assert row["pointing_game_center"] is None and row["val_pointing_game"] is None


@pytest.mark.parametrize("again", ["gamma-again-s2", "base-again-s2"])
def test_two_runs_of_one_configuration_with_the_same_seed_are_an_error_naming_both(again):
    """A seed counts once: a second run would otherwise double-count in the mean, or (in the baseline) silently
    replace the first as every lever's pair. One run listed twice (one dvc.lock) is not two runs."""
    arm = again.split("-")[0]
    grid = {**GRID, again: ({"gamma": 0.3 if arm == "gamma" else 0.0}, 2)}
    params = {name: _params(seed, train={"augment": augment}) for name, (augment, seed) in grid.items()}
    experiments = experiments_from_exp_show(_exp_show(grid))

    def runs(tag):  # each experiment's dvc.lock; run=tag(rev) names the run that wrote its outputs
        return lambda rev, path: _lock(params[rev.removeprefix("rev-")], run=tag(rev)) if path == "dvc.lock" \
            else _reader(rev, path)

    rows = [measure(e, runs(lambda rev: rev)) for e in experiments]
    with pytest.raises(ValueError, match=rf"experiments '{arm}-s2' and '{again}' are two runs of one configuration "
                                         rf"\((baseline|train\.augment\.gamma=0\.3)\) with the same base\.seed 2"):
        summarise(rows, experiments, baseline="base-s1", resamples=20)
    once = summarise(rows[:-1], experiments[:-1], baseline="base-s1", resamples=20)
    # the same run under two names (a commit and the experiment applied to it): counted once
    same = [measure(e, runs(lambda rev: "one")) for e in experiments]
    pd.testing.assert_frame_equal(summarise(same, experiments, baseline="base-s1", resamples=20), once)
    # an entry with nothing of its own (a commit from before the pipeline ran) gives way to the run
    empty = [measure(e, lambda rev, path: None) if e.name == again else row for e, row in zip(experiments, same)]
    pd.testing.assert_frame_equal(summarise(empty, experiments, baseline="base-s1", resamples=20), once)


def test_probabilities_are_taken_in_the_order_of_base_class_names_not_the_file_columns():
    """label_idx indexes base.class_names: a predictions file with its probability columns in another order
    scores the same; one without a class's column, or params without the class order, is refused."""
    exp = experiments_from_exp_show(_exp_show(GRID))[0]
    path = "metrics/center/eval/predictions.csv"
    frame = pd.read_csv(io.StringIO(_files(1, SKILL["base"])[path]))
    reordered = frame[[c for c in frame.columns if c not in PROBS] + PROBS[::-1]].to_csv(index=False)
    read = lambda rev, p: reordered if p == path else _reader(rev, p)  # noqa: E731
    assert measure(exp, read)["val_macro_auc"] == pytest.approx(measure(exp, _reader)["val_macro_auc"])
    renamed = type(exp)(exp.name, exp.rev, {**exp.params, "base.class_names": ["Normal", "Benign", "Sarcoma"]})
    with pytest.raises(ValueError, match=r"metrics/center/eval/predictions.csv of experiment 'base-s1' has no "
                                         r"column\(s\) \['prob_Sarcoma'\]"):
        measure(renamed, _reader)
    unnamed = type(exp)(exp.name, exp.rev, {k: v for k, v in exp.params.items() if k != "base.class_names"})
    with pytest.raises(ValueError, match=r"experiment 'base-s1' has no base.class_names in its params"):
        measure(unnamed, _reader)


@pytest.mark.parametrize("report", ["ablation-clahe", "ablation-resolution-schedule",
                                    "ablation-resolution-schedule-stratified"])
def test_a_committed_report_renders_from_its_csv_with_the_same_table_and_the_intervals_sentence(report):
    """The rows of the reports in reports/ are rendered as they were committed; only the sentence saying what the
    intervals cover is new."""
    folder = REPO_ROOT / "reports" / report
    committed = (folder / "ablation.md").read_text(encoding="utf-8")
    command, date = re.search(r"Made by `(.*)` on (\S+)\.", committed).groups()
    summary = pd.read_csv(folder / "ablation.csv", dtype={"seeds": str})
    text = render_markdown(summary.astype(object).where(summary.notna(), None), command=command, date=date)
    table = lambda document: [line for line in document.splitlines() if line.startswith("|")]  # noqa: E731
    assert len(table(committed)) == len(summary) + 2 and table(text) == table(committed)
    assert INTERVALS in text


def test_centre_3_tumour_vs_normal_and_the_adapted_rows_come_from_the_centre_evaluation():
    experiments = experiments_from_exp_show(_exp_show(GRID))

    def reader(extra):
        def read(rev, path):
            files = _files(1, 1.0)
            metrics = json.loads(files["metrics/center/eval/metrics.json"])
            metrics["by_center"].update(extra.get("by_center", {}))
            metrics.update({k: v for k, v in extra.items() if k != "by_center"})
            files["metrics/center/eval/metrics.json"] = json.dumps(metrics)
            return files.get(path)
        return read

    def measured(extra):
        row = measure(experiments[0], reader(extra))
        return row["center_3_tumour_vs_normal"], row["center_2_adapted"], row["center_3_adapted"]

    three = {"diagnostics": {"tumour_vs_normal_auc": {"value": 0.61}}, "headline": {"macro_auc": {"value": 0.5}}}
    adapted = {"by_center": {"2": {"headline": {"macro_auc": {"value": 0.77}}},
                             "3": {"skipped": "12 test image(s); adaptation needs at least 32"}}}
    extra = {"by_center": {"3": three}, "adapted": adapted}
    assert measured(extra) == (0.61, 0.77, None)
    assert measured({}) == (None, None, None)  # evaluated without adaptation, a centre-3 file without diagnostics
    rows = [measure(e, reader(extra)) for e in experiments]
    text = render_markdown(summarise(rows, experiments, baseline="base-s1", resamples=20), command="x",
                           date="2026-12-08")
    assert "Centre 3 tumour-vs-normal AUC" in text and "Centre 2 macro AUC, BN-adapted (same images)" in text
