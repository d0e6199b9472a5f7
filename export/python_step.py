"""The one writer of a python-backend step's version folder: `model.py` (from
export/python_models/) next to `_vendored/msk/` (the msk modules it imports, always including
msk/python_step.py, copied at export time).

Why vendored: the step then needs neither this package installed in the serving container
(NVIDIA's image included) nor a PYTHONPATH, and a version keeps the exact code it was exported
with; `model.py` puts `_vendored` first on sys.path.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = Path(__file__).resolve().parent / "python_models"


def write_python_step(folder: Path, source: str, vendored: Sequence[str]) -> Path:
    """Write export/python_models/<source> as `folder/model.py` with `_vendored/msk/` holding
    `vendored` (file names under msk/) and python_step.py; return the model.py path."""
    target = folder / "_vendored" / "msk"
    target.mkdir(parents=True, exist_ok=True)
    (target / "__init__.py").write_text('"""Vendored copy of the msk modules this step uses."""\n')
    for name in dict.fromkeys([*vendored, "python_step.py"]):
        shutil.copy2(ROOT / "msk" / name, target / name)
    model = folder / "model.py"
    shutil.copyfile(MODELS / source, model)
    return model
