"""Foundations every layer may use, and which import nothing above them: atomic writes (``atomic``), the one
params loader (``params``), the BTXRD facts (``schema``, ``filetypes``), the project layout of artefacts and
variants (``project``), training-data provenance (``provenance``), the one document renderer (``rendering``)
and the stage scripts' error wrapper (``cli_errors``).

Layers, bottom to top (a module imports only from its own layer or below; tests/test_architecture.py checks it):
core -> data -> learning -> assessment -> publishing -> serving.
"""
