"""SGEAT as one resumable command: generate -> score -> filter -> preprocess -> train -> evaluate -> report.

- ``pipeline``: ``run_pipeline(cfg)``, stage order, skip / resume / invalidate
- ``manifest``: ``<work_dir>/manifest.json`` (config hash, per-stage status, checksums, counts, timings)
- ``corpus``: the generate (or DAPT corpus), score, filter and preprocess stages
- ``training``, ``evaluation``, ``report``: the train, evaluate and report stages
- ``status``: ``sgeat status RUN_DIR``, readable while a run is going
"""

from megatron_detox.sgeat.manifest import STAGES
from megatron_detox.sgeat.pipeline import run_pipeline

__all__ = ["STAGES", "run_pipeline"]
