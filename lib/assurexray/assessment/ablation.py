"""Ablation table of DVC experiments: each lever's effect on validation, unseen centres and the stratified split.

Input is ``dvc exp show --json`` (so the grid runs through DVC's own queue) and, per experiment, the metric and
prediction files committed in its git ref. Experiments that differ only in ``base.seed`` form one configuration;
each configuration is summarised over its seeds (mean, standard deviation), and compared with the baseline by a
paired cluster bootstrap on the same test images (seed by seed, then averaged), because two runs scored on one
test set are not independent: on the centre-holdout test set (centres 2+3, the same for every seed) and on the
case-grouped stratified test set (carved by ``base.seed``, so shared by the two runs of one seed). A configuration with several seeds also gets a seed-ensemble row:
the seeds' probabilities averaged image by image (val and test), scored like one model. Choosing among configurations is done on the centre-1 validation
column only; the test columns are for reporting. NOT FOR CLINICAL USE.
"""

from __future__ import annotations

import fnmatch
import io
import json
import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import pandas as pd
import yaml
from matplotlib.figure import Figure

from assurexray import DISCLAIMER
from assurexray.assessment.metrics import bootstrap_weights, percentile_ci, weighted_suite
from assurexray.core.project import Layout
from assurexray.core.rendering import Alert, Heading, Image, Para, Table, to_markdown

__all__ = ["Experiment", "experiments_from_exp_show", "measure", "summarise", "render_markdown", "plot",
           "git_reader", "COLUMNS"]

logger = logging.getLogger(__name__)

#: Columns of the ablation table, in the order people read them (validation first: it is what chooses).
COLUMNS: tuple[str, ...] = ("val_macro_auc", "center_2", "center_3", "center_pooled", "stratified",
                            "pointing_game_center", "pointing_game_baseline", "val_pointing_game")
COLUMN_TITLES = {
    "val_macro_auc": "Centre-1 val macro AUC (chooses)", "center_2": "Centre 2 macro AUC",
    "center_3": "Centre 3 macro AUC", "center_pooled": "Centres 2+3 macro AUC",
    "stratified": "Stratified (case-grouped) test macro AUC",
    "pointing_game_center": "Pointing game (centres 2+3)",
    "pointing_game_baseline": "Centred-Gaussian pointing game (same tumours)",
    "val_pointing_game": "Centre-1 val pointing game (chooses explain settings)",
}
#: Test sets of the paired differences: column prefix -> (row key of the test predictions, title).
PAIRED: dict[str, tuple[str, str]] = {
    "center": ("_test_predictions", "Paired Δ centres 2+3 vs baseline"),
    "stratified": ("_strat_test_predictions", "Paired Δ stratified vs baseline"),
}
#: The decision quantity of a pre-registered rule: validation AUC minus the baseline's, seed by seed.
VAL_DELTA_TITLE = "Δ centre-1 val vs baseline (same seed)"
_IGNORED_PARAMS = ("base.seed",)  # what distinguishes seeds of one configuration
_REPO = Layout(Path())  # paths inside an experiment's git revision, relative to the repository root


@dataclass(frozen=True)
class Experiment:
    """One DVC experiment (or the baseline commit): its name, git revision and flattened params."""

    name: str
    rev: str
    params: dict[str, Any]


def experiments_from_exp_show(data: list[dict[str, Any]]) -> list[Experiment]:
    """Flatten ``dvc exp show --json`` into experiments: the baseline commit(s) and every finished experiment."""
    out: list[Experiment] = []
    for entry in data:
        if entry.get("rev") == "workspace":
            continue
        out += _experiment(entry)
        for exp in entry.get("experiments") or []:
            # DVC 3 keeps a queued or running experiment's state in its executor, and lists it with the revision
            # of its queue stash (whose files are the parent's): only a finished one is measured.
            if (exp.get("executor") or {}).get("state") not in (None, "success"):
                continue
            for rev in exp.get("revs") or []:
                out += _experiment(rev)
    return out


def git_reader(repo: str | Path) -> Callable[[str, str], str | None]:
    """``read(rev, path)``: the file at ``path`` in git revision ``rev`` of ``repo`` (None when absent)."""
    def read(rev: str, path: str) -> str | None:
        done = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=repo, capture_output=True, text=True)
        return done.stdout if done.returncode == 0 else None
    return read


def measure(exp: Experiment, read: Callable[[str, str], str | None]) -> dict[str, Any]:
    """The table's numbers for one experiment, read from its committed metrics and predictions."""
    row: dict[str, Any] = {"name": exp.name, "rev": exp.rev, "seed": exp.params.get("base.seed")}
    # An experiment that reran only one variant still carries its parent's outputs for the other: n/a then.
    lock_text = read(exp.rev, "dvc.lock")
    lock = None if lock_text is None else yaml.safe_load(lock_text)

    def own(stage: str, path: Path) -> str | None:
        """The file at ``path`` when ``stage`` ran in this experiment, else None (it is a parent's)."""
        return read(exp.rev, path.as_posix()) if lock is None or not _stale(lock, stage, exp.params) else None

    center_eval = _json(own("train@center", _REPO.eval_metrics("center")))
    predictions = own("train@center", _REPO.predictions("center"))
    explain = _json(own("explain@center", _REPO.explain_metrics("center")))
    strat_eval = _json(own("train@stratified", _REPO.eval_metrics("stratified")))
    strat_predictions = own("train@stratified", _REPO.predictions("stratified"))
    row["center_pooled"] = _value(center_eval, "headline", "macro_auc")
    for center in ("2", "3"):
        row[f"center_{center}"] = _value(center_eval, "by_center", center, "headline", "macro_auc")
    row["stratified"] = _value(strat_eval, "headline", "macro_auc")
    row["pointing_game_center"] = _value(explain, "model", "overall", "pointing_game")
    row["pointing_game_baseline"] = _value(explain, "baseline", "overall", "pointing_game")
    row["val_pointing_game"] = _val_pointing_game(explain)
    frame = None if predictions is None else pd.read_csv(io.StringIO(predictions), dtype={"group": str})
    row["val_macro_auc"] = _macro_auc(frame[frame["partition"] == "val"]) if frame is not None else None
    row["_test_predictions"] = frame[frame["partition"] == "test"] if frame is not None else None
    row["_all_predictions"] = frame
    strat = None if strat_predictions is None else pd.read_csv(io.StringIO(strat_predictions), dtype={"group": str})
    row["_strat_test_predictions"] = strat[strat["partition"] == "test"] if strat is not None else None
    return row


def summarise(rows: Iterable[Mapping[str, Any]], experiments: Iterable[Experiment], *, baseline: str,
              resamples: int = 1000, seed: int = 0, ci_level: float = 0.95) -> pd.DataFrame:
    """One row per configuration: mean and sd of every column over seeds, and the paired difference to baseline.

    ``baseline`` names the configuration every other is compared with (by an experiment name in it).
    """
    experiments = list(experiments)
    rows = list(rows)
    reference = next((e for e in experiments if e.name == baseline), None)
    if reference is None:
        raise ValueError(f"ablation: baseline {baseline!r} is not an experiment; known: "
                         f"{sorted(e.name for e in experiments)}.")
    config_of = {e.name: _config_label(e, reference) for e in experiments}
    by_config: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_config.setdefault(config_of[row["name"]], []).append(row)
    base_label = config_of[baseline]
    base_by_seed = {r["seed"]: r for r in by_config[base_label]}
    table = []
    ensembles = {label: _ensemble(label, members) for label, members in by_config.items() if len(members) > 1}
    ensembles = {label: row for label, row in ensembles.items() if row is not None}
    for label, members in by_config.items():
        entry: dict[str, Any] = {"config": label, "n_seeds": len(members), "reference": label == base_label,
                                 "ensemble": False, "seeds": ",".join(str(m["seed"]) for m in members)}
        for column in COLUMNS:
            values = np.array([m[column] for m in members if m[column] is not None], dtype=float)
            entry[f"{column}_mean"] = float(values.mean()) if values.size else None
            entry[f"{column}_sd"] = float(values.std(ddof=1)) if values.size > 1 else None
        paired = [(m, base_by_seed[m["seed"]]) for m in members if m["seed"] in base_by_seed]
        entry.update(_val_difference(paired))
        for prefix, (key, _) in PAIRED.items():
            diff = _paired_difference(paired, key=key, resamples=resamples, seed=seed, ci_level=ci_level) \
                if label != base_label else _reference(members, key)
            entry.update({f"paired_diff_{prefix}_{k}": v for k, v in diff.items()})
        table.append(entry)
        if label in ensembles:  # the seed ensemble, paired with the baseline's seed ensemble
            ens = ensembles[label]
            entry = {"config": ens["name"], "n_seeds": len(members), "reference": label == base_label,
                     "ensemble": True, "seeds": entry["seeds"],
                     **{f"{c}_mean": ens.get(c) for c in COLUMNS}, **{f"{c}_sd": None for c in COLUMNS}}
            base_ens = ensembles.get(base_label)
            diff = _NO_PAIR if base_ens is None else (
                _paired_difference([(ens, base_ens)], key="_test_predictions", resamples=resamples, seed=seed,
                                   ci_level=ci_level)
                if label != base_label else {"value": 0.0, "ci_low": None, "ci_high": None, "n_pairs": 1})
            entry.update({f"paired_diff_center_{k}": v for k, v in diff.items()})
            entry.update({f"paired_diff_stratified_{k}": v for k, v in _NO_PAIR.items()})  # one test set per seed
            entry.update({"val_delta_mean": None, "val_delta_positive": None, "val_delta_n": 0})
            table.append(entry)
    out = pd.DataFrame(table)
    firsts = [base_label] + ([ensembles[base_label]["name"]] if base_label in ensembles else [])
    order = firsts + sorted(c for c in out["config"] if c not in firsts)
    return out.set_index("config").loc[order].reset_index()


def render_markdown(summary: pd.DataFrame, *, command: str, date: str) -> str:
    """The ablation report: every number in it comes from ``summary`` (mean ± sd over seeds).

    The paired difference keeps its own signed form, ``+0.012 (-0.010 to +0.030, 3 seed(s))``: the sign is the
    finding, and a seed count is not an interval of ``rendering.fmt_ci``.
    """
    head = ("Configuration", "Seeds", COLUMN_TITLES[COLUMNS[0]], VAL_DELTA_TITLE,
            *(COLUMN_TITLES[c] for c in COLUMNS[1:]), *(t for _, t in PAIRED.values()))
    rows = tuple((str(r["config"]), f"{int(r['n_seeds'])} ({r['seeds']})",
                  _mean_sd(r[f"{COLUMNS[0]}_mean"], r[f"{COLUMNS[0]}_sd"]), _val_delta(r),
                  *(_mean_sd(r[f"{c}_mean"], r[f"{c}_sd"]) for c in COLUMNS[1:]), *(_diff(r, p) for p in PAIRED))
                 for _, r in summary.iterrows())
    return to_markdown([
        Alert(DISCLAIMER),
        Heading(1, "Ablation: levers against the centre gap"),
        Para("Each configuration is summarised over its seeds as mean ± sd. Choose on the **centre-1 validation** "
             "columns only (its mean ± sd, and Δ val: minus the baseline seed by seed, on the same validation "
             "images, with how many seeds agree); the test columns are for reporting. A paired difference is a cluster bootstrap of "
             "macro AUC on the same test images (configuration minus baseline, per seed, averaged): the "
             "centre-2/3 test set, and the case-grouped stratified test set of each seed; differences under "
             "about 0.03 are noise for a single run. The stratified columns are n/a for an experiment that did not "
             "retrain the stratified variant, and the centre columns (validation, centres 2 and 3, pointing game) "
             "for one that did not retrain the centre variant. A row marked *ensemble* averages the probabilities of that "
             "configuration's seeds (its paired difference is against the baseline's ensemble; pointing game and "
             "stratified columns are n/a there, the seeds' stratified test sets differ)."),
        Para(f"Made by `{command}` on {date}."),
        Table(head, rows),
        Image("ablation", "ablation.png"),
        Alert(DISCLAIMER),
    ])


def plot(summary: pd.DataFrame, path: str | Path) -> None:
    """Dot plot, one panel per column: configuration mean with ±sd bars (the figure people would rather see)."""
    fig = Figure(figsize=(3.2 * len(COLUMNS), 0.6 * len(summary) + 2.2))
    axes = fig.subplots(1, len(COLUMNS), sharey=True, squeeze=False)[0]
    y = np.arange(len(summary))
    for ax, column in zip(axes, COLUMNS):
        mean = summary[f"{column}_mean"].astype(float).to_numpy()
        sd = summary[f"{column}_sd"].astype(float).fillna(0.0).to_numpy()
        ax.errorbar(mean, y, xerr=sd, fmt="o", color="#4C72B0", capsize=3)
        ax.set_title(COLUMN_TITLES[column], fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, summary["config"].tolist(), fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(f"Ablation (mean ± sd over seeds). {DISCLAIMER}", fontsize=8, color="firebrick")
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=110, metadata={"Software": None})


# ----------------------------------------------------------------------------------------------- helpers


def _experiment(node: Mapping[str, Any]) -> list[Experiment]:
    """The finished experiment (or commit) of one ``exp show`` node; none for one still queued or running.

    An experiment running in the workspace is listed with rev ``workspace`` and no status: its files are
    half-written, and there is no commit to read them from."""
    data = node.get("data") or {}
    if data.get("status") not in (None, "Success") or "rev" not in data or data["rev"] == "workspace":
        return []
    params = _flatten((data.get("params") or {}).get("params.yaml", {}).get("data", {}))
    name = data.get("name") or node.get("name") or data["rev"][:7]
    return [Experiment(name=str(name), rev=str(data["rev"]), params=params)]


def _flatten(node: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _config_label(exp: Experiment, reference: Experiment) -> str:
    """The params in which ``exp`` differs from the baseline experiment ``reference`` (seed ignored)."""
    keys = sorted((set(exp.params) | set(reference.params)) - set(_IGNORED_PARAMS))
    diffs = [f"{key}={exp.params.get(key)}" for key in keys
             if json.dumps(exp.params.get(key), sort_keys=True) != json.dumps(reference.params.get(key), sort_keys=True)]
    return ", ".join(diffs) if diffs else "baseline"


def _stale(lock: Mapping[str, Any], stage: str, params: Mapping[str, Any]) -> bool:
    """True when ``stage``'s outputs in dvc.lock are not this experiment's (they are a parent's).

    That is: the stage is not in the lock, its recorded params differ from the experiment's, or an input it was
    run on differs from what the stage producing that input last wrote (an upstream stage such as ``prepare`` was
    rerun and this one was not), checked up the pipeline."""
    stages = lock.get("stages") or {}
    if ((stages.get(stage) or {}).get("params") or {}).get("params.yaml") is None:
        return True
    producers = {out.get("path"): (name, out.get("md5")) for name, entry in stages.items()
                 for out in (entry or {}).get("outs") or []}
    seen: dict[str, bool] = {}

    def stale(name: str) -> bool:
        if name not in seen:
            entry = stages.get(name) or {}
            recorded = _flatten(((entry.get("params") or {}).get("params.yaml")) or {})
            seen[name] = any(json.dumps(value, sort_keys=True) != json.dumps(params.get(key), sort_keys=True)
                             for key, value in recorded.items() if key in params)
            for dep in entry.get("deps") or []:
                producer = producers.get(dep.get("path"))
                if producer is not None and producer[0] != name and not seen[name]:
                    seen[name] = dep.get("md5") != producer[1] or stale(producer[0])
        return seen[name]

    return stale(stage)


def _ensemble(label: str, members: list[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Average the members' probabilities image by image; score the result like one model.

    The test images must be the same for every seed (else: an error). Validation is averaged only when the
    seeds share it: a split seeded by ``base.seed`` carves another validation set per seed, and then the
    ensemble has no validation figure (n/a), never one computed on a part of it.
    """
    frames = [m.get("_all_predictions") for m in members]
    if any(f is None for f in frames):
        return None
    parts = {}
    for partition in ("val", "test"):
        keyed = [f[f["partition"] == partition].sort_values("row").reset_index(drop=True) for f in frames]
        same = all(np.array_equal(keyed[0]["row"].to_numpy(), k["row"].to_numpy()) for k in keyed[1:])
        if not same and partition == "test":
            raise ValueError(f"ablation: the seeds of {label!r} ({', '.join(repr(m['name']) for m in members)}) "
                             "were tested on different images; an ensemble needs the same test set.")
        if same:
            prob_columns = [c for c in keyed[0].columns if c.startswith("prob_")]
            mean = keyed[0].copy()
            mean[prob_columns] = np.mean([k[prob_columns].to_numpy(dtype=np.float64) for k in keyed], axis=0)
            parts[partition] = mean
    test = parts["test"]
    row: dict[str, Any] = {"name": f"{label} [ensemble of {len(members)} seeds]", "_test_predictions": test,
                           "val_macro_auc": _macro_auc(parts["val"]) if "val" in parts else None,
                           "center_pooled": _macro_auc(test)}
    for center in ("2", "3"):
        row[f"center_{center}"] = _macro_auc(test[test["center"].astype(str) == center]) \
            if "center" in test.columns else None
    return row


def _macro_auc(frame: pd.DataFrame) -> float | None:
    if frame.empty:
        return None
    y, p = _labels_probs(frame)
    return float(weighted_suite(y, p, np.ones((1, y.size)))["macro_auc"][0])


def _labels_probs(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    prob_columns = [c for c in frame.columns if c.startswith("prob_")]
    return frame["label_idx"].to_numpy(dtype=np.int64), frame[prob_columns].to_numpy(dtype=np.float64)


_NO_PAIR: dict[str, Any] = {"value": None, "ci_low": None, "ci_high": None, "n_pairs": 0}


def _reference(members: list[Mapping[str, Any]], key: str) -> dict[str, Any]:
    """The baseline against itself: 0 where its seeds have those test predictions, else n/a."""
    n = sum(m.get(key) is not None for m in members)
    return {"value": 0.0, "ci_low": None, "ci_high": None, "n_pairs": n} if n else dict(_NO_PAIR)


def _val_difference(pairs: list[tuple[Mapping[str, Any], Mapping[str, Any]]]) -> dict[str, Any]:
    """Centre-1 validation macro AUC minus the baseline's, same seed (same validation images), averaged.

    No bootstrap: validation is what chooses, and a choosing rule reads this mean and how many seeds agree."""
    deltas = [m["val_macro_auc"] - b["val_macro_auc"] for m, b in pairs
              if m["val_macro_auc"] is not None and b["val_macro_auc"] is not None]
    return {"val_delta_mean": float(np.mean(deltas)) if deltas else None,
            "val_delta_positive": int(sum(d > 0 for d in deltas)) if deltas else None, "val_delta_n": len(deltas)}


def _paired_difference(pairs: list[tuple[Mapping[str, Any], Mapping[str, Any]]], *, key: str, resamples: int,
                       seed: int, ci_level: float) -> dict[str, Any]:
    """Macro AUC (config - baseline) on the same test images, cluster-bootstrapped jointly, averaged over seeds.

    ``key`` names the rows' test predictions (centre holdout or stratified); a pair lacking them is skipped."""
    reps, points = [], []
    for mine, base in pairs:
        a, b = mine.get(key), base.get(key)
        if a is None or b is None:
            continue
        a, b = a.sort_values("row").reset_index(drop=True), b.sort_values("row").reset_index(drop=True)
        if not np.array_equal(a["row"].to_numpy(), b["row"].to_numpy()):
            raise ValueError(f"ablation: {mine['name']!r} and {base['name']!r} were tested on different images; "
                             "a paired comparison needs the same split (same split params and data).")
        (ya, pa), (_, pb) = _labels_probs(a), _labels_probs(b)
        weights = bootstrap_weights(ya, resamples=resamples, seed=seed, groups=a["group"].to_numpy())
        ones = np.ones((1, ya.size))
        points.append(weighted_suite(ya, pa, ones)["macro_auc"][0] - weighted_suite(ya, pb, ones)["macro_auc"][0])
        reps.append(weighted_suite(ya, pa, weights)["macro_auc"] - weighted_suite(ya, pb, weights)["macro_auc"])
    if not reps:
        return dict(_NO_PAIR)
    low, high = percentile_ci(np.mean(reps, axis=0), ci_level)
    return {"value": float(np.mean(points)), "ci_low": low, "ci_high": high, "n_pairs": len(reps)}


def _json(text: str | None) -> dict[str, Any] | None:
    return None if text is None else json.loads(text)


def _val_pointing_game(explain: Mapping[str, Any] | None) -> float | None:
    """Validation pointing game of the heatmaps the explain stage used (its ``validation`` block; older metrics
    files have it only as the chosen layer's score in ``layer_search``)."""
    value = _value(explain, "validation", "pointing_game")
    if value is None and explain:
        value = (explain.get("layer_search") or {}).get(explain.get("target_layer"))
    return value


def _value(data: Mapping[str, Any] | None, *keys: str) -> float | None:
    node: Any = data
    for key in keys:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node.get("value") if isinstance(node, Mapping) else node


def _mean_sd(mean: Any, sd: Any) -> str:
    if mean is None or (isinstance(mean, float) and np.isnan(mean)):
        return "n/a"
    return f"{mean:.3f}" if sd is None or (isinstance(sd, float) and np.isnan(sd)) else f"{mean:.3f} ± {sd:.3f}"


def _diff(r: Mapping[str, Any], prefix: str) -> str:
    value = r.get(f"paired_diff_{prefix}_value")
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a (no paired seed)"
    low, high = r.get(f"paired_diff_{prefix}_ci_low"), r.get(f"paired_diff_{prefix}_ci_high")
    if low is None or (isinstance(low, float) and np.isnan(low)):
        return f"{value:+.3f} (reference)" if value == 0 else f"{value:+.3f}"
    if r.get("ensemble"):
        return f"{value:+.3f} ({low:+.3f} to {high:+.3f}, ensemble vs ensemble)"
    return f"{value:+.3f} ({low:+.3f} to {high:+.3f}, {int(r[f'paired_diff_{prefix}_n_pairs'])} seed(s))"


def _val_delta(r: Mapping[str, Any]) -> str:
    value, n = r.get("val_delta_mean"), int(r.get("val_delta_n") or 0)
    if value is None or (isinstance(value, float) and np.isnan(value)) or not n:
        return "n/a (no paired seed)"
    if r.get("reference"):
        return f"{value:+.4f} (reference)"
    # four decimals: the rules' bars (+0.005, -0.010) sit at the third, where rounding would hide a miss
    return f"{value:+.4f} ({int(r['val_delta_positive'])} of {n} seeds > 0)"


def main(argv: list[str] | None = None) -> int:
    """``python -m assurexray.assessment.ablation --baseline NAME``: run `dvc exp show --json`, write the report and figure."""
    import argparse
    import datetime
    import shlex
    import sys

    from assurexray.core.atomic import atomic_path, write_text

    parser = argparse.ArgumentParser(description="Ablation table and figure from DVC experiments.")
    parser.add_argument("--baseline", required=True, help="name of an experiment of the baseline configuration")
    parser.add_argument("--out", default="reports/ablation", help="folder for ablation.md, ablation.png, .csv")
    parser.add_argument("--repo", default=".", help="the DVC/git repository (default: here)")
    parser.add_argument("--exp-show-json", help="read this saved `dvc exp show --json` output instead of running it")
    parser.add_argument("--resamples", type=int, default=1000, help="paired bootstrap resamples")
    parser.add_argument("--only", nargs="+", default=["*"], metavar="GLOB",
                        help="experiment names to include, one or more globs (e.g. 'base-*' 'clahe-*'); default all")
    args = parser.parse_args(argv)
    if args.exp_show_json:
        data = json.loads(Path(args.exp_show_json).read_text(encoding="utf-8"))
    else:
        done = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json", "--all-commits"],
                              cwd=args.repo, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"error: `dvc exp show --json` failed in {args.repo}: {done.stderr.strip()}")
        data = json.loads(done.stdout)
    experiments = [e for e in experiments_from_exp_show(data)
                   if any(fnmatch.fnmatchcase(e.name, pattern) for pattern in args.only)]
    if not experiments:
        raise SystemExit(f"error: no experiment matches --only {' '.join(args.only)!r}; see `dvc exp show`.")
    read = git_reader(args.repo)
    rows = [measure(e, read) for e in experiments]
    summary = summarise(rows, experiments, baseline=args.baseline, resamples=args.resamples)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "ablation.csv") as tmp:
        summary.to_csv(tmp, index=False)
    with atomic_path(out / "ablation.png") as tmp:
        plot(summary, tmp)
    command = "python -m assurexray.assessment.ablation " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    write_text(out / "ablation.md", render_markdown(summary, command=command,
                                                    date=datetime.date.today().isoformat()))
    print(f"ablation: {len(experiments)} experiment(s) in {len(summary)} configuration(s) -> {out / 'ablation.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
