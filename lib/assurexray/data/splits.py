"""Split the prepared index into train / val / test partitions, with case groups never straddling them.

Strategies live in a registry keyed by ``split.<variant>.strategy``:

- ``stratified``: class-stratified random split by group (default 70/15/15).
- ``center``: train/val from ``train_centers``, test = every other centre (external validation). A group with
  images in both train and test centres is kept out of test (on the train side) and counted (``groups_moved``).
- ``published``: the authors' split, from ``list_file`` (a CSV with ``image_id`` and ``partition`` columns, or a
  TXT with one ``image_id partition`` pair a line) or from one sheet per partition, ``train_list`` /
  ``val_list`` / ``test_list`` (.xlsx, .csv or .txt with an ``image_id`` column: the authors ship
  ``classification task/Distribution/{train,val}.xlsx``). Without a validation list, ``val_fraction`` of the
  listed train images (by group, class-stratified) becomes validation. Ids are matched on their stem
  (``IMG000001`` matches ``IMG000001.jpeg`` or a resized ``.png``). Images no list names go to test
  (``unlisted: test``, logged) or fail (``unlisted: error``); listed ids absent from the index are reported
  (``listed_absent``), not fatal. The authors' split is image-level: groups straddling partitions are kept as
  listed (the protocol is replicated) and reported as ``groups_straddling``.

The greedy group assignment places large groups first, each where it best reduces the squared deviation of every
class's per-partition count from its target, after seeding every partition with one group of each class so that
small classes are present everywhere when they can be.
Over 400 lines on purpose: the three strategies (stratified, centre, published lists) share the group
assignment and the every-class checks.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from assurexray.core.atomic import atomic_dir
from assurexray.data.manifests import read_index  # re-exported for stages/split.py: the one index reader
from assurexray.data.sheets import image_ids, read_sheet

__all__ = ["PARTITIONS", "STRATEGIES", "SplitConfig", "grouping_statement", "grouping_summary", "read_index", "split_index", "split_partitions",
           "split_summary", "write_splits"]

logger = logging.getLogger(__name__)

PARTITIONS: tuple[str, ...] = ("train", "val", "test")
#: Index columns a split needs.
REQUIRED_COLUMNS: tuple[str, ...] = ("image_id", "label", "center", "group")
#: Columns added by ``split_index`` (dropped again when the partitions are written).
SPLIT_COLUMNS: tuple[str, ...] = ("partition", "moved")
_PARTITION_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


@dataclass(frozen=True)
class _Strategy:
    """A split strategy: the function and its options with their defaults (``None`` = required)."""

    func: Callable[..., pd.DataFrame]
    defaults: dict[str, Any]


def split_index(
    index: pd.DataFrame, config: SplitConfig, *, seed: int, class_names: Sequence[str]
) -> pd.DataFrame:
    """Return a copy of ``index`` with ``partition`` (train/val/test) and ``moved`` (bool) columns.

    ``config`` is one ``split.<variant>`` block: the strategy and its keys (``None`` means the default). Fails
    if a class ends up missing from a partition (the metrics of that partition would be undefined).
    """
    return split_partitions(index, config, seed=seed, class_names=class_names)[0]


def split_partitions(
    index: pd.DataFrame, config: SplitConfig, *, seed: int, class_names: Sequence[str]
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """:func:`split_index` plus the strategy's notes for split.json (e.g. ``listed_absent`` of published)."""
    strategy = config.strategy
    spec = STRATEGIES[strategy]  # SplitConfig checked the name
    # A key of another strategy is ignored (with a warning), so `-S split.stratified.strategy=published` works
    # without deleting val_fraction; a key no strategy knows is not a SplitConfig field, so loading it failed.
    ignored = sorted(f.name for f in dataclasses.fields(config)
                     if f.name != "strategy" and f.name not in spec.defaults and getattr(config, f.name) is not None)
    if ignored:
        logger.warning("split: key(s) %s do not apply to strategy %r; ignored", ignored, strategy)
    resolved = {key: default if getattr(config, key) is None else getattr(config, key)
                for key, default in spec.defaults.items()}
    policy = resolved.pop("missing_test_classes")
    if policy not in MISSING_TEST_CLASS_POLICIES:
        raise ValueError(f"split.missing_test_classes: expected one of {list(MISSING_TEST_CLASS_POLICIES)}, "
                         f"got {policy!r}.")
    frame = _checked_index(index, class_names).reset_index(drop=True)  # a unique index for the strategies
    result = spec.func(frame, seed=seed, class_names=tuple(class_names), **resolved)
    parts, notes = result if isinstance(result, tuple) else (result, {})
    parts = parts.set_axis(index.index)
    _check_every_class_everywhere(parts, class_names, strategy=strategy, allow_missing_in_test=policy == "allow")
    return parts, notes


def split_summary(parts: pd.DataFrame, class_names: Sequence[str]) -> dict[str, Any]:
    """Counts per partition and class, groups, fractions, centres, and groups moved or straddling (JSON-able)."""
    n_total = len(parts)
    counts, n_images, n_groups, fractions, shares, centers = {}, {}, {}, {}, {}, {}
    for name in PARTITIONS:
        part = parts[parts["partition"] == name]
        by_class = part["label"].value_counts()
        counts[name] = {c: int(by_class.get(c, 0)) for c in class_names}
        n_images[name] = len(part)
        n_groups[name] = int(part["group"].nunique())
        fractions[name] = round(len(part) / n_total, 6) if n_total else 0.0
        shares[name] = {c: round(counts[name][c] / len(part), 6) if len(part) else 0.0 for c in class_names}
        centers[name] = {str(k): int(v) for k, v in sorted(part["center"].value_counts().items())}
    n_images["total"] = n_total
    n_groups["total"] = int(parts["group"].nunique())
    straddling = parts.groupby("group")["partition"].nunique()
    moved = parts[parts["moved"]] if "moved" in parts else parts.iloc[:0]
    return {
        "counts": counts,
        "n_images": n_images,
        "n_groups": n_groups,
        "fractions": fractions,
        "class_shares": shares,
        "centers": centers,
        "groups_moved": int(moved["group"].nunique()),
        "images_moved": len(moved),
        "groups_straddling": int((straddling > 1).sum()),
        "missing_classes": {name: [c for c in class_names if counts[name][c] == 0] for name in PARTITIONS},
        "grouping": grouping_summary(parts),
    }


def grouping_summary(parts: pd.DataFrame) -> dict[str, Any]:
    """How groups were formed and what straddles: the facts every sentence about leakage is written from.

    ``basis`` is ``cases+duplicates`` when any image carries a case key, else ``duplicates only`` (then views of
    one case may sit in different partitions). ``*_straddling`` count groups/cases with images in more than one
    partition; ``test_images_with_case_elsewhere`` counts test images whose case has another image outside test.
    """
    case = parts["case_id"].fillna("").astype(str).str.strip() if "case_id" in parts else pd.Series("", index=parts.index)
    dup = parts["dup_of"].fillna("").astype(str) if "dup_of" in parts else pd.Series("", index=parts.index)
    with_case = parts[case != ""]
    per_case = with_case.groupby(case[case != ""])
    sizes = parts.groupby("group").size()
    out: dict[str, Any] = {
        "basis": "cases+duplicates" if len(with_case) else "duplicates only",
        "n_images": len(parts),
        "n_images_with_case": len(with_case),
        "n_cases": int(per_case.ngroups),
        "n_cases_multi_image": int((per_case.size() > 1).sum()) if len(with_case) else 0,
        "n_duplicate_images": int((dup != "").sum()),
        "n_groups": int(sizes.size),
        "n_groups_multi_image": int((sizes > 1).sum()),
        "n_images_in_multi_image_groups": int(sizes[sizes > 1].sum()),
        "largest_groups": [int(v) for v in sizes.sort_values(ascending=False).head(5)],
    }
    if "partition" in parts:
        case_parts = with_case.groupby(case[case != ""])["partition"].nunique()
        out["groups_straddling"] = int((parts.groupby("group")["partition"].nunique() > 1).sum())
        out["cases_straddling"] = int((case_parts > 1).sum())
        test = parts["partition"] == "test"
        outside = set(case[(case != "") & ~test])
        out["test_images_with_case_elsewhere"] = int(((case != "") & test & case.isin(outside)).sum())
    return out


def write_splits(parts: pd.DataFrame, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``train.csv``, ``val.csv``, ``test.csv`` (index columns, index order) into ``out_dir`` atomically."""
    out_dir = Path(out_dir)
    columns = [c for c in parts.columns if c not in SPLIT_COLUMNS]
    with atomic_dir(out_dir) as tmp:
        for name in PARTITIONS:
            parts.loc[parts["partition"] == name, columns].to_csv(tmp / f"{name}.csv", index=False)
    return {name: out_dir / f"{name}.csv" for name in PARTITIONS}


# --- strategies -------------------------------------------------------------------------------------------


def _stratified(
    index: pd.DataFrame, *, seed: int, class_names: tuple[str, ...], val_fraction: float, test_fraction: float
) -> pd.DataFrame:
    fractions = _fractions(val_fraction=val_fraction, test_fraction=test_fraction)
    return _with_partitions(index, _assign_groups(index, fractions, class_names=class_names, seed=seed))


def _center(
    index: pd.DataFrame, *, seed: int, class_names: tuple[str, ...], train_centers: Any, val_fraction: float
) -> pd.DataFrame:
    centers = [train_centers] if isinstance(train_centers, (int, np.integer)) else list(train_centers)
    present = sorted(index["center"].unique().tolist())
    unknown = [c for c in centers if c not in present]
    if not centers or unknown:
        raise ValueError(
            f"split.train_centers: {train_centers!r} names centre(s) {unknown} absent from the index; centres "
            f"present: {present}. List one or more of them."
        )
    in_train_center = index["center"].isin(centers)
    train_side = index["group"].isin(index.loc[in_train_center, "group"])  # any image in a train centre
    moved_groups = index.loc[train_side & ~in_train_center, "group"].unique()
    if len(moved_groups):
        logger.warning(
            "%d group(s) (%d images) span train and test centres; kept on the train side, out of test",
            len(moved_groups), int((index["group"].isin(moved_groups)).sum()),
        )
    fractions = _fractions(val_fraction=val_fraction, test_fraction=0.0)
    assigned = _assign_groups(index[train_side], fractions, class_names=class_names, seed=seed)
    partition = pd.Series("test", index=index.index, dtype=object)
    partition.loc[assigned.index] = assigned
    parts = _with_partitions(index, partition)
    parts["moved"] = index["group"].isin(moved_groups).to_numpy()
    return parts


def _published(
    index: pd.DataFrame, *, seed: int, class_names: tuple[str, ...], list_file: str | None, train_list: str | None,
    val_list: str | None, test_list: str | None, unlisted: str, val_fraction: float | None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    sheets = {"train": train_list, "val": val_list, "test": test_list}
    if list_file is None and all(v is None for v in sheets.values()):
        raise ValueError("split: the published strategy needs the authors' split: list_file (image_id,partition) "
                         "or train_list / val_list / test_list (one image_id sheet each, e.g. the authors' "
                         "classification task/Distribution/train.xlsx and val.xlsx).")
    if list_file is not None and any(v is not None for v in sheets.values()):
        raise ValueError("split: give either list_file or train_list/val_list/test_list for the published "
                         f"strategy, not both (list_file={list_file!r}, lists={sheets!r}).")
    if unlisted not in ("test", "error"):
        raise ValueError(f"split.unlisted: expected 'test' or 'error', got {unlisted!r}.")
    if list_file is not None:
        listing = _read_listing(Path(list_file))
        source = str(list_file)
    else:
        listing = _read_partition_sheets({k: v for k, v in sheets.items() if v is not None})
        source = ", ".join(f"{k}: {v}" for k, v in sheets.items() if v is not None)
    stems = index["image_id"].map(lambda s: Path(s).stem)
    if stems.duplicated().any():
        raise ValueError(f"index: image ids {sorted(stems[stems.duplicated()])[:5]} share a stem; cannot match "
                         f"{source} by stem.")
    absent = sorted(set(listing.index) - set(stems))
    if absent:
        logger.warning("%s: %d listed image(s) are not in the index (not in this copy of the release), e.g. %s; "
                       "they are reported in split.json (listed_absent)", source, len(absent), absent[:10])
    partition = stems.map(listing)
    missing = partition.isna()
    if missing.any():
        examples = index.loc[missing, "image_id"].tolist()[:10]
        if unlisted == "error":
            raise ValueError(
                f"{source}: {int(missing.sum())} image(s) of the index are not listed, e.g. {examples}; list "
                "them or set split.<variant>.unlisted: test."
            )
        logger.warning("%d image(s) not in %s go to test, e.g. %s", int(missing.sum()), source, examples)
    partition = partition.fillna("test")
    carved = 0
    if not (partition == "val").any():
        if val_fraction is None:
            raise ValueError(f"{source}: no validation images listed; give val_list or split.<variant>.val_fraction "
                             "(the share of the listed train images, by group, used for validation).")
        train_rows = index[partition == "train"]
        if train_rows.empty:
            raise ValueError(f"{source}: no train images listed; give train_list.")
        fractions = _fractions(val_fraction=val_fraction, test_fraction=0.0)
        partition.loc[train_rows.index] = _assign_groups(train_rows, fractions, class_names=class_names, seed=seed)
        carved = int((partition == "val").sum())
        logger.info("published split: %d of the listed train images (by group) carved out as validation", carved)
    parts = _with_partitions(index, partition)
    straddling = parts.groupby("group")["partition"].nunique()
    if (straddling > 1).any():
        logger.warning("%d group(s) straddle partitions in the published split (kept as published)",
                       int((straddling > 1).sum()))
    notes = {"source": source, "n_listed": int(len(listing)), "listed_absent": len(absent),
             "listed_absent_examples": absent[:10], "unlisted_to_test": int(missing.sum()),
             "val_carved_from_train": carved}
    return parts, notes


#: What to do when a class has no image in test: ``error``, or ``allow`` (logged, recorded in split.json).
#: Train and validation always need every class (training, early stopping and the operating point do).
MISSING_TEST_CLASS_POLICIES = ("error", "allow")

# The centre holdout allows it by default: in BTXRD the Normal images appear to come from centre 1 only (all
# 10 Normal images of the 30-image excerpt are), so an unseen-centre test set may hold tumours alone; its
# metrics are then computed over the classes present (macro averages included).
@dataclass(frozen=True)
class SplitConfig:
    """One variant block under ``split`` in params.yaml (e.g. ``split.center``), passed whole to
    :func:`split_partitions`; ``None`` = the strategy's default.

    The fields are every key some strategy reads (``STRATEGIES[...].defaults``); a key of another strategy is
    accepted and ignored by :func:`split_partitions`, so ``-S split.stratified.strategy=published`` works alone.
    """

    strategy: str  # stratified | center | published
    val_fraction: float | None = None
    test_fraction: float | None = None
    missing_test_classes: str | None = None
    train_centers: list[Any] | None = None
    list_file: str | None = None
    train_list: str | None = None
    val_list: str | None = None
    test_list: str | None = None
    unlisted: str | None = None

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"split.strategy: unknown strategy {self.strategy!r}; valid strategies are "
                             f"{sorted(STRATEGIES)}.")

STRATEGIES: dict[str, _Strategy] = {
    "stratified": _Strategy(_stratified, {"val_fraction": 0.15, "test_fraction": 0.15,
                                          "missing_test_classes": "error"}),
    "center": _Strategy(_center, {"train_centers": [1], "val_fraction": 0.15, "missing_test_classes": "allow"}),
    "published": _Strategy(_published, {"list_file": None, "train_list": None, "val_list": None, "test_list": None,
                                        "unlisted": "test", "val_fraction": None, "missing_test_classes": "error"}),
}


# --- helpers ----------------------------------------------------------------------------------------------


def _checked_index(index: pd.DataFrame, class_names: Sequence[str]) -> pd.DataFrame:
    missing = [c for c in REQUIRED_COLUMNS if c not in index.columns]
    if missing:
        raise ValueError(f"index: missing column(s) {missing}; columns found: {list(index.columns)}. "
                         "Rebuild it with the prepare stage.")
    if index.empty:
        raise ValueError("index: no rows to split; the prepare stage produced an empty index.")
    bad = ~index["label"].isin(list(class_names))
    if bad.any():
        row = index[bad].iloc[0]
        raise ValueError(
            f"index: image {row['image_id']!r} has label {row['label']!r}, not one of base.class_names "
            f"{list(class_names)} ({int(bad.sum())} such row(s)). Fix base.class_names or rebuild the index."
        )
    empty_group = index["group"].astype(str).str.len() == 0
    if empty_group.any():
        raise ValueError(f"index: image {index.loc[empty_group, 'image_id'].iloc[0]!r} has an empty group; every "
                         "row needs one (its own image id when it has no duplicate).")
    return index.drop(columns=[c for c in SPLIT_COLUMNS if c in index.columns])


def _fractions(*, val_fraction: float, test_fraction: float) -> dict[str, float]:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ValueError(f"split.{name}: expected a number in [0, 1), got {value!r}.")
    if val_fraction <= 0 or val_fraction + test_fraction >= 1:
        raise ValueError(
            f"split: val_fraction {val_fraction!r} must be > 0 and val_fraction + test_fraction "
            f"({val_fraction + test_fraction!r}) < 1, so that train is not empty."
        )
    fractions = {"train": 1 - val_fraction - test_fraction, "val": val_fraction, "test": test_fraction}
    return {name: value for name, value in fractions.items() if value > 0}


def _assign_groups(
    index: pd.DataFrame, fractions: dict[str, float], *, class_names: tuple[str, ...], seed: int
) -> pd.Series:
    """Partition name per row of ``index``, whole groups at a time (see the module docstring)."""
    counts = pd.crosstab(index["group"], index["label"]).reindex(columns=list(class_names), fill_value=0)
    counts = counts.sort_index()  # row order of the input never matters; only the seed does
    vectors = counts.to_numpy(dtype=float)  # (G, C)
    names = list(fractions)
    target = np.array([fractions[n] for n in names])[:, None] * vectors.sum(0)[None, :]  # (P, C)
    weight = 1.0 / np.maximum(vectors.sum(0), 1.0) ** 2  # (C,): a class's deviation as a share of its size
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(vectors))
    order = order[np.argsort(-vectors[order].sum(1), kind="stable")]  # largest groups first, random among ties
    current = np.zeros_like(target)
    choice = np.full(len(vectors), -1)
    for c in np.argsort(vectors.sum(0), kind="stable"):  # rarest class first
        for p in range(len(names)):
            if current[p, c] > 0:
                continue
            candidates = [g for g in order[::-1] if choice[g] < 0 and vectors[g, c] > 0]  # smallest first
            if not candidates:
                break
            choice[candidates[0]] = p
            current[p] += vectors[candidates[0]]
    for g in order:
        if choice[g] >= 0:
            continue
        v = vectors[g]
        delta = ((2 * v * (current - target) + v**2) * weight).sum(1)  # (P,) change of the squared deviation
        # Ties (common for small classes) go to the partition least filled overall, so val and test stay even.
        fill = current.sum(1) / np.maximum(target.sum(1), 1e-9)
        tied = np.flatnonzero(delta <= delta.min() + 1e-12)
        choice[g] = int(tied[np.argmin(fill[tied])])
        current[choice[g]] += v
    by_group = pd.Series(np.array(names, dtype=object)[choice], index=counts.index)
    return pd.Series(index["group"].map(by_group).to_numpy(), index=index.index, dtype=object)


def _with_partitions(index: pd.DataFrame, partition: pd.Series) -> pd.DataFrame:
    parts = index.copy()
    parts["partition"] = partition.to_numpy()
    parts["moved"] = False
    return parts


def _read_partition_sheets(sheets: dict[str, str]) -> pd.Series:
    """Partition per image-id stem from one image-id sheet per partition (the authors' train.xlsx, val.xlsx)."""
    rows = []
    for partition, name in sheets.items():
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"split.{partition}_list: {str(path)!r} not found; give the authors' "
                                    f"{partition} sheet (an image_id column).")
        ids = image_ids(read_sheet(path, kind="split sheet", txt=True), path)
        rows += [(i, partition) for i in ids if i]
    table = pd.DataFrame(rows, columns=["image_id", "partition"])
    table["stem"] = table["image_id"].map(lambda s: Path(s).stem)
    conflicts = table.groupby("stem")["partition"].nunique()
    if (conflicts > 1).any():
        stem = sorted(conflicts[conflicts > 1].index)[0]
        raise ValueError(f"split lists: image {stem!r} is listed in "
                         f"{sorted(table.loc[table['stem'] == stem, 'partition'])}; each image belongs to one.")
    return table.drop_duplicates("stem").set_index("stem")["partition"]


def _read_listing(path: Path) -> pd.Series:
    """Partition per image-id stem from a CSV (``image_id``, ``partition``) or a TXT (``id partition`` lines)."""
    if not path.is_file():
        raise FileNotFoundError(f"split.list_file: {str(path)!r} not found; give the authors' split file.")
    if path.suffix.lower() == ".csv":
        table = pd.read_csv(path, dtype=str)
        missing = [c for c in ("image_id", "partition") if c not in table.columns]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; found {list(table.columns)}. Expected "
                             "image_id,partition.")
    else:
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            fields = line.split("#", 1)[0].replace(",", " ").split()
            if not fields:
                continue
            if len(fields) != 2:
                raise ValueError(f"{path} line {number}: expected 'image_id partition', got {line!r}.")
            rows.append(fields)
        table = pd.DataFrame(rows, columns=["image_id", "partition"])
    table["partition"] = table["partition"].str.strip().str.lower()
    bad = ~table["partition"].isin(list(_PARTITION_ALIASES))
    if bad.any():
        raise ValueError(f"{path}: partition {table.loc[bad, 'partition'].iloc[0]!r} for image "
                         f"{table.loc[bad, 'image_id'].iloc[0]!r}; expected train, val or test.")
    table["partition"] = table["partition"].map(_PARTITION_ALIASES)
    table["stem"] = table["image_id"].str.strip().map(lambda s: Path(s).stem)
    conflicts = table.groupby("stem")["partition"].nunique()
    if (conflicts > 1).any():
        raise ValueError(f"{path}: image(s) {sorted(conflicts[conflicts > 1].index)[:5]} listed in two "
                         "partitions; each image belongs to one.")
    return table.drop_duplicates("stem").set_index("stem")["partition"]


def _check_every_class_everywhere(
    parts: pd.DataFrame, class_names: Sequence[str], *, strategy: str, allow_missing_in_test: bool = False
) -> None:
    present = parts.groupby("partition")["label"].unique()
    for name in PARTITIONS:
        labels = set(present.get(name, []))
        missing = [c for c in class_names if c not in labels]
        if missing and name == "test" and allow_missing_in_test and labels:
            logger.warning("split (%s): test has no image of class(es) %s; its metrics cover the classes present "
                           "(missing_test_classes: allow)", strategy, missing)
            continue
        if missing:
            n_class = {c: int((parts["label"] == c).sum()) for c in missing}
            raise ValueError(
                f"split ({strategy}): partition {name!r} has no image of class(es) {missing} (images in the whole "
                f"index: {n_class}); its metrics would be undefined. Use more data, other fractions or other "
                "train_centers."
            )


def grouping_statement(split: dict[str, Any] | None) -> str:
    """What a split guarantees about leakage, in one paragraph written from its split.json (never assumed).

    Reports, model card and audit quote this, so a sentence about grouping is true of the split it describes.
    """
    g = (split or {}).get("grouping")
    if not g:
        return "The split's grouping is not recorded (split.json lacks `grouping`): re-run the split stage."
    dup = (f"{g['n_duplicate_images']} exact or near duplicate image(s) share a group with their twin"
           if g["n_duplicate_images"] else "no exact or near duplicates were found")
    if g["basis"] == "cases+duplicates":
        text = (f"Groups join duplicates and views of one case: {g['n_images_with_case']} of {g['n_images']} images "
                f"carry a case key ({g['n_cases']} cases, {g['n_cases_multi_image']} with several images); {dup}; "
                f"{g['n_groups']} groups in all, the largest of {', '.join(map(str, g['largest_groups'][:3]))} images. "
                f"Images without a case key are their own group.")
    else:
        text = (f"No case identifiers: only duplicates are grouped ({dup}; {g['n_groups']} groups for "
                f"{g['n_images']} images). Other views of one case may sit in different partitions, so test figures "
                "may be optimistic; set data.btxrd.case_sheets (the dataset authors' detection sheets) to group cases.")
    if "groups_straddling" not in g:
        return text
    if (split or {}).get("strategy") == "published":
        return (text + f" The authors' published split is image-level and is kept as published: "
                f"{g['groups_straddling']} group(s) and {g['cases_straddling']} case(s) straddle partitions, and "
                f"{g['test_images_with_case_elsewhere']} test image(s) have another image of their case outside test.")
    if g["groups_straddling"] == 0:
        return text + " No group straddles train, validation and test in this split."
    return (text + f" {g['groups_straddling']} group(s) ({g['cases_straddling']} case(s)) straddle partitions; "
            f"{g['test_images_with_case_elsewhere']} test image(s) have another image of their case outside test.")
