"""Synthetic BTXRD-like radiographs: the pipeline's default, offline data source.

Draws limb radiographs from three "centres" (soft tissue, long bones, a joint) with benign and malignant bone
lesions and writes them in the BTXRD release layout: ``images/IMG000001.jpeg``, LabelMe ``Annotations/*.json``
for tumour images, ``dataset.xlsx`` (the 37 release columns plus a trailing ``case_id``). The traps of the real
release are reproduced on purpose: ids ordered by centre then class, centre-specific acquisition styles, exact,
near and one cross-class duplicate. Same seed -> byte-identical files. The pictures are cartoons made to exercise
the pipeline; they carry no medical meaning. NOT FOR CLINICAL USE.
Over 400 lines on purpose: one generator whose planning, drawing and writing share the case and shot records;
apart, each part would need the others' private types.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import openpyxl
from PIL import Image
from tqdm import tqdm

from assurexray.core.schema import (
    CLASS_NAMES, REGION_COLUMNS, RELEASE_COLUMNS, SITE_COLUMNS, SUBTYPE_COLUMNS, VIEW_COLUMNS,
)

__all__ = [
    "SampleSummary", "CentreStyle", "generate_sample", "MIN_CASES", "CENTRE_SHARE", "CENTRE_CLASS_MIX",
    "CENTRE_STYLES", "LESION_CONTRAST", "LESION_SIZE", "SUBTLE_FRACTION", "SUBTLE_CONTRAST", "SUBTLE_SIZE",
    "DISTRACTOR_RATE", "TWO_VIEW_FRACTION", "NEAR_DUPLICATE_SHARE",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CentreStyle:
    """How one centre acquires and stores radiographs (everything applied after the anatomy is drawn)."""

    long_side: float          # image long side, multiple of ``image_size`` (+-8 % per image)
    aspect: tuple[float, float]  # short/long side ratio range
    landscape: float          # probability the limb lies horizontally (landscape image)
    exposure: float           # attenuation gain: intensity = 1 - exp(-exposure * attenuation)
    gamma: float              # display curve exponent (>1: darker soft tissue, more bone contrast)
    background: float         # grey level of air, 0-255
    white: float              # grey level of the densest bone, 0-255
    blur: float               # Gaussian blur sigma, % of the image long side
    noise: float              # white noise std, grey levels
    grain: float              # correlated (film/detector grain) noise std, grey levels
    shot: float               # signal-dependent noise std at white, grey levels
    jpeg_quality: int         # JPEG quality the centre stores at
    rgb_fraction: float       # share of images stored as 3-channel (RGB) JPEGs with a faint tint
    markers: float            # probability of a burned-in "L"/"R" letter
    text_strip: bool          # burned-in hospital text strip along one edge
    collimation: bool         # visible collimator field (darker border outside the exposed rectangle)


#: Share of cases per centre (the real release: centre 1 holds most images).
CENTRE_SHARE: dict[int, float] = {1: 0.60, 2: 0.25, 3: 0.15}
#: Class mix (Normal, Benign, Malignant) of each centre's cases; overall about 44 / 40 / 16 %.
CENTRE_CLASS_MIX: dict[int, tuple[float, float, float]] = {
    1: (0.50, 0.40, 0.10), 2: (0.45, 0.35, 0.20), 3: (0.10, 0.40, 0.50),
}
#: Acquisition style per centre: the domain shift the centre split measures.
CENTRE_STYLES: dict[int, CentreStyle] = {
    1: CentreStyle(long_side=1.00, aspect=(0.55, 0.80), landscape=0.10, exposure=0.60, gamma=0.95,
                   background=6, white=246, blur=0.25, noise=1.5, grain=0.0, shot=2.0, jpeg_quality=92,
                   rgb_fraction=0.0, markers=0.35, text_strip=False, collimation=False),
    2: CentreStyle(long_side=1.25, aspect=(0.75, 1.00), landscape=0.25, exposure=0.75, gamma=1.45,
                   background=24, white=252, blur=0.35, noise=3.0, grain=5.0, shot=2.0, jpeg_quality=85,
                   rgb_fraction=0.5, markers=0.7, text_strip=False, collimation=True),
    3: CentreStyle(long_side=0.90, aspect=(0.60, 0.90), landscape=0.20, exposure=0.50, gamma=0.70,
                   background=42, white=228, blur=0.55, noise=2.5, grain=2.0, shot=9.0, jpeg_quality=78,
                   rgb_fraction=0.0, markers=1.0, text_strip=True, collimation=False),
}
#: Subtype mix within each tumour class (keys are the release's subtype columns).
BENIGN_SUBTYPE_WEIGHTS: dict[str, float] = {
    "osteochondroma": 0.40, "multiple osteochondromas": 0.07, "simple bone cyst": 0.14,
    "giant cell tumor": 0.15, "osteofibroma": 0.10, "synovial osteochondroma": 0.04, "other bt": 0.10,
}
MALIGNANT_SUBTYPE_WEIGHTS: dict[str, float] = {"osteosarcoma": 0.70, "other mt": 0.30}
#: Lesion site (a release site column) -> (anatomy template, bone carrying the lesion), with frequencies.
SITE_WEIGHTS: dict[str, float] = {
    "femur": 0.32, "tibia": 0.24, "fibula": 0.05, "knee-joint": 0.07, "humerus": 0.14, "radius": 0.06,
    "ulna": 0.05, "elbow-joint": 0.07,
}
#: Where the lesion (or a normal case's phantom spot) lands, as a fraction of image width/height (uniform range):
#: wide, so that "look at the centre" is a weak baseline, as in real radiographs.
LESION_FRAME: tuple[float, float] = (0.2, 0.8)
#: Global multiplier of every lesion's effect on attenuation (lower = harder task).
LESION_CONTRAST: float = 1.25
#: Lesion extent, fraction of the image long side (uniform range).
LESION_SIZE: tuple[float, float] = (0.08, 0.22)
#: Share of lesions drawn subtle: low contrast and small.
SUBTLE_FRACTION: float = 0.20
#: Contrast multiplier range of subtle lesions.
SUBTLE_CONTRAST: tuple[float, float] = (0.30, 0.55)
#: Extent range of subtle lesions, fraction of the long side.
SUBTLE_SIZE: tuple[float, float] = (0.06, 0.10)
#: Probability per image of a harmless normal variant (bone island, nutrient canal, arrest line), any class.
DISTRACTOR_RATE: float = 0.35
#: Share of cases imaged twice (frontal + lateral); the others get one view.
TWO_VIEW_FRACTION: float = 0.5
#: Share of the duplicates that are near (re-encoded / rescaled / brightness-shifted), the rest exact.
NEAR_DUPLICATE_SHARE: float = 0.5
#: Grid scale the anatomy is drawn at before upsampling (speed; noise and text are added at full size).
RENDER_SCALE: float = 0.5
#: Fewest cases accepted: one per centre and class, so every split variant sees every class.
MIN_CASES: int = 9

_TEMPLATES: dict[str, dict[str, Any]] = {
    # bones: (name, part, axis offset v0, radius, epiphysis flare, end offset), lengths in main-bone radii
    "knee": {"region": "lower limb", "tissue": (2.7, 0.35), "bones": [
        ("femur", "upper", 0.0, 1.0, 0.75, 0.0), ("tibia", "lower", -0.05, 0.95, 0.65, 0.0),
        ("fibula", "lower", 1.35, 0.38, 0.35, 0.9)]},
    "elbow": {"region": "upper limb", "tissue": (2.3, 0.0), "bones": [
        ("humerus", "upper", 0.0, 0.9, 0.7, 0.0), ("ulna", "lower", -0.7, 0.55, 0.5, -0.3),
        ("radius", "lower", 0.75, 0.5, 0.35, 0.25)]},
}
_SITE_BONE: dict[str, tuple[str, str]] = {
    "femur": ("knee", "femur"), "tibia": ("knee", "tibia"), "fibula": ("knee", "fibula"),
    "knee-joint": ("knee", "joint"), "humerus": ("elbow", "humerus"), "radius": ("elbow", "radius"),
    "ulna": ("elbow", "ulna"), "elbow-joint": ("elbow", "joint"),
}
_KIND: dict[str, str] = {
    "osteochondroma": "exostosis", "multiple osteochondromas": "exostoses", "simple bone cyst": "cyst",
    "giant cell tumor": "gct", "osteofibroma": "fibrous", "synovial osteochondroma": "loose_bodies",
    "other bt": "cyst", "osteosarcoma": "osteosarcoma", "other mt": "permeative",
}
_AGE: dict[str, tuple[float, float, float]] = {  # (min, mode, max) years
    "Normal": (3, 35, 85), "osteochondroma": (6, 15, 40), "multiple osteochondromas": (5, 13, 30),
    "simple bone cyst": (4, 11, 22), "giant cell tumor": (18, 30, 55), "osteofibroma": (6, 14, 30),
    "synovial osteochondroma": (20, 40, 65), "other bt": (8, 25, 60), "osteosarcoma": (7, 16, 35),
    "other mt": (10, 40, 75),
}
_FIXED_TIME = (2020, 1, 1, 0, 0, 0)  # zip entry and workbook dates: constant so the bytes are reproducible
_GAP = 0.25  # joint space, main-bone radii


@dataclass(frozen=True)
class SampleSummary:
    """What ``generate_sample`` wrote (duplicate pairs are listed here, never in the sheet)."""

    out_dir: Path
    n_cases: int
    n_images: int
    n_annotations: int
    n_lesions: int
    n_duplicates: int
    counts: dict[str, dict[int, int]]          # class -> centre -> images
    duplicates: tuple[tuple[str, str, str], ...]  # (duplicate image_id, source image_id, kind)
    seed: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (paths as strings, centre keys as strings)."""
        return {"out_dir": str(self.out_dir), "n_cases": self.n_cases, "n_images": self.n_images,
                "n_annotations": self.n_annotations, "n_lesions": self.n_lesions,
                "n_duplicates": self.n_duplicates, "seed": self.seed,
                "counts": {c: {str(k): v for k, v in row.items()} for c, row in self.counts.items()},
                "duplicates": [list(d) for d in self.duplicates]}


def generate_sample(out_dir: str | os.PathLike, *, n_cases: int = 300, image_size: int = 320,
                    duplicate_fraction: float = 0.03, seed: int = 42) -> SampleSummary:
    """Write a synthetic BTXRD-layout dataset of ``n_cases`` cases into the new or empty ``out_dir``."""
    _check_args(n_cases, image_size, duplicate_fraction, seed)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out_dir {str(out)!r} is a file; pass a new or empty directory.")
    if out.is_dir() and any(out.iterdir()):
        raise FileExistsError(f"out_dir {str(out)!r} is not empty ({len(list(out.iterdir()))} entries); "
                              "pass a new or empty directory so no stale file mixes with the sample.")
    plan_seq, dup_seq, *case_seqs = np.random.SeedSequence(seed).spawn(n_cases + 2)
    cases = _plan_cases(np.random.default_rng(plan_seq), n_cases)
    shots: list[_Shot] = []
    for case, seq in zip(tqdm(cases, desc="sample", unit="case", leave=False), case_seqs):
        rng = np.random.default_rng(seq)
        for k, view in enumerate(case.views):
            pixels, lesions = _render_view(rng, case, view, image_size)
            shots.append(_Shot(case.meta | {"view": view}, _encode(pixels, CENTRE_STYLES[case.centre]),
                               pixels.shape[1], pixels.shape[0], lesions, (case.order, k)))
    dup_rng = np.random.default_rng(dup_seq)
    dups = _duplicates(dup_rng, shots, duplicate_fraction, {c.meta["case_id"] for c in cases})
    all_shots = sorted(shots + [d for d, _, _ in dups],
                       key=lambda s: (s.meta["center"], CLASS_NAMES.index(s.meta["label"]), s.order))
    for i, shot in enumerate(all_shots, start=1):
        shot.image_id = f"IMG{i:06d}.jpeg"
    return _write(out, all_shots, dups, n_cases, seed)


# --- planning ---------------------------------------------------------------------------------------------


@dataclass
class _Case:
    centre: int
    views: list[str]
    order: float
    meta: dict[str, Any]
    geo: dict[str, Any]


@dataclass
class _Shot:
    meta: dict[str, Any]
    jpeg: bytes
    width: int
    height: int
    lesions: list[np.ndarray]   # polygons (K, 2) in image px
    order: tuple[float, int]
    image_id: str = ""


def _check_args(n_cases: Any, image_size: Any, duplicate_fraction: Any, seed: Any) -> None:
    for name, value in (("n_cases", n_cases), ("image_size", image_size), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an integer, got {value!r}; fix data.sample in params.yaml.")
    if n_cases < MIN_CASES:
        raise ValueError(f"n_cases={n_cases!r} is too small: the sample needs at least {MIN_CASES} cases "
                         "(one per centre and class); raise data.sample.n_cases.")
    if not 64 <= image_size <= 4096:
        raise ValueError(f"image_size={image_size!r} px is out of range; use 64 to 4096 "
                         "(data.sample.image_size, the nominal long side).")
    if isinstance(duplicate_fraction, bool) or not isinstance(duplicate_fraction, (int, float)) \
            or not 0.0 <= duplicate_fraction <= 0.5:
        raise ValueError(f"duplicate_fraction={duplicate_fraction!r} must be a number from 0 to 0.5 "
                         "(data.sample.duplicate_fraction, share of images re-emitted as duplicates).")


def _apportion(n: int, weights: list[float], minimum: int) -> list[int]:
    """Split ``n`` by ``weights`` (largest remainder), each part at least ``minimum``."""
    counts = [minimum] * len(weights)
    rest = n - minimum * len(weights)
    raw = [rest * w / sum(weights) for w in weights]
    counts = [c + int(r) for c, r in zip(counts, raw)]
    by_remainder = sorted(range(len(raw)), key=lambda i: (int(raw[i]) - raw[i], i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return counts


def _plan_cases(rng: np.random.Generator, n_cases: int) -> list[_Case]:
    """Cases with class, centre, subtype, site, views, demographics and the anatomy shared by their views."""
    per_centre = _apportion(n_cases, list(CENTRE_SHARE.values()), 3)
    case_ids = rng.choice(900_000, size=n_cases, replace=False) + 100_000
    cases: list[_Case] = []
    for centre, n_centre in zip(CENTRE_SHARE, per_centre):
        for label, n_label in zip(CLASS_NAMES, _apportion(n_centre, list(CENTRE_CLASS_MIX[centre]), 1)):
            for _ in range(n_label):
                cases.append(_new_case(rng, centre, label, f"C{case_ids[len(cases)]}"))
    return cases


def _pick(rng: np.random.Generator, weights: dict[str, float]) -> str:
    keys = list(weights)
    p = np.array([weights[k] for k in keys], dtype=float)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _new_case(rng: np.random.Generator, centre: int, label: str, case_id: str) -> _Case:
    subtype = None if label == "Normal" else _pick(rng, BENIGN_SUBTYPE_WEIGHTS if label == "Benign"
                                                    else MALIGNANT_SUBTYPE_WEIGHTS)
    site = _pick(rng, SITE_WEIGHTS)   # normal cases too: their anatomy is drawn from the same places
    if subtype == "synovial osteochondroma":
        site = "knee-joint" if _SITE_BONE[site][0] == "knee" else "elbow-joint"
    template, bone = _SITE_BONE[site]
    lo, mode, hi = _AGE[subtype or "Normal"]
    age = int(round(rng.triangular(lo, mode, hi)))
    if rng.random() < TWO_VIEW_FRACTION:
        views = ["frontal", "lateral"]
    else:
        views = [str(rng.choice(["frontal", "lateral", "oblique"], p=[0.55, 0.35, 0.10]))]
    subtle = rng.random() < SUBTLE_FRACTION
    geo = {
        "template": template, "bone": bone, "kind": _KIND[subtype] if subtype else None, "age": age,
        "r_frac": rng.uniform(0.085, 0.12), "tissue": rng.uniform(0.85, 1.15), "tc": rng.uniform(0.2, 0.3),
        "med": rng.uniform(0.13, 0.2), "flex": rng.uniform(0.1, 0.5) * rng.choice([-1, 1]),
        "theta": rng.uniform(0, 2 * np.pi), "ecc": rng.uniform(0.0, 0.5),
        "s": rng.uniform(0.05, 0.6) if bone == "joint" else rng.uniform(0.5, 3.5),
        "joint_bone": int(rng.integers(2)), "size": rng.uniform(*(SUBTLE_SIZE if subtle else LESION_SIZE)),
        "contrast": LESION_CONTRAST * rng.uniform(*(SUBTLE_CONTRAST if subtle else (0.8, 1.2))),
        "shape": rng.uniform(0, 1, size=8), "subtle": subtle,
    }
    meta = {"center": centre, "age": age, "gender": "M" if rng.random() < 0.55 else "F", "label": label,
            "subtype": subtype, "site": None if label == "Normal" else site,
            "region": _TEMPLATES[template]["region"], "case_id": case_id}
    return _Case(centre, views, float(rng.random()), meta, geo)


# --- drawing ----------------------------------------------------------------------------------------------


def _noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Smooth Gaussian noise field with unit std (texture of bone, lesion margins, grain)."""
    field_ = rng.standard_normal(shape).astype(np.float32)
    if sigma > 0.3:
        field_ = cv2.GaussianBlur(field_, (0, 0), sigma)
    return field_ / max(float(field_.std()), 1e-6)


def _render_view(rng: np.random.Generator, case: _Case, view: str,
                 image_size: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """One radiograph (uint8, gray or RGB) and its lesion polygons in image px."""
    style, g = CENTRE_STYLES[case.centre], case.geo
    long = image_size * style.long_side * rng.uniform(0.92, 1.08)
    h, w = round(long), round(long * rng.uniform(*style.aspect))
    landscape = rng.random() < style.landscape
    if landscape:
        h, w = w, h
    r = g["r_frac"] * min(h, w) * rng.uniform(0.93, 1.07)   # main-bone radius, px
    proj = {"frontal": math.cos(g["theta"]), "lateral": math.sin(g["theta"]),
            "oblique": math.cos(g["theta"] - math.pi / 4)}[view]
    overlap = {"frontal": 1.0, "lateral": 0.4, "oblique": 0.7}[view]
    flex = g["flex"] * {"frontal": 0.1, "lateral": 1.0, "oblique": 0.5}[view]
    template = _TEMPLATES[g["template"]]
    bones = [(n, part, v0 * r * overlap, rad * r, flare, off * r) for n, part, v0, rad, flare, off in
             template["bones"]]
    # Lesion (or, for normal cases, a phantom lesion spot) in limb coordinates: u along the axis, v across.
    bone_name = g["bone"] if g["bone"] != "joint" else bones[g["joint_bone"]][0]
    _, part, v0, rb, _, off = next(b for b in bones if b[0] == bone_name)
    s_l = g["s"] * rb
    u_l = -(s_l + _GAP * r / 2 + off) if part == "upper" else s_l + _GAP * r / 2 + off
    d_l = g["ecc"] * rb * 0.7 * proj   # lesion offset from the bone axis: the 3-D position, projected
    v_l = v0 + d_l
    if part == "lower":   # lower segment is flexed about the joint
        u_l, v_l = u_l * math.cos(flex) - v_l * math.sin(flex), u_l * math.sin(flex) + v_l * math.cos(flex)
    phi = (math.pi / 2 if landscape else 0.0) + rng.normal(0, 0.16) + (math.pi if rng.random() < 0.5 else 0)
    d = np.array([math.sin(phi), math.cos(phi)])
    n = np.array([math.cos(phi), -math.sin(phi)])
    target = np.array([w * rng.uniform(*LESION_FRAME), h * rng.uniform(*LESION_FRAME)])
    origin = target - u_l * d - v_l * n
    # Anatomy is smooth: draw it on a coarser grid (x RENDER_SCALE) in full-resolution coordinates, then upsample.
    q = RENDER_SCALE if long > 160 else 1.0
    hs, ws = math.ceil(h * q), math.ceil(w * q)
    yy, xx = np.indices((hs, ws), dtype=np.float32)
    xx = (xx + 0.5) / q - 0.5 - origin[0]   # pixel centres, as cv2.resize aligns them
    yy = (yy + 0.5) / q - 0.5 - origin[1]
    u = xx * d[0] + yy * d[1]
    v = xx * n[0] + yy * n[1]
    u2 = u * math.cos(flex) + v * math.sin(flex)
    v2 = -u * math.sin(flex) + v * math.cos(flex)
    tissue = _soft_tissue(u, v, u2, v2, r * template["tissue"][0] * g["tissue"], r * template["tissue"][1])
    layers: dict[str, dict[str, np.ndarray]] = {}
    trab = _noise(rng, (hs, ws), max(r * 0.07 * q, 0.5))
    for name, part_b, v0_b, rb_b, flare_b, off_b in bones:
        s = (-u if part_b == "upper" else u2) - _GAP * r / 2 - off_b
        dd = (v if part_b == "upper" else v2) - v0_b
        layers[name] = _bone(s, dd, rb_b, flare_b, g["tc"], g["med"], trab, norm=r, young=g["age"] < 17)
    extra = np.zeros((hs, ws), np.float32)
    if rng.random() < DISTRACTOR_RATE:
        _distractor(rng, layers[bones[int(rng.integers(len(bones)))][0]], extra, r)
    lesions: list[np.ndarray] = []
    if g["kind"] is not None:
        masks = _draw_lesions(rng, g, layers, [b[0] for b in bones], bone_name, extra, tissue, r, long,
                              proj, s_l, d_l, q)
        full = [cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) for m in masks]
        lesions = [p for p in (_polygon(m) for m in full) if p is not None]
    bone_att = sum(1.6 * lay["cortex"] + lay["medulla"] for lay in layers.values())
    attenuation = cv2.resize(tissue + bone_att + extra, (w, h), interpolation=cv2.INTER_LINEAR)
    return _acquire(rng, attenuation, style, long), lesions


def _soft_tissue(u: np.ndarray, v: np.ndarray, u2: np.ndarray, v2: np.ndarray, radius: float,
                 shift: float) -> np.ndarray:
    """Attenuation of the limb envelope: two round-ended capsules (upper, flexed lower), fat over muscle."""
    total = np.zeros_like(u)
    for frac, mu in ((1.0, 0.22), (0.78, 0.12)):   # whole limb, then the denser muscle core
        layer = np.zeros_like(u)
        for along, across, sign in ((u, v, -1.0), (u2, v2, 1.0)):
            rad = frac * radius * (1 + 0.07 * np.sin(along / (2.7 * radius) + 1.3))
            beyond = np.clip(-sign * along, 0, None)   # past the joint: hemispherical cap
            q = rad**2 - (across - shift) ** 2 - beyond**2
            layer = np.maximum(layer, 2 * np.sqrt(np.clip(q, 0, None)) / radius)
        total += mu * layer
    return total


def _bone(s: np.ndarray, d: np.ndarray, rb: float, flare: float, tc: float, med: float, trab: np.ndarray,
          *, norm: float, young: bool) -> dict[str, np.ndarray]:
    """Projected cortex and medulla thickness of a hollow long bone ending (flared, capped) at s = 0."""
    sp = np.clip(s, 0, None)
    wide = np.exp(-((sp / (1.4 * rb)) ** 2))
    ro = rb * (1 + flare * wide)
    cap = np.sqrt(np.clip(1 - (np.clip(-s, 0, None) / (0.45 * rb * (1 + flare))) ** 2, 0, 1))
    ro = ro * cap
    ri = np.clip(ro - tc * rb * (1 - 0.65 * wide), 0, None)
    t_out = 2 * np.sqrt(np.clip(ro**2 - d**2, 0, None))
    t_in = 2 * np.sqrt(np.clip(ri**2 - d**2, 0, None))
    density = med * (1 + 0.6 * wide) * np.clip(1 + 0.3 * trab, 0.2, None)
    if young:   # open growth plate: a dark transverse band across the epiphysis
        density = density * (1 - 0.75 * np.exp(-(((s - 0.55 * rb * (1 + flare)) / (0.07 * rb)) ** 2)))
    return {"cortex": (t_out - t_in) / norm, "medulla": density * t_in / norm, "s": s, "d": d, "ro": ro,
            "ri": ri, "rb": np.float32(rb)}


def _distractor(rng: np.random.Generator, bone: dict[str, np.ndarray], extra: np.ndarray, r: float) -> None:
    """A harmless normal variant so 'any bright/dark spot' is not the label."""
    s, d, rb = bone["s"], bone["d"], float(bone["rb"])
    kind = int(rng.integers(3))
    if kind == 0:   # bone island: small dense spot in the medulla
        rad = rb * rng.uniform(0.12, 0.25)
        dist2 = (s - rng.uniform(1, 4) * rb) ** 2 + (d - rng.uniform(-0.4, 0.4) * rb) ** 2
        extra += 0.9 * np.sqrt(np.clip(rad**2 - dist2, 0, None)) / r
    elif kind == 1:  # nutrient canal: thin oblique lucent line through the cortex
        line = np.exp(-(((s - rng.uniform(2, 5) * rb) - 0.8 * (d - 0)) / (0.05 * rb)) ** 2)
        bone["cortex"] = bone["cortex"] * (1 - 0.45 * line * (np.abs(d) < bone["ro"]))
    else:           # growth arrest line: thin dense transverse line in the metaphysis
        extra += 0.25 * np.exp(-(((s - rng.uniform(1.2, 2.5) * rb) / (0.05 * rb)) ** 2)) * (np.abs(d) < bone["ri"])


def _draw_lesions(rng: np.random.Generator, g: dict[str, Any], layers: dict[str, dict[str, np.ndarray]],
                  names: list[str], bone_name: str, extra: np.ndarray, tissue: np.ndarray, r: float,
                  long: float, proj: float, s_l: float, d_l: float, q: float) -> list[np.ndarray]:
    """Draw the case's lesion(s) into the attenuation layers (in place) and return one mask per lesion."""
    kind, c, size, shape = g["kind"], g["contrast"], g["size"] * long, g["shape"]
    bone, shp = layers[bone_name], extra.shape

    def noise(sigma: float) -> np.ndarray:   # sigma in full-resolution px
        return _noise(rng, shp, sigma * q)
    if kind in ("exostosis", "exostoses"):
        spots = [(bone_name, s_l, proj, size)]
        if kind == "exostoses":   # more outgrowths on the main bones of the joint
            others = [n for n in names[:2] if n != bone_name] + [bone_name]
            for k in range(int(1 + shape[0] * 2)):
                name = others[k % len(others)]
                spots.append((name, rng.uniform(0.6, 3.0) * float(layers[name]["rb"]),
                              -proj if k % 2 == 0 else proj, size * rng.uniform(0.5, 0.8)))
        masks = []
        for k, (name, s_k, proj_k, size_k) in enumerate(spots):
            mask, att = _exostosis(layers[name], r, s_k, proj_k, c, size_k, shape)
            on_border = mask[[0, -1], :].any() or mask[:, [0, -1]].any()
            if k == 0 or (mask.sum() >= 12 and not on_border):   # drop extra ones that leave the picture
                extra += att
                masks.append(mask)
        return masks
    s, d, ro, rib = bone["s"], bone["d"], bone["ro"], float(bone["rb"])
    ds = s - s_l
    side = math.copysign(1.0, proj) if proj else 1.0
    if kind == "loose_bodies":   # calcified bodies scattered around the joint
        mask = np.zeros(shp, bool)
        for _ in range(int(4 + shape[1] * 6)):
            rad = size * rng.uniform(0.06, 0.13)
            cs = rng.uniform(-0.35, 0.2) * size
            cd = side * rib * 1.2 + rng.uniform(-0.3, 0.3) * size
            dist = np.hypot(s - cs, d - cd)
            body = np.sqrt(np.clip(rad**2 - dist**2, 0, None)) / r
            extra += c * (1.2 * body + 0.3 * np.exp(-(((dist - rad * 0.85) / (0.2 * rad)) ** 2)))
            mask |= dist <= rad * 1.1
        return [mask]
    a = size / 2
    if kind in ("cyst", "gct", "fibrous"):   # well-defined lysis with a sclerotic rim
        b = {"cyst": min(a * (0.5 + 0.3 * shape[1]), rib * (0.8 + 0.45 * shape[2])),
             "gct": min(a * (0.6 + 0.3 * shape[1]), rib * (1.0 + 0.5 * shape[2])),
             "fibrous": a * (0.3 + 0.2 * shape[1])}[kind]
        centre = {"cyst": 0.3 * d_l, "gct": d_l, "fibrous": side * rib * 0.75}[kind]
        dd = d - centre
        ang = np.arctan2(dd, ds)
        rho = np.sqrt((ds / a) ** 2 + (dd / b) ** 2) * (1 + 0.06 * np.sin(3 * ang + 6 * shape[3]))
        inside = np.clip((1 - rho) / 0.12, 0, 1)
        depth = {"cyst": 0.85, "gct": 0.8, "fibrous": 0.75}[kind] * min(c, 1.1)
        bone["medulla"] = bone["medulla"] * (1 - depth * inside)
        bone["cortex"] = bone["cortex"] * (1 - 0.45 * depth * inside)
        rim_w, rim = {"cyst": (0.08, 0.3), "gct": (0.05, 0.15), "fibrous": (0.1, 0.45)}[kind]
        extra += c * rim * np.exp(-(((rho - 1) / rim_w) ** 2))
        if kind == "gct":   # soap-bubble septa
            extra += c * 0.3 * inside * np.exp(-((noise(a * 0.15) / 0.25) ** 2))
        return [rho <= 1.08]
    # malignant: ill-defined moth-eaten/permeative lysis, cortical destruction, periosteal reaction, mass
    a *= 1.3   # malignant tumours are large and breach the cortex
    b = max(a * (0.55 + 0.35 * shape[1]), rib * (1.15 + 0.5 * shape[2]))
    dd = d - d_l
    rho = np.sqrt((ds / a) ** 2 + (dd / b) ** 2) * (1 + 0.2 * np.clip(noise(a * 0.35), -2, 2))
    inside = np.clip((1 - rho) / 0.35, 0, 1)
    holes = np.clip(noise(r * (0.1 if kind == "osteosarcoma" else 0.05)) * 0.9 + 0.2, 0, 1)
    bone["medulla"] = bone["medulla"] * (1 - min(c, 1.1) * 0.8 * inside * holes)
    bone["cortex"] = bone["cortex"] * (1 - min(c, 1.1) * 0.9 * inside * (0.4 + 0.6 * holes))
    outside = np.clip((np.abs(d) - ro) / (0.1 * r), 0, 1)
    mask = rho <= 1.0
    if kind == "osteosarcoma":   # fluffy tumour bone and sunburst spicules
        cloud = np.clip(noise(a * 0.25) + 0.3, 0, 1.5)
        extra += c * 0.4 * inside * cloud * (np.abs(d) < ro * 1.3)
        spokes = (28 + 24 * shape[4]) * np.arctan2(dd, ds) + 1.5 * noise(a * 0.3)
        reach = np.sqrt((ds / a) ** 2 + (dd / (b * 1.4)) ** 2)
        extra += c * 0.9 * (0.5 + 0.5 * np.cos(spokes)) ** 6 * outside * np.sqrt(np.clip(1 - reach, 0, 1))
        mask |= (reach <= 0.95) & (outside > 0.5)
    else:   # lamellated ("onion-skin") periosteal reaction along the shaft
        along = np.clip(1 - np.abs(ds) / (a * 1.1), 0, 1)
        for k in (1, 2, 3):
            extra += c * 0.3 * along * np.exp(-(((np.abs(d) - ro - k * 0.14 * r) / (0.035 * r)) ** 2))
        mask |= (along > 0) & (np.abs(d) < ro + 0.5 * r) & (s > 0)
    if shape[5] < 0.7:   # soft-tissue mass bulging from the bone
        ms = np.sqrt((ds / (a * 1.05)) ** 2 + ((d - side * (rib + 0.35 * b)) / (b * 0.95)) ** 2)
        tissue += c * 0.3 * np.sqrt(np.clip(1 - ms**2, 0, None)) * b / r
        mask |= ms <= 1.0
    return [mask]


def _exostosis(bone: dict[str, np.ndarray], r: float, s_l: float, proj: float, c: float, size: float,
               shape: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mask and attenuation of a bony outgrowth pointing away from the joint (length follows the view)."""
    s, d, rb = bone["s"], bone["d"], float(bone["rb"])
    ro = rb * (1 + 0.3 * math.exp(-((s_l / (1.4 * rb)) ** 2)))
    side = 1.0 if proj >= 0 else -1.0
    length = size * max(abs(proj), 0.25)   # seen end-on it is a round density over the bone
    alpha = math.radians(20 + 35 * shape[6])
    es, ed = math.sin(alpha), side * math.cos(alpha)
    p0s, p0d = s_l, side * ro * 0.8
    t = np.clip(((s - p0s) * es + (d - p0d) * ed) / max(length, 1.0), 0, 1)
    dist = np.hypot(s - (p0s + t * length * es), d - (p0d + t * length * ed))
    base, tip = rb * (0.45 + 0.4 * shape[7]), rb * (0.35 + 0.6 * shape[2])
    rad = base * (1 - t) + tip * t
    outer = 2 * np.sqrt(np.clip(rad**2 - dist**2, 0, None))
    inner = 2 * np.sqrt(np.clip((0.7 * rad) ** 2 - dist**2, 0, None))
    return dist <= rad * 1.05, c * (1.3 * (outer - inner) + 0.35 * inner) / r


def _polygon(mask: np.ndarray) -> np.ndarray | None:
    """Outline (8-30 points, image px) of a lesion mask; the convex hull when it is in pieces."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contours = [c for c in contours if len(c) >= 3]
    if not contours:
        return None
    pts = (max(contours, key=cv2.contourArea) if len(contours) == 1
           else cv2.convexHull(np.concatenate(contours)))[:, 0, :].astype(np.float64)
    closed = np.vstack([pts, pts[:1]])
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(closed, axis=0).T))])
    k = int(np.clip(round(arc[-1] / 6), 8, 30))
    at = np.linspace(0, arc[-1], k, endpoint=False)
    return np.stack([np.interp(at, arc, closed[:, 0]), np.interp(at, arc, closed[:, 1])], axis=1)


def _acquire(rng: np.random.Generator, attenuation: np.ndarray, style: CentreStyle, long: float) -> np.ndarray:
    """Detector response, display curve, blur, noise and burned-in text of one centre."""
    h, w = attenuation.shape
    signal = (1 - np.exp(-style.exposure * attenuation)) ** style.gamma
    background = np.full((h, w), style.background, np.float32)
    if style.collimation:   # darker border outside the exposed field
        y0, y1 = int(h * rng.uniform(0.0, 0.08)), int(h * rng.uniform(0.92, 1.0))
        x0, x1 = int(w * rng.uniform(0.0, 0.1)), int(w * rng.uniform(0.9, 1.0))
        field_ = np.zeros((h, w), bool)
        field_[y0:y1, x0:x1] = True
        background[~field_] = style.background * 0.3
        signal = signal * np.where(field_, 1.0, 0.85)
    img = background + (style.white - background) * signal
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), max(style.blur * long / 100, 0.3))
    img += style.noise * rng.standard_normal((h, w)).astype(np.float32)
    if style.grain:
        img += style.grain * _noise(rng, (h, w), 1.2)
    img += style.shot * np.sqrt(np.clip(img, 0, None) / 255) * rng.standard_normal((h, w)).astype(np.float32)
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    scale = long / 400
    if rng.random() < style.markers:
        x, y = int(w * rng.choice([0.06, 0.8])), int(h * rng.uniform(0.1, 0.9))
        cv2.putText(img, str(rng.choice(["L", "R"])), (x, y), cv2.FONT_HERSHEY_SIMPLEX, 1.1 * scale,
                    int(rng.integers(215, 256)), max(1, round(2.5 * scale)), cv2.LINE_AA)
    if style.text_strip:
        band = max(8, int(0.06 * h))
        y0 = 0 if rng.random() < 0.5 else h - band
        img[y0:y0 + band] = (img[y0:y0 + band] * 0.25).astype(np.uint8)
        text = f"CTR3 RADIOLOGY  ID {int(rng.integers(10**5, 10**6))}  KV{int(rng.integers(50, 70))}"
        cv2.putText(img, text, (int(0.03 * w), y0 + int(band * 0.72)), cv2.FONT_HERSHEY_PLAIN,
                    band / 16, 235, 1, cv2.LINE_AA)
    if rng.random() < style.rgb_fraction:
        tint = int(rng.integers(1, 4))
        img = np.stack([np.clip(img.astype(np.int16) + k * tint, 0, 255).astype(np.uint8)
                        for k in (1, 0, -1)], axis=-1)
    return img


# --- duplicates and writing -------------------------------------------------------------------------------


def _encode(pixels: np.ndarray, style: CentreStyle, quality: int | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=quality or style.jpeg_quality, optimize=False)
    return buf.getvalue()


def _duplicates(rng: np.random.Generator, shots: list[_Shot], fraction: float,
                used_ids: set[str]) -> list[tuple[_Shot, _Shot, str]]:
    """Exact and near copies of random images (new case ids), plus one cross-class exact pair."""
    if fraction == 0:
        return []
    n = max(1, round(fraction * len(shots)))
    sources = rng.choice(len(shots), size=min(n, len(shots)), replace=False)
    benign = [i for i, s in enumerate(shots) if s.meta["label"] == "Benign" and i not in set(sources)]
    out: list[tuple[_Shot, _Shot, str]] = []
    used = set(used_ids)

    def new_case_id() -> str:
        while True:
            cid = f"C{int(rng.integers(100_000, 1_000_000))}"
            if cid not in used:
                used.add(cid)
                return cid

    for k, i in enumerate(sources):
        src = shots[int(i)]
        kind = "exact" if k >= round(len(sources) * NEAR_DUPLICATE_SHARE) else \
            str(rng.choice(["requality", "rescale", "brightness"]))
        jpeg, w, h, lesions = src.jpeg, src.width, src.height, src.lesions
        if kind != "exact":
            pixels = np.asarray(Image.open(io.BytesIO(src.jpeg)))
            quality = CENTRE_STYLES[src.meta["center"]].jpeg_quality
            if kind == "requality":
                quality = int(rng.integers(60, 76))
            elif kind == "rescale":
                f = float(rng.choice([rng.uniform(0.85, 0.95), rng.uniform(1.05, 1.12)]))
                w, h = round(src.width * f), round(src.height * f)
                pixels = cv2.resize(pixels, (w, h), interpolation=cv2.INTER_AREA)
                lesions = [np.clip(p * [w / src.width, h / src.height], 0, [w - 1, h - 1]) for p in lesions]
            else:
                pixels = np.clip(pixels * rng.choice([0.97, 1.03]), 0, 255).astype(np.uint8)
            jpeg = _encode(pixels, CENTRE_STYLES[src.meta["center"]], quality)
        out.append((_Shot(src.meta | {"case_id": new_case_id()}, jpeg, w, h, lesions, (float(rng.random()), 0)),
                    src, kind))
    if benign:
        src = shots[benign[int(rng.integers(len(benign)))]]
        meta = src.meta | {"case_id": new_case_id(), "label": "Malignant", "subtype": "other mt"}
        out.append((_Shot(meta, src.jpeg, src.width, src.height, src.lesions, (float(rng.random()), 0)),
                    src, "cross-class"))
    return out


def _row(shot: _Shot) -> list[Any]:
    m = shot.meta
    tumour = m["label"] != "Normal"
    values: dict[str, Any] = {"image_id": shot.image_id, "center": m["center"], "age": m["age"],
                              "gender": m["gender"], "tumor": int(tumour), "benign": int(m["label"] == "Benign"),
                              "malignant": int(m["label"] == "Malignant")}
    values |= {c: int(tumour and m["site"] == c) for c in SITE_COLUMNS}
    values |= {c: int(tumour and m["subtype"] == c) for c in SUBTYPE_COLUMNS}
    values |= {c: int(m["region"] == c) for c in REGION_COLUMNS}
    values |= {c: int(m["view"] == c) for c in VIEW_COLUMNS}
    return [values[c] for c in RELEASE_COLUMNS] + [m["case_id"]]


def _labelme(shot: _Shot) -> dict[str, Any]:
    shapes = []
    for poly in shot.lesions:
        pts = [[round(float(x), 2), round(float(y), 2)] for x, y in poly]
        lo, hi = poly.min(axis=0), poly.max(axis=0)
        for kind, points in (("rectangle", [[round(float(lo[0]), 2), round(float(lo[1]), 2)],
                                            [round(float(hi[0]), 2), round(float(hi[1]), 2)]]),
                             ("polygon", pts)):
            shapes.append({"label": shot.meta["subtype"], "points": points, "group_id": None,
                           "description": "", "shape_type": kind, "flags": {}, "mask": None})
    return {"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": shot.image_id,
            "imageData": None, "imageHeight": shot.height, "imageWidth": shot.width}


def _xlsx_bytes(rows: list[list[Any]]) -> bytes:
    """dataset.xlsx with constant workbook dates and zip timestamps, so equal rows give equal bytes."""
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Sheet1"
    ws.append(list(RELEASE_COLUMNS) + ["case_id"])
    for row in rows:
        ws.append(row)
    # The pre-layering module name, kept as a constant: the sample's bytes (and every hash downstream of them
    # in dvc.lock) must not depend on where this module lives.
    wb.properties.creator = "assurexray.sample"
    raw = io.BytesIO()
    wb.save(raw)
    stamp = "%04d-%02d-%02dT%02d:%02d:%02dZ" % _FIXED_TIME
    fixed = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw.getvalue())) as zin, \
            zipfile.ZipFile(fixed, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename == "docProps/core.xml":   # openpyxl stamps "now" into created/modified
                data = re.sub(rb"(<dcterms:(created|modified)[^>]*>)[^<]*", rb"\g<1>" + stamp.encode(), data)
            zout.writestr(zipfile.ZipInfo(info.filename, date_time=_FIXED_TIME), data,
                          compress_type=zipfile.ZIP_DEFLATED)
    return fixed.getvalue()


def _write(out: Path, shots: list[_Shot], dups: list[tuple[_Shot, _Shot, str]], n_cases: int,
           seed: int) -> SampleSummary:
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "Annotations").mkdir(exist_ok=True)
    n_lesions = n_annotations = 0
    for shot in shots:
        (out / "images" / shot.image_id).write_bytes(shot.jpeg)
        if shot.meta["label"] != "Normal":
            doc = _labelme(shot)
            (out / "Annotations" / f"{Path(shot.image_id).stem}.json").write_text(
                json.dumps(doc, indent=2) + "\n", encoding="utf-8")
            n_annotations += 1
            n_lesions += len(shot.lesions)
    (out / "dataset.xlsx").write_bytes(_xlsx_bytes([_row(s) for s in shots]))
    counts = {c: {k: 0 for k in CENTRE_SHARE} for c in CLASS_NAMES}
    for shot in shots:
        counts[shot.meta["label"]][shot.meta["center"]] += 1
    summary = SampleSummary(out, n_cases, len(shots), n_annotations, n_lesions, len(dups), counts,
                            tuple((d.image_id, s.image_id, kind) for d, s, kind in dups), seed)
    logger.info("synthetic sample: %d cases, %d images (%d duplicates) in %s", n_cases, len(shots),
                len(dups), out)
    return summary
