"""RUN_DIR/attack/attack.json, what `jem attack` writes and `jem eval` reads: read and validated
here, written through ``write_attack``.

{"norm": "linf" | "l2", "eps": [radii, increasing], "n": inputs attacked,
 "curves": {setting: [robust accuracy per eps]}, "png": the curves' plot (relative to the run
 directory when inside it), "curves_direct"?, "attack"?: settings, "adversarials"?: files,
 "distal"?, "seconds"?}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..checkpoint import atomic_write_text
from ..errors import InputError
from .layout import ATTACK_JSON, RunDir


def check_attack(result: Any, run_dir: str | Path | None = None, what: str = "robustness result") -> dict[str, Any]:
    """Validate an attack.json dict; resolves its "png" against ``run_dir`` into "png_path"
    (None when the file is missing). InputError naming ``what`` when the shape is wrong."""
    if not isinstance(result, dict) or not isinstance(result.get("curves"), dict) or "eps" not in result:
        raise InputError(f"{what}: expected a dict with 'eps' and 'curves' (the schema of attack.json)")
    eps = list(result["eps"])
    for name, curve in result["curves"].items():
        if len(curve) != len(eps):
            raise InputError(f"{what}: curve {name!r} has {len(curve)} values for {len(eps)} eps")
    out = dict(result)
    png, path = result.get("png"), None
    if png:
        path = Path(png)
        if not path.is_absolute() and run_dir is not None:
            path = Path(run_dir) / path
    out["png_path"] = str(path) if path is not None and path.is_file() else None
    return out


def read_attack(run_dir: str | Path) -> dict[str, Any] | None:
    """A run's attack.json (validated, its PNG resolved), or None when it has none."""
    run = RunDir(run_dir)
    path = run.attack_json
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not valid JSON: {e}") from None
    return check_attack(result, run.path, str(path))


def write_attack(folder: str | Path, result: dict[str, Any]) -> Path:
    """Write ``result`` as FOLDER/attack.json (atomically); returns the path."""
    path = Path(folder) / ATTACK_JSON
    atomic_write_text(path, json.dumps(result, indent=2))
    return path
