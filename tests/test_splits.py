"""Splits: groups never straddle, classes stay proportional, the centre rule, published lists, the stage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from assurexray.core.params import config_from_mapping
from assurexray.data.splits import (
    PARTITIONS, SplitConfig, grouping_summary, read_index, split_index, split_partitions, split_summary,
    write_splits,
)

CLASSES = ("Normal", "Benign", "Malignant")
#: Every class in every centre, 4 single-image groups each: enough for any partition to hold every class.
BACKBONE = [((label,), center, 1) for label in CLASSES for center in (1, 2, 3) for _ in range(4)]


def _index(groups: list[tuple[tuple[str, ...], int | tuple[int, ...], int]]) -> pd.DataFrame:
    """One row per image; a group is (labels cycled over its images, centre(s) cycled, size)."""
    rows = []
    for g, (labels, centers, size) in enumerate(groups):
        centers = centers if isinstance(centers, tuple) else (centers,)
        for k in range(size):
            label = labels[k % len(labels)]
            rows.append({"row": len(rows), "image_id": f"IMG{len(rows) + 1:06d}.jpeg", "label": label,
                         "label_idx": CLASSES.index(label), "center": centers[k % len(centers)],
                         "case_id": "", "group": f"G{g:04d}"})
    return pd.DataFrame(rows)


group_lists = st.lists(
    st.tuples(
        st.lists(st.sampled_from(CLASSES), min_size=1, max_size=2).map(tuple),  # two labels: cross-class duplicate
        st.one_of(st.sampled_from([1, 2, 3]), st.sampled_from([(1, 2), (2, 3)])),  # a pair: cross-centre group
        st.integers(1, 3),
    ),
    min_size=0,
    max_size=80,
).map(lambda extra: BACKBONE + extra)

PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
OPTIONS = {"stratified": {"val_fraction": 0.15, "test_fraction": 0.15},
           "center": {"train_centers": [1, 2], "val_fraction": 0.2}}


def _config(strategy: str, **options) -> SplitConfig:
    """A ``split.<variant>`` block as the split stage loads it (unknown keys named, values checked)."""
    return config_from_mapping(SplitConfig, {"strategy": strategy, **options}, where="split")


def _split(index: pd.DataFrame, strategy: str, seed: int = 0, **options) -> pd.DataFrame:
    return split_index(index, _config(strategy, **(OPTIONS[strategy] | options)), seed=seed, class_names=CLASSES)


@pytest.mark.parametrize("strategy", ["stratified", "center"])
@PROPERTY
@given(groups=group_lists)
def test_every_image_lands_in_exactly_one_partition_and_no_group_straddles(strategy, groups):
    index = _index(groups)
    parts = _split(index, strategy)
    assert parts["image_id"].tolist() == index["image_id"].tolist()
    assert set(parts["partition"]) == set(PARTITIONS)
    assert (parts.groupby("group")["partition"].nunique() == 1).all()
    assert split_summary(parts, CLASSES)["groups_straddling"] == 0


@PROPERTY
@given(groups=group_lists)
def test_stratified_class_counts_stay_within_one_group_of_their_targets(groups):
    index = _index(groups)
    parts = _split(index, "stratified")
    counts = split_summary(parts, CLASSES)["counts"]
    totals = index["label"].value_counts()
    for partition, fraction in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
        for label in CLASSES:
            assert abs(counts[partition][label] - fraction * totals[label]) <= 3 + 1, (partition, label)


@PROPERTY
@given(groups=group_lists)
def test_center_test_holds_only_other_centres_and_moved_groups_are_the_cross_centre_ones(groups):
    index = _index(groups)
    parts = _split(index, "center", train_centers=[1])
    test = parts[parts["partition"] == "test"]
    assert not (test["center"] == 1).any()
    train_val = parts[parts["partition"] != "test"]
    by_group = index.groupby("group")["center"].agg(lambda c: (c == 1).any() and (c != 1).any())
    spanning = set(by_group[by_group].index)
    assert set(train_val.loc[train_val["center"] != 1, "group"]) == spanning
    summary = split_summary(parts, CLASSES)
    assert summary["groups_moved"] == len(spanning)
    assert summary["images_moved"] == int(index["group"].isin(spanning).sum())


@pytest.mark.parametrize("strategy", ["stratified", "center"])
@settings(max_examples=10, deadline=None)
@given(groups=group_lists, seed=st.integers(0, 2**31))
def test_a_seed_fixes_the_split_whatever_the_row_order(strategy, groups, seed):
    index = _index(groups)
    first = _split(index, strategy, seed=seed).set_index("image_id")["partition"]
    shuffled = index.sample(frac=1.0, random_state=1)
    again = _split(shuffled, strategy, seed=seed).set_index("image_id")["partition"]
    pd.testing.assert_series_equal(first.sort_index(), again.sort_index())


def test_different_seeds_give_different_splits():
    index = _index(BACKBONE * 3)
    a = _split(index, "stratified", seed=1)["partition"]
    b = _split(index, "stratified", seed=2)["partition"]
    assert (a != b).any()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_class_with_only_three_groups_still_reaches_every_partition(seed):
    index = _index([((label,), 1, 1) for label in ("Normal", "Benign") for _ in range(30)]
                   + [(("Malignant",), 1, 2)] * 3)
    counts = split_summary(_split(index, "stratified", seed=seed), CLASSES)["counts"]
    assert [counts[p]["Malignant"] for p in PARTITIONS] == [2, 2, 2]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_small_classes_are_shared_evenly_between_val_and_test(seed):
    index = _index([((label,), 1, 1) for label in CLASSES for _ in range(10)])  # 10 images a class, 1.5 expected
    counts = split_summary(_split(index, "stratified", seed=seed), CLASSES)["counts"]
    for label in CLASSES:
        assert counts["train"][label] == 7
        assert {counts["val"][label], counts["test"][label]} <= {1, 2}
    assert abs(sum(counts["val"].values()) - sum(counts["test"].values())) <= 1


def test_a_group_spanning_train_and_test_centres_stays_on_the_train_side():
    index = _index(BACKBONE + [(("Benign",), (1, 3), 2)])
    parts = _split(index, "center", train_centers=[1])
    moved = parts[parts["group"] == f"G{len(BACKBONE):04d}"]
    assert moved["partition"].nunique() == 1 and moved["partition"].iloc[0] in ("train", "val")
    assert moved["moved"].all() and moved["center"].tolist() == [1, 3]
    summary = split_summary(parts, CLASSES)
    assert (summary["groups_moved"], summary["images_moved"]) == (1, 2)
    assert set(summary["centers"]["test"]) == {"2", "3"}


def test_split_summary_counts_by_partition_and_class():
    index = _index([(("Normal",), 1, 2), (("Benign",), 2, 1), (("Malignant",), 1, 1), (("Normal",), 2, 1)])
    parts = index.assign(partition=["train", "train", "val", "test", "test"], moved=False)
    summary = split_summary(parts, CLASSES)
    assert summary["counts"] == {"train": {"Normal": 2, "Benign": 0, "Malignant": 0},
                                 "val": {"Normal": 0, "Benign": 1, "Malignant": 0},
                                 "test": {"Normal": 1, "Benign": 0, "Malignant": 1}}
    assert summary["n_images"] == {"train": 2, "val": 1, "test": 2, "total": 5}
    assert summary["n_groups"] == {"train": 1, "val": 1, "test": 2, "total": 4}
    assert summary["fractions"] == {"train": 0.4, "val": 0.2, "test": 0.4}
    assert summary["class_shares"]["test"] == {"Normal": 0.5, "Benign": 0.0, "Malignant": 0.5}
    assert summary["centers"]["test"] == {"1": 1, "2": 1}
    assert (summary["groups_moved"], summary["groups_straddling"]) == (0, 0)


# --- errors -----------------------------------------------------------------------------------------------


def test_a_class_too_rare_for_every_partition_fails_naming_partition_and_class():
    index = _index([g for g in BACKBONE if g[0] != ("Malignant",)] + [(("Malignant",), 1, 3), (("Malignant",), 2, 2)])
    with pytest.raises(ValueError, match=r"partition '(val|test)' has no image of class\(es\) \['Malignant'\] "
                                         r"\(images in the whole index: \{'Malignant': 5\}\)"):
        _split(index, "stratified")


def test_center_fails_when_the_test_centres_lack_a_class_and_the_policy_is_error():
    index = _index([g for g in BACKBONE if not (g[0] == ("Benign",) and g[1] != 1)])
    with pytest.raises(ValueError, match=r"partition 'test' has no image of class\(es\) \['Benign'\]"):
        _split(index, "center", train_centers=[1], missing_test_classes="error")


def test_center_by_default_allows_test_centres_without_a_class_and_records_it(caplog):
    # BTXRD: the Normal images seem to come from centre 1 only, so unseen centres may hold tumours alone.
    index = _index([g for g in BACKBONE if not (g[0] == ("Benign",) and g[1] != 1)])
    parts = _split(index, "center", train_centers=[1])
    summary = split_summary(parts, CLASSES)
    assert summary["missing_classes"] == {"train": [], "val": [], "test": ["Benign"]}
    assert summary["counts"]["test"]["Benign"] == 0 and summary["n_images"]["test"] > 0
    assert "test has no image of class(es) ['Benign']" in caplog.text
    with pytest.raises(ValueError, match=r"split.missing_test_classes: expected one of \['error', 'allow'\], "
                                         r"got 'ignore'"):
        _split(index, "center", train_centers=[1], missing_test_classes="ignore")


def test_keys_of_another_strategy_are_ignored_with_a_warning(caplog):
    # Switching `split.stratified.strategy` to center with -S must not require deleting test_fraction.
    index = _index(BACKBONE)
    parts = _split(index, "center", train_centers=[1], test_fraction=0.3)
    assert "key(s) ['test_fraction'] do not apply to strategy 'center'; ignored" in caplog.text
    assert set(parts.loc[parts["partition"] == "test", "center"]) == {2, 3}


def test_a_class_missing_from_val_fails_even_when_test_may_lack_it():
    index = _index([g for g in BACKBONE if g[0] != ("Malignant",)] + [(("Malignant",), 2, 3)])
    with pytest.raises(ValueError, match=r"partition '(train|val)' has no image of class\(es\) \['Malignant'\]"):
        _split(index, "center", train_centers=[1])


@pytest.mark.parametrize(
    ("strategy", "options", "match"),
    [
        ("random", {}, r"unknown strategy 'random'; valid strategies are \['center', 'published', 'stratified'\]"),
        ("center", {"val_fractoin": 0.2}, r"unknown key\(s\) \['val_fractoin'\]; valid keys are "
                                          r"\['list_file', 'missing_test_classes', 'strategy', 'test_fraction', "
                                          r"'test_list', 'train_centers', 'train_list', 'unlisted', 'val_fraction', "
                                          r"'val_list'\]"),
        ("stratified", {"val_fraction": 1.5}, r"split\.val_fraction: expected a number in \[0, 1\), got 1\.5"),
        ("stratified", {"val_fraction": 0.5, "test_fraction": 0.5}, r"val_fraction \+ test_fraction \(1\.0\) < 1"),
        ("center", {"train_centers": [9]}, r"train_centers: \[9\] names centre\(s\) \[9\] absent.*present: "
                                           r"\[1, 2, 3\]"),
        ("published", {}, r"the published strategy needs the authors' split: list_file"),
        ("published", {"list_file": "x.csv", "unlisted": "drop"}, r"split\.unlisted: expected 'test' or 'error', "
                                                                  r"got 'drop'"),
    ],
    ids=["unknown-strategy", "unknown-key", "fraction-range", "fractions-sum", "unknown-centre", "no-list",
         "bad-unlisted"],
)
def test_bad_split_params_are_refused_with_the_valid_choices(strategy, options, match):
    with pytest.raises(ValueError, match=match):
        split_index(_index(BACKBONE), _config(strategy, **options), seed=0, class_names=CLASSES)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda df: df.drop(columns="group"), r"missing column\(s\) \['group'\]"),
        (lambda df: df.assign(label=df["label"].replace("Benign", "benign")),
         r"image 'IMG\d+\.jpeg' has label 'benign', not one of base\.class_names"),
        (lambda df: df.assign(group=[""] + df["group"].tolist()[1:]), r"image 'IMG000001\.jpeg' has an empty group"),
        (lambda df: df.iloc[:0], r"no rows to split"),
    ],
    ids=["no-group-column", "unknown-label", "empty-group", "empty-index"],
)
def test_a_malformed_index_is_refused_naming_the_image_or_column(edit, match):
    with pytest.raises(ValueError, match=match):
        _split(edit(_index(BACKBONE)), "stratified")


# --- published --------------------------------------------------------------------------------------------


def _published_rows(index: pd.DataFrame) -> list[tuple[str, str]]:
    """A listing cycling train, train, val, test over the groups (whole groups), ids without extension."""
    cycle = ["train", "train", "val", "test"]
    part_of = {g: cycle[i % 4] for i, g in enumerate(sorted(index["group"].unique()))}
    return [(Path(i).stem, part_of[g]) for i, g in zip(index["image_id"], index["group"])]


@pytest.mark.parametrize("fmt", ["csv", "txt"])
def test_published_lists_are_replicated_exactly(tmp_path, fmt):
    index = _index(BACKBONE)
    rows = _published_rows(index)
    path = tmp_path / f"split.{fmt}"
    if fmt == "csv":
        pd.DataFrame(rows, columns=["image_id", "partition"]).to_csv(path, index=False)
    else:
        path.write_text("# authors' split\n" + "\n".join(f"{i}.jpeg {p.upper()}" for i, p in rows) + "\n")
    parts = split_index(index, _config("published", list_file=str(path)), seed=0, class_names=CLASSES)
    assert parts["partition"].tolist() == [p for _, p in rows]


def test_published_unlisted_images_go_to_test_or_fail_and_straddling_groups_are_counted(tmp_path):
    index = _index(BACKBONE + [(("Normal",), 1, 2)])
    rows = _published_rows(index)
    rows[-1] = (rows[-1][0], "train" if rows[-2][1] != "train" else "val")  # the 2-image group now straddles
    listed, unlisted = rows[:-3], rows[-3]
    path = tmp_path / "split.csv"
    pd.DataFrame(listed + rows[-2:], columns=["image_id", "partition"]).to_csv(path, index=False)
    parts = split_index(index, _config("published", list_file=str(path)), seed=0, class_names=CLASSES)
    assert parts.loc[parts["image_id"] == f"{unlisted[0]}.jpeg", "partition"].item() == "test"
    assert split_summary(parts, CLASSES)["groups_straddling"] == 1
    with pytest.raises(ValueError, match=rf"1 image\(s\) of the index are not listed, e.g. \['{unlisted[0]}\.jpeg'\]"):
        split_index(index, _config("published", list_file=str(path), unlisted="error"), seed=0, class_names=CLASSES)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ("IMG000001.jpeg,holdout\n", r"partition 'holdout' for image 'IMG000001\.jpeg'; expected train, val or test"),
        ("IMG000001.png,test\n", r"image\(s\) \['IMG000001'\] listed in two partitions"),
    ],
    ids=["bad-partition", "conflict"],
)
def test_a_bad_published_list_is_refused_naming_the_ids(tmp_path, extra, match):
    index = _index(BACKBONE)
    path = tmp_path / "split.csv"
    path.write_text("image_id,partition\n" + "\n".join(f"{i},{p}" for i, p in _published_rows(index)) + "\n" + extra)
    with pytest.raises(ValueError, match=match):
        split_index(index, _config("published", list_file=str(path)), seed=0, class_names=CLASSES)


def test_a_missing_published_list_or_column_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"split\.list_file: '.*nope\.csv' not found"):
        split_index(_index(BACKBONE), _config("published", list_file=str(tmp_path / "nope.csv")),
                    seed=0, class_names=CLASSES)
    (tmp_path / "s.csv").write_text("image,split\nIMG000001,train\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['image_id', 'partition'\]"):
        split_index(_index(BACKBONE), _config("published", list_file=str(tmp_path / "s.csv")),
                    seed=0, class_names=CLASSES)


# --- files and the stage ----------------------------------------------------------------------------------


def test_written_partitions_keep_the_index_columns_and_order_and_replace_old_files(tmp_path):
    index = _index(BACKBONE).assign(dup_of="")
    parts = _split(index, "stratified")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "stale.csv").write_text("old")
    write_splits(parts, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["test.csv", "train.csv", "val.csv"]
    for name in PARTITIONS:
        part = read_index(tmp_path / "out" / f"{name}.csv")
        expected = index[parts["partition"] == name].reset_index(drop=True)
        pd.testing.assert_frame_equal(part, expected, check_dtype=False)


def test_the_split_stage_writes_partitions_and_metrics(repo_root, tmp_path):
    index = _index(BACKBONE * 2)
    index.to_csv(tmp_path / "index.csv", index=False)
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run(
        [sys.executable, "stages/split.py", "--variant", "center", "--index", str(tmp_path / "index.csv"),
         "--out", str(tmp_path / "splits" / "center"), "--metrics", str(tmp_path / "metrics" / "split.json"),
         "--params", str(tmp_path / "params.yaml")],
        cwd=repo_root, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    sizes = {name: len(pd.read_csv(tmp_path / "splits" / "center" / f"{name}.csv")) for name in PARTITIONS}
    metrics = json.loads((tmp_path / "metrics" / "split.json").read_text())
    assert metrics["n_images"] == sizes | {"total": len(index)}
    assert sizes["test"] == int((index["center"] != 1).sum())
    assert (metrics["variant"], metrics["strategy"], metrics["seed"]) == ("center", "center", params["base"]["seed"])


def test_listed_images_absent_from_the_index_are_reported_not_fatal(tmp_path):
    index = _index(BACKBONE)
    path = tmp_path / "split.csv"
    rows = "\n".join(f"{i},{p}" for i, p in _published_rows(index))
    path.write_text("image_id,partition\n" + rows + "\nIMG999999.jpeg,train\nIMG888888.jpeg,val\n")
    parts, notes = split_partitions(index, _config("published", list_file=str(path)), seed=0, class_names=CLASSES)
    assert notes["listed_absent"] == 2 and notes["listed_absent_examples"] == ["IMG888888", "IMG999999"]
    assert len(parts) == len(index)


def test_the_authors_train_and_val_sheets_replicate_their_split_with_validation_carved_from_train(tmp_path):
    index = _index(BACKBONE)
    rows = dict(_published_rows(index))
    train = [i for i, p in rows.items() if p in ("train", "val")]
    test = [i for i, p in rows.items() if p == "test"]
    pd.DataFrame({"image_id": train}).to_excel(tmp_path / "train.xlsx", index=False)
    pd.DataFrame({"image_id": test}).to_excel(tmp_path / "val.xlsx", index=False)
    config = _config("published", train_list=str(tmp_path / "train.xlsx"), test_list=str(tmp_path / "val.xlsx"),
                     val_fraction=0.2)
    parts, notes = split_partitions(index, config, seed=0, class_names=CLASSES)
    by_id = dict(zip(parts["image_id"].map(lambda s: Path(s).stem), parts["partition"]))
    assert all(by_id[i] == "test" for i in test)  # the authors' held-out sheet is our test, image for image
    assert all(by_id[i] in ("train", "val") for i in train)
    assert notes["val_carved_from_train"] == int((parts["partition"] == "val").sum()) > 0
    carved = parts[parts["partition"].isin(["train", "val"])]
    assert (carved.groupby("group")["partition"].nunique() == 1).all()  # validation is carved by group


def test_a_published_sheet_without_an_image_id_column_is_named(tmp_path):
    pd.DataFrame({"name": ["IMG000001"]}).to_excel(tmp_path / "train.xlsx", index=False)
    with pytest.raises(ValueError, match=r"train\.xlsx: no image_id column; columns found: \['name'\]"):
        split_index(_index(BACKBONE), _config("published", train_list=str(tmp_path / "train.xlsx"),
                                              val_fraction=0.2), seed=0, class_names=CLASSES)


def test_grouping_summary_counts_cases_duplicates_and_what_straddles():
    parts = pd.DataFrame({
        "image_id": [f"IMG{i}" for i in range(6)],
        "case_id": ["a", "a", "b", "", "", "c"],
        "dup_of": ["", "", "", "", "IMG3", ""],
        "group": ["IMG0", "IMG0", "IMG2", "IMG3", "IMG3", "IMG5"],
        "partition": ["train", "test", "test", "val", "val", "test"],
    })
    g = grouping_summary(parts)
    assert g["basis"] == "cases+duplicates"
    assert (g["n_images_with_case"], g["n_cases"], g["n_cases_multi_image"]) == (4, 3, 1)
    assert (g["n_duplicate_images"], g["n_groups"], g["n_groups_multi_image"]) == (1, 4, 2)
    assert (g["groups_straddling"], g["cases_straddling"], g["test_images_with_case_elsewhere"]) == (1, 1, 1)
    assert grouping_summary(parts.assign(case_id=""))["basis"] == "duplicates only"
