"""Data in: from a release (or the synthetic sample) to the prepared cache and the split manifests.

``fetch`` gets raw data into the release layout (``sample`` draws the synthetic one; ``btxrd`` reads the
real sheet and annotations; ``cases`` and ``sheets`` read case identifiers); ``imaging``, ``dicom`` and
``decoding`` turn files into letterboxed grayscale; ``cache`` writes the prepared cache with ``groups``
(duplicates and case views); ``splits`` partitions it by group; ``manifests`` is the one reader of both for
every later stage; ``audit`` measures the data and ``audit_report`` / ``datasheet`` render what it found.
"""
