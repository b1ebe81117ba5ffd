"""Facts about the BTXRD release that every module shares (column order, classes, file names)."""

from __future__ import annotations

CLASS_NAMES: tuple[str, ...] = ("Normal", "Benign", "Malignant")

#: The 37 columns of BTXRD/dataset.xlsx, in release order.
SITE_COLUMNS: tuple[str, ...] = (
    "hand", "ulna", "radius", "humerus", "foot", "tibia", "fibula", "femur", "hip bone",
    "ankle-joint", "knee-joint", "hip-joint", "wrist-joint", "elbow-joint", "shoulder-joint",
)
SUBTYPE_COLUMNS: tuple[str, ...] = (
    "osteochondroma", "multiple osteochondromas", "simple bone cyst", "giant cell tumor",
    "osteofibroma", "synovial osteochondroma", "other bt", "osteosarcoma", "other mt",
)
BENIGN_SUBTYPES: tuple[str, ...] = SUBTYPE_COLUMNS[:7]
MALIGNANT_SUBTYPES: tuple[str, ...] = SUBTYPE_COLUMNS[7:]
REGION_COLUMNS: tuple[str, ...] = ("upper limb", "lower limb", "pelvis")
VIEW_COLUMNS: tuple[str, ...] = ("frontal", "lateral", "oblique")
RELEASE_COLUMNS: tuple[str, ...] = (
    ("image_id", "center", "age", "gender")
    + SITE_COLUMNS
    + ("tumor", "benign", "malignant")
    + SUBTYPE_COLUMNS
    + REGION_COLUMNS
    + VIEW_COLUMNS
)
assert len(RELEASE_COLUMNS) == 37

REQUIRED_COLUMNS: tuple[str, ...] = ("image_id", "center", "tumor", "benign", "malignant")

#: Columns that leak the label or the centre (never features; see README "Leakage traps").
LEAKY_COLUMNS: tuple[str, ...] = SITE_COLUMNS + SUBTYPE_COLUMNS + ("tumor", "benign", "malignant")

DATASET_LICENSE = "CC BY-NC-ND 4.0"
DATASET_CITATION = (
    "Yao S. et al., \"A Radiograph Dataset for the Classification, Localization, and Segmentation of "
    "Primary Bone Tumors\", Scientific Data 12 (2025), doi:10.1038/s41597-024-04311-y; "
    "data doi:10.6084/m9.figshare.27865398."
)
