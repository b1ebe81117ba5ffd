"""AssureXRay: Normal / Benign / Malignant classification of bone radiographs (BTXRD).

A research pipeline. NOT FOR CLINICAL USE.
"""

__version__ = "0.1.0"

DISCLAIMER = "NOT FOR CLINICAL USE: research software; its outputs must not inform patient care."
