"""circuit-stats: fused attention statistics for interpretability at scale.

One import package, ``circuit_stats``. The top-level folders ``kernels/`` and ``models/``
install as ``circuit_stats.kernels`` and ``circuit_stats.models`` (see ``package_dir``),
so nothing generic lands in site-packages.
"""

from setuptools import find_namespace_packages, setup

# Every sub-package of circuit_stats/ (data folders included, so that their files ship), plus the
# two top-level folders that install under it.
SUBPACKAGES = ["circuit_stats." + p for p in find_namespace_packages("circuit_stats")]

setup(
    name="circuit-stats",
    version="0.1.0",
    description=(
        "Fused Triton kernels for per-head attention statistics (sink, previous-token, "
        "induction, duplicate, entropy) inside a flash-attention forward, with Hugging Face "
        "integration, head scoring and training-checkpoint scans."
    ),
    python_requires=">=3.10",
    packages=["circuit_stats", *SUBPACKAGES, "circuit_stats.kernels", "circuit_stats.models"],
    package_dir={
        "circuit_stats": "circuit_stats",
        "circuit_stats.kernels": "kernels",
        "circuit_stats.models": "models",
    },
    package_data={"circuit_stats.data": ["*.txt", "*.jsonl", "demo_series/*/*", "demo_series_live/*"]},
    include_package_data=True,
    install_requires=[
        # torch is deliberately unpinned: install the wheel you want first (CI installs the
        # 2.13.0 CPU wheel) so that pip does not pull a multi-GB CUDA build.
        "torch>=2.4",
        "triton>=3.6,<3.10",  # CI tests both ends: 3.6 (the GPU machines') and the newest
        # Tested at both ends by CI: the oldest (5.2, where attention functions first receive
        # output_attentions) in a second environment, and the newest.
        "transformers>=5.2,<5.25",
        "huggingface_hub>=1.3,<3",
        "numpy",
        "pandas>=2.0",
        "pyarrow",
        "matplotlib",
        "tqdm",
        "filelock>=3.12,<5",
        # the byte-level tokenizer of the bundled checkpoints (circuit_stats.tokenization); transformers
        # depends on it too, in this range
        "tokenizers>=0.22,<0.24",
    ],
    extras_require={
        # the tests exercise every optional feature: wu2024's ROUGE-1, the lm-eval evaluations and
        # nnsight's LanguageModel (CPU-only, quick to install)
        # (pytest-xdist: the README's test command runs two workers, as CI's two cores)
        "test": ["pytest", "pytest-benchmark", "pytest-xdist>=3.5,<4", "accelerate", "rouge-score>=0.1.2,<0.2", "lm-eval>=0.4.13,<0.5",
                 "nnsight>=0.8,<0.9"],
        "datasets": ["datasets>=2.14,<5"],
        # retrieval's convention="wu2024": ROUGE-1 success test, as Wu et al.
        "retrieval": ["rouge-score>=0.1.2,<0.2"],
        # circuit-stats eval / circuit_stats.evaluate: lm-evaluation-harness (tested with 0.4.13)
        "eval": ["lm-eval>=0.4.13,<0.5"],
    },
    entry_points={"console_scripts": ["circuit-stats=circuit_stats.cli:main"]},
)
