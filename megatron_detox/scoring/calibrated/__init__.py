"""The ``calibrated`` offline scorer: Perspective's attributes predicted from hashed n-grams.

* ``data`` -- the archived Perspective-scored texts and the fixed held-out split;
* ``features`` -- hashed word + character n-gram rows;
* ``head`` -- ridge head per attribute + isotonic calibration, saved as safetensors + JSON;
* ``train`` / ``report`` -- fitting and the held-out evaluation (``megatron-detox scorer``);
* ``scorer`` -- ``CalibratedScorer``, the ``Scorer`` served by ``build_scorer("calibrated")``.

The fitted head (``head.safetensors``, ``head.json``) ships in this folder.
"""
