"""Learning: the model, its training, and the one prediction engine that scores with it.

``model`` creates backbones and owns the checkpoint contract (loaded without unpickling objects);
``transforms`` is the one preprocessing definition; ``training`` is the loop (``lesion_head`` its auxiliary
decoder, ``resume`` its crash-safe state, ``distributed`` its torchrun plumbing); ``calibration`` fits the
temperature; ``prediction`` turns images into calibrated probabilities and the Malignant decision for
evaluate, infer and the app alike.
"""
