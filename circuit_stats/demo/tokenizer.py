"""Write the byte-level tokenizer (``circuit_stats.tokenization``) into checkpoint folders.

    python -m circuit_stats.demo.tokenizer [CHECKPOINT_DIR ...]   # default: every bundled checkpoint
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from ..tokenization import write_byte_tokenizer
from .series import demo_series_dir


def bundled_checkpoints() -> list[Path]:
    """The bundled demo checkpoint folders."""
    return sorted(p for p in demo_series_dir().iterdir() if (p / "config.json").is_file())


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="*", type=Path, help="checkpoint folders (default: every bundled one)")
    a = p.parse_args(argv)
    for d in a.checkpoints or bundled_checkpoints():
        write_byte_tokenizer(d)
        print(f"wrote {d / 'tokenizer.json'}")


if __name__ == "__main__":
    main()
