"""No half-written model outputs: train, evaluate, explain, headline and report are killed at each of their writes.

The approach and the kill points of ``test_stage_kill`` (a forked child reruns the stage with other params and
SIGKILLs itself at its k-th ``os.replace`` or file opened for writing; after each kill every output is
byte-identical to its previous or its new version, or absent).

A tiny project (40 synthetic cases, 32 px, the ``test_efficientnet`` model, 2 epochs) keeps it cheap. The centre
variant's metrics and plots are the stratified ones re-evaluated with other params: headline and report only
read them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from test_stage_kill import (
    backup,
    kill_at_every_write,
    run_killed,
    snapshot,
    snapshot_of,
    stage_main,
    write_params,
)

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork (POSIX)")

V = "stratified"
#: stage -> (argv with {root}, outputs relative to root, scratch paths reset before each run)
STAGES = {
    "train": (["--prepared", "{root}/data/prepared", "--split", f"{{root}}/data/splits/{V}",
               "--model", f"{{root}}/models/{V}/model.pt", "--live", f"{{root}}/metrics/{V}/train",
               "--resume", f"{{root}}/.assurexray/resume/{V}"],
              [f"models/{V}/model.pt", f"metrics/{V}/train/plots/metrics", f"metrics/{V}/train/metrics.json"],
              [f".assurexray/resume/{V}"]),
    "evaluate": (["--prepared", "{root}/data/prepared", "--split", f"{{root}}/data/splits/{V}",
                  "--model", f"{{root}}/models/{V}/model.pt", "--out", f"{{root}}/metrics/{V}/eval",
                  "--figures", f"{{root}}/plots/{V}", "--variant", V],
                 [f"plots/{V}/eval", *(f"metrics/{V}/eval/{name}" for name in (
                     "predictions.csv", "operating_point.json", "metrics.json", "roc.json", "pr.json",
                     "confusion.json"))],
                 []),
    "explain": (["--prepared", "{root}/data/prepared", "--split", f"{{root}}/data/splits/{V}",
                 "--model", f"{{root}}/models/{V}/model.pt",
                 "--predictions", f"{{root}}/metrics/{V}/eval/predictions.csv",
                 "--out", f"{{root}}/metrics/{V}/explain", "--figures", f"{{root}}/plots/{V}/gradcam",
                 "--variant", V],
                [f"plots/{V}/gradcam", f"metrics/{V}/explain/per_image.csv", f"metrics/{V}/explain/metrics.json"],
                []),
    "headline": (["--stratified", "{root}/metrics/stratified",
                  "--stratified-out", "{root}/metrics/stratified/headline.json",
                  "--center", "{root}/metrics/center", "--center-out", "{root}/metrics/center/headline.json",
                  "--selected-out", "{root}/metrics/headline.json"],
                 ["metrics/stratified/headline.json", "metrics/center/headline.json", "metrics/headline.json"],
                 []),
    "report": (["--metrics", "{root}/metrics", "--plots", "{root}/plots", "--out", "{root}/reports"],
               ["reports/model_card.md", "reports/report.md", "reports/report.html"],
               []),
}
#: What the rerun changes, per stage, so that its outputs differ from the first run's.
RERUN = {
    "train": {("base", "seed"): 2},
    "evaluate": {("evaluate", "tta_flip"): True, ("evaluate", "bootstrap_seed"): 3},
    "explain": {("explain", "target"): "true", ("explain", "method"): "gradcam++"},
    "headline": {("headline", "variant"): "center"},
    "report": {("train", "lr"): 5.0e-3},
}
DATA_STAGES = {  # run once to build the project; their outputs are never killed here
    "fetch": ["--out", "{root}/data/raw"],
    "prepare": ["--raw", "{root}/data/raw", "--out", "{root}/data/prepared"],
    "split": ["--variant", V, "--index", "{root}/data/prepared/index.csv", "--out", f"{{root}}/data/splits/{V}",
              "--metrics", f"{{root}}/metrics/{V}/split.json"],
}
MAX_KILLS = 80  # more kill points than any stage here reaches (the test fails if one reaches it)


def tiny_params(root: Path, name: str, updates: dict[tuple[str, ...], object] | None = None) -> Path:
    """``test_stage_kill``'s small-sample params with a tiny untrained model; ``updates`` on top."""
    params = yaml.safe_load(write_params(root, seed=1).read_text(encoding="utf-8"))
    params["model"].update(backbone="test_efficientnet", pretrained="none")
    params["train"].update(epochs=2, batch_size=16, augment={**params["train"]["augment"], "rotate_deg": 0})
    params["evaluate"].update(bootstrap_resamples=20, batch_size=32)
    params["explain"].update(bootstrap_resamples=20, gallery_top_k=1, layer_search=2, batch_size=32)
    for keys, value in (updates or {}).items():
        node = params
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    path = root / f"params-{name}.yaml"
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    return path


def argv_of(template: list[str], root: Path, params: Path) -> list[str]:
    return [a.format(root=root) for a in template] + ["--params", str(params)]


def reset(root: Path, paths: list[str]) -> None:
    for rel in paths:
        shutil.rmtree(root / rel, ignore_errors=True)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Iterator[Path]:
    """fetch -> prepare -> split -> train -> evaluate -> explain (stratified), then headline and report, once.

    Torch runs on one thread here and in the children: a forked child must not inherit a live OpenMP pool.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("killed_model")
    params = tiny_params(root, "first")
    for name, argv in DATA_STAGES.items():
        assert stage_main(name)(argv_of(argv, root, params)) == 0
    for name in ("train", "evaluate", "explain"):
        assert stage_main(name)(argv_of(STAGES[name][0], root, params)) == 0
    reset(root, STAGES["train"][2])
    # headline and report read both variants: the centre's are the stratified ones, evaluated with other params
    shutil.copytree(root / "metrics" / V, root / "metrics" / "center")
    shutil.copytree(root / "plots" / V, root / "plots" / "center")
    center = [a.replace(f"/{V}/eval", "/center/eval").replace(f"plots/{V}", "plots/center")
              for a in STAGES["evaluate"][0]]
    assert stage_main("evaluate")(argv_of(center, root, tiny_params(root, "center", RERUN["evaluate"]))) == 0
    for name in ("headline", "report"):
        assert stage_main(name)(argv_of(STAGES[name][0], root, params)) == 0
    yield root
    torch.set_num_threads(threads)  # the tests after this module run as before


@pytest.mark.parametrize("name", STAGES)
def test_a_model_stage_killed_at_any_write_leaves_each_output_whole_old_new_or_absent(project, name, tmp_path):
    template, outputs, scratch = STAGES[name]
    saved = tmp_path / "previous"
    backup(project, outputs, saved)
    previous = snapshot(project, outputs)
    args = argv_of(template, project, tiny_params(project, f"rerun-{name}", RERUN[name]))
    main = stage_main(name)
    assert run_killed(10_000, project, main, args) == 0  # a complete rerun: the "new" outputs
    new = snapshot(project, outputs)
    changed = [rel for rel in outputs if snapshot_of(previous, rel) != snapshot_of(new, rel)]
    assert changed, f"{name}: the rerun must change some output for the kills to tell old from new"
    kill_at_every_write(name, project, main, args, outputs, saved=saved, previous=previous, new=new,
                        before_each=lambda: reset(project, scratch), max_kills=MAX_KILLS)
    assert snapshot(project, outputs) == previous
