"""docs/python.md's examples, run as the script a reader would paste them into."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import make_checkpoint

DOC = Path(__file__).resolve().parents[2] / "docs" / "python.md"


def test_the_examples_run(tmp_path: Path) -> None:
    blocks = re.findall(r"^```python\n(.*?)^```", DOC.read_text(encoding="utf-8"), re.M | re.S)
    assert len(blocks) >= 4
    make_checkpoint(tmp_path / "checkpoints" / "words", "word", "lstm", ngram_order=3)
    script = tmp_path / "example.py"
    script.write_text("\n\n".join(blocks), encoding="utf-8")
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                       text=True, timeout=240)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert "3 True False" in lines  # order, "cat" in lm, "zebra" in lm
    assert any(line.endswith(" True") for line in lines)  # zebra's full_scores row: oov
