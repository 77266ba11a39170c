"""Text shipped with int8q, and reading users' text files.

``eval_sentences.txt`` (230 sentences over ~25 everyday and technical topics) measures
fidelity; ``calibration_text.txt`` (125 different sentences) calibrates. The two share no
sentence, so accuracy is never measured on the calibration inputs.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import List, Union

__all__ = ["calibration_texts", "eval_sentences", "read_texts"]


def _packaged_lines(name: str) -> List[str]:
    text = resources.files(__name__).joinpath(name).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def eval_sentences() -> List[str]:
    """The fixed evaluation sentences (never used for calibration)."""
    return _packaged_lines("eval_sentences.txt")


def calibration_texts() -> List[str]:
    """The calibration sentences (disjoint from :func:`eval_sentences`)."""
    return _packaged_lines("calibration_text.txt")


def read_texts(path: Union[str, "os.PathLike[str]"]) -> List[str]:
    """Texts from a file: ``.jsonl`` (one JSON string, or object with a "text" field, per line)
    or plain text (one text per non-empty line)."""
    p = Path(path)
    lines = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if p.suffix != ".jsonl":
        return lines
    texts = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}:{number}: not valid JSON ({e})") from None
        text = record.get("text") if isinstance(record, dict) else record
        if not isinstance(text, str):
            raise ValueError(f"{p}:{number}: expected a string or an object with a 'text' string")
        if text.strip():
            texts.append(text)
    return texts
