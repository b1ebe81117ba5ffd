"""The image file types each reader accepts, stated once (re-exported by assurexray.core.project).

Its own small module, not part of project.py, because prepare, train and explain read it through imaging: a
DVC stage reruns when any file it imports changes, and a new artefact path in project.py must not retrain a model.
"""

from __future__ import annotations

__all__ = ["RASTER_SUFFIXES", "DICOM_SUFFIXES", "INFER_SUFFIXES", "DATASET_SUFFIXES"]

#: Raster file types decoded by assurexray.data.imaging (PIL).
RASTER_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif")
#: DICOM suffixes (assurexray.data.dicom also recognises suffix-less DICOM files by content).
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom")
#: What ``assurexray infer`` and the web app's uploader read.
INFER_SUFFIXES: tuple[str, ...] = RASTER_SUFFIXES + DICOM_SUFFIXES
#: Radiographs accepted in a dataset's ``images/`` folder (fetch keeps and prepare reads exactly these): the
#: raster types less GIF, a palette format no radiograph archive exports (a .gif there is a stray web image).
DATASET_SUFFIXES: tuple[str, ...] = tuple(s for s in RASTER_SUFFIXES if s != ".gif")
