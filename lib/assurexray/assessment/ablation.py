"""Ablation table of DVC experiments: each lever's effect on validation, unseen centres and the stratified split.

Input is ``dvc exp show --json`` (so the grid runs through DVC's own queue) and, per experiment, the metric and
prediction files committed in its git ref that its own run wrote (``assurexray.core.experiments.OwnFiles``: a file
counts only when the stage that wrote it is up to date in the experiment's dvc.lock; else n/a). Experiments that
differ only in ``base.seed`` form one configuration, one run per seed; each configuration is summarised over its
seeds (mean, standard deviation), and compared with the baseline by a paired cluster bootstrap on the same test
images (seed by seed, then averaged), because two runs scored on one test set are not independent: on the
centre-holdout test set (centres 2+3, the same for every seed) and on the case-grouped stratified test set (carved
by ``base.seed``, so shared by the two runs of one seed). The bootstrap resamples test images only: its intervals
cover test-set sampling, not seed variance (that is the sd over seeds). A configuration with several seeds also
gets a seed-ensemble row: the seeds' probabilities averaged image by image (val and test), scored like one model.
Choosing among configurations is done on the centre-1 validation column only; the test columns are for reporting.
The report and figure are drawn by ``ablation_report``. NOT FOR CLINICAL USE.
"""

from __future__ import annotations

import fnmatch
import io
import json
import logging
import subprocess
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from assurexray.assessment.metrics import bootstrap_weights, percentile_ci, weighted_suite
from assurexray.core.experiments import Experiment, OwnFiles, Reader, experiments_from_exp_show, git_reader
from assurexray.core.project import Layout

__all__ = ["Experiment", "experiments_from_exp_show", "git_reader", "measure", "summarise", "main", "COLUMNS",
           "PAIRED"]

logger = logging.getLogger(__name__)

#: Columns of the ablation table, in the order people read them (validation first: it is what chooses).
COLUMNS: tuple[str, ...] = ("val_macro_auc", "center_2", "center_3", "center_pooled", "stratified",
                            "center_3_tumour_vs_normal", "center_2_adapted", "center_3_adapted",
                            "pointing_game_center", "pointing_game_baseline", "val_pointing_game",
                            "lesion_pointing_game_center", "lesion_dice_center")
#: Test sets of the paired differences: column prefix -> row key of the test predictions.
PAIRED: dict[str, str] = {"center": "_test_predictions", "stratified": "_strat_test_predictions"}
_IGNORED_PARAMS = ("base.seed",)  # what distinguishes seeds of one configuration
_REPO = Layout(Path())  # paths inside an experiment's git revision, relative to the repository root


def measure(exp: Experiment, read: Reader) -> dict[str, Any]:
    """The table's numbers for one experiment, from the metrics and predictions its own run wrote.

    A file some other run wrote (a parent's, left by an experiment that reran other stages) is n/a, so each
    column is keyed on the stage that writes it: evaluate@V for eval metrics and predictions, explain@V for the
    pointing game."""
    files = OwnFiles(exp, read)
    row: dict[str, Any] = {"name": exp.name, "rev": exp.rev, "seed": exp.params.get("base.seed"),
                           "_run": files.lock_sha256, "_class_names": tuple(exp.params.get("base.class_names") or ())}
    center_eval = _json(files.read(_REPO.eval_metrics("center")))
    explain = _json(files.read(_REPO.explain_metrics("center")))
    strat_eval = _json(files.read(_REPO.eval_metrics("stratified")))
    row["center_pooled"] = _value(center_eval, "headline", "macro_auc")
    for center in ("2", "3"):
        row[f"center_{center}"] = _value(center_eval, "by_center", center, "headline", "macro_auc")
    row["stratified"] = _value(strat_eval, "headline", "macro_auc")
    # the question the lesion fusion targets, and evaluate.adapt's rows beside the unadapted ones (None: not run)
    row["center_3_tumour_vs_normal"] = _value(center_eval, "by_center", "3", "diagnostics", "tumour_vs_normal_auc")
    for center in ("2", "3"):
        row[f"center_{center}_adapted"] = _value(center_eval, "adapted", "by_center", center, "headline", "macro_auc")
    row["pointing_game_center"] = _value(explain, "model", "overall", "pointing_game")
    row["pointing_game_baseline"] = _value(explain, "baseline", "overall", "pointing_game")
    row["val_pointing_game"] = _val_pointing_game(explain)
    # the lesion map's figures on the same unseen-centre tumours (None: no lesion head, or explain before lesion maps)
    row["lesion_pointing_game_center"] = _value(explain, "lesion_map", "overall", "pointing_game")
    row["lesion_dice_center"] = _value(explain, "lesion_map", "overall", "dice@val")
    frame = _predictions(exp, files, "center")
    row["val_macro_auc"] = _macro_auc(frame[frame["partition"] == "val"], row["_class_names"]) \
        if frame is not None else None
    row["_test_predictions"] = frame[frame["partition"] == "test"] if frame is not None else None
    row["_all_predictions"] = frame
    strat = _predictions(exp, files, "stratified")
    row["_strat_test_predictions"] = strat[strat["partition"] == "test"] if strat is not None else None
    return row


def summarise(rows: Iterable[Mapping[str, Any]], experiments: Iterable[Experiment], *, baseline: str,
              resamples: int = 1000, seed: int = 0, ci_level: float = 0.95) -> pd.DataFrame:
    """One row per configuration: mean and sd of every column over seeds, and the paired difference to baseline.

    ``baseline`` names the configuration every other is compared with (by an experiment name in it). Two runs
    of one configuration with the same seed are an error (see ``_one_run_per_seed``).
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
    by_config = {label: _one_run_per_seed(label, members) for label, members in by_config.items()}
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
        for prefix, key in PAIRED.items():
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


# ----------------------------------------------------------------------------------------------- helpers


def _config_label(exp: Experiment, reference: Experiment) -> str:
    """The params in which ``exp`` differs from the baseline experiment ``reference`` (seed ignored)."""
    keys = sorted((set(exp.params) | set(reference.params)) - set(_IGNORED_PARAMS))
    diffs = [f"{key}={exp.params.get(key)}" for key in keys
             if json.dumps(exp.params.get(key), sort_keys=True) != json.dumps(reference.params.get(key), sort_keys=True)]
    return ", ".join(diffs) if diffs else "baseline"


def _one_run_per_seed(label: str, members: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The members of one configuration, one per seed, in their order; two runs of one seed are an error.

    Keeping either silently would drop the other (and the baseline's pairing by seed would keep whichever came
    last). Not two runs: two entries with one dvc.lock (a commit and the experiment applied to it, or commits
    that changed no pipeline file: the same outputs) count once, and an entry with nothing of its own to
    measure (a commit from before the pipeline ran) gives way to the one that has."""
    by_seed: dict[Any, Mapping[str, Any]] = {}
    for member in members:
        kept = by_seed.get(member["seed"])
        if kept is None or not _measured(kept):
            by_seed[member["seed"]] = member if kept is None or _measured(member) else kept
        elif _measured(member) and (member["_run"] is None or member["_run"] != kept["_run"]):
            raise ValueError(
                f"ablation: experiments {kept['name']!r} and {member['name']!r} are two runs of one configuration "
                f"({label}) with the same base.seed {member['seed']!r}; each seed counts once. Leave one out "
                "(--only with the names to keep, or `dvc exp remove` the one not wanted).")
    return list(by_seed.values())


def _measured(row: Mapping[str, Any]) -> bool:
    """Whether a row holds anything of its run's own (a column's value or predictions)."""
    return any(row.get(c) is not None for c in COLUMNS) or any(row.get(k) is not None for k in PAIRED.values())


def _predictions(exp: Experiment, files: OwnFiles, variant: str) -> pd.DataFrame | None:
    """The variant's predictions.csv when this experiment wrote it; its probability columns named by
    ``base.class_names``, whose order ``label_idx`` indexes."""
    path = _REPO.predictions(variant)
    text = files.read(path)
    if text is None:
        return None
    class_names = list(exp.params.get("base.class_names") or ())
    if not class_names:
        raise ValueError(f"ablation: experiment {exp.name!r} has no base.class_names in its params; the class "
                         f"order of {path.as_posix()} (label_idx, prob_<class>) is read from it. Add it to "
                         "params.yaml.")
    frame = pd.read_csv(io.StringIO(text), dtype={"group": str})
    missing = [c for c in ("row", "partition", "label_idx", *_prob_columns(class_names)) if c not in frame.columns]
    if missing:
        raise ValueError(f"ablation: {path.as_posix()} of experiment {exp.name!r} has no column(s) {missing} "
                         f"(base.class_names {class_names}); re-run evaluate@{variant} in that experiment.")
    return frame


def _prob_columns(class_names: Iterable[str]) -> list[str]:
    return [f"prob_{name}" for name in class_names]


def _ensemble(label: str, members: list[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Average the members' probabilities image by image; score the result like one model.

    The test images must be the same for every seed (else: an error). Validation is averaged only when the
    seeds share it: a split seeded by ``base.seed`` carves another validation set per seed, and then the
    ensemble has no validation figure (n/a), never one computed on a part of it.
    """
    frames = [m.get("_all_predictions") for m in members]
    if any(f is None for f in frames):
        return None
    class_names = members[0]["_class_names"]
    parts = {}
    for partition in ("val", "test"):
        keyed = [f[f["partition"] == partition].sort_values("row").reset_index(drop=True) for f in frames]
        same = all(np.array_equal(keyed[0]["row"].to_numpy(), k["row"].to_numpy()) for k in keyed[1:])
        if not same and partition == "test":
            raise ValueError(f"ablation: the seeds of {label!r} ({', '.join(repr(m['name']) for m in members)}) "
                             "were tested on different images; an ensemble needs the same test set.")
        if same:
            prob_columns = _prob_columns(class_names)
            mean = keyed[0].copy()
            mean[prob_columns] = np.mean([k[prob_columns].to_numpy(dtype=np.float64) for k in keyed], axis=0)
            parts[partition] = mean
    test = parts["test"]
    row: dict[str, Any] = {"name": f"{label} [ensemble of {len(members)} seeds]", "_test_predictions": test,
                           "_class_names": class_names, "center_pooled": _macro_auc(test, class_names),
                           "val_macro_auc": _macro_auc(parts["val"], class_names) if "val" in parts else None}
    for center in ("2", "3"):
        row[f"center_{center}"] = _macro_auc(test[test["center"].astype(str) == center], class_names) \
            if "center" in test.columns else None
    return row


def _macro_auc(frame: pd.DataFrame, class_names: Iterable[str]) -> float | None:
    if frame.empty:
        return None
    y, p = _labels_probs(frame, class_names)
    return float(weighted_suite(y, p, np.ones((1, y.size)))["macro_auc"][0])


def _labels_probs(frame: pd.DataFrame, class_names: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    """(N,) label indices and (N, K) probabilities, columns in ``base.class_names`` order (what label_idx indexes)."""
    return (frame["label_idx"].to_numpy(dtype=np.int64),
            frame[_prob_columns(class_names)].to_numpy(dtype=np.float64))


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
        (ya, pa), (_, pb) = _labels_probs(a, mine["_class_names"]), _labels_probs(b, base["_class_names"])
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


def main(argv: list[str] | None = None) -> int:
    """``python -m assurexray.assessment.ablation --baseline NAME``: run `dvc exp show --json`, write the report and figure."""
    import argparse
    import datetime
    import shlex
    import sys

    # here, not at the top: ablation_report imports this module's columns
    from assurexray.assessment.ablation_report import plot, render_markdown
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
