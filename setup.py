"""megatron-detox: SGEAT detoxification on Megatron-style parallelism."""

from setuptools import find_packages, setup

setup(
    name="megatron-detox",
    version="0.1.0",
    description=(
        "Distributed GPT training (TP/SP/PP/DP) for SGEAT self-generation "
        "detoxification (Wang et al., NeurIPS 2022)"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["megatron_detox", "megatron_detox.*"]),
    include_package_data=True,
    # The calibrated scorer's fitted head (~3 MB) and the held-out evaluation data ship in the
    # wheel: a user's clone has no data folder.
    package_data={"megatron_detox": ["py.typed", "scoring/calibrated/head.safetensors", "scoring/calibrated/head.json",
                                     "data/packaged/*"]},
    install_requires=[
        # <2.14: 2.13 is the newest CPU build on the package index for py3.11 here.
        "torch>=2.6,<2.14",
        "numpy>=1.26,<3",
        "megatron-core>=0.16,<0.17",
        "sentencepiece>=0.2,<0.3",
        "tokenizers>=0.20,<0.23",
        "requests>=2.31,<3",
        "pyyaml>=6,<7",
        "tqdm>=4.66,<5",
        "gguf>=0.10,<0.20",
        "safetensors>=0.4,<0.8",
        "threadpoolctl>=3.1,<4",  # numpy's BLAS gets torch's thread count (generate/cpu_linears.py)
        # The default offline scorer (`calibrated`): hashed n-grams, ridge, isotonic. <2 stays
        # compatible with alt-profanity-check's pin (scikit-learn==1.9.1 in its 1.9.1 release).
        "scikit-learn>=1.3,<2",
        "scipy>=1.10,<2",
        "matplotlib>=3.8,<4",  # the report that `sgeat run` (the main command) ends with
    ],
    extras_require={
        "scoring": ["alt-profanity-check>=1.5,<2"],
        "eval": ["lm-eval==0.4.13"],
        "hf": ["transformers>=4.45,<6"],
        "test": [
            "pytest>=8",
            "transformers>=4.45,<6",
            "accelerate>=0.26",  # transformers needs it to load GGUF files (parity tests)
            "alt-profanity-check>=1.5,<2",
            "lm-eval==0.4.13",
            "matplotlib>=3.8,<4",
            "ruff>=0.6",
            "mypy>=1.10",
        ],
    },
    entry_points={"console_scripts": ["megatron-detox=megatron_detox.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
