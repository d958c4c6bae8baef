"""megatron-detox: SGEAT detoxification on Megatron-style parallelism."""

__version__ = "0.1.0"
