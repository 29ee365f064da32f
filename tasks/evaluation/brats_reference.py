"""The organisers' evaluation, `brats-evaluation` (panoptica, `gli` config), run in its own virtualenv.

It requires pandas<3 and the project pins pandas 3, so it lives in `.venv-brats` (`make brats-env`, from the pinned
requirements-brats.txt) and is called through a subprocess: this file is both the caller (`reference_scores`,
stdlib only at import time) and the script run by that environment's python (`__main__`).

Input: a folder of `<case>_label_map.nii.gz` (prediction) and `<case>_truth.nii.gz` pairs in the 2020 convention;
ET (4) is mapped to 3 for the package, whose `gli` config merges labels into WT (1, 2, 3), TC (1, 3), ET (3).
Output per case and region: the global Dice, HD95 and NSD, and the lesion-wise Dice, HD95 and NSD (what BraTS ranks
by since 2023), with the package's own edge cases (its infinite HD95 → 373.13 mm, as its parser does; a region
empty in both → NaN, written as null).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

VENV = Path(".venv-brats")
REGIONS = ("wt", "tc", "et")
EMPTY_HD95_MM = 373.13
KEYS = {"dice": "global_bin_dsc", "hd95": "global_bin_hd95", "nsd": "global_bin_nsd",
        "lesion_dice": "sq_dsc", "lesion_hd95": "sq_hd95", "lesion_nsd": "sq_nsd"}
TIMEOUT_SECONDS = 900


def reference_python(venv: Path | None = None) -> Path | None:
    """The brats-evaluation environment's python (in `venv`, by default VENV), None when it has not been created or
    its install never finished: `make brats-env` writes its `.installed-*` stamp only after pip succeeded, and a venv
    left without packages passed as ready, to fail in evaluate after DVC had removed metrics.json."""
    venv = venv or VENV
    python = venv / "bin" / "python"
    return python if python.exists() and any(venv.glob(".installed-*")) else None


def required_reference_python() -> Path:
    """The brats-evaluation environment's python, for `evaluate.organisers_check`; a SliceWiseError naming the fix when
    it was never built."""
    from tasks.errors import SliceWiseError  # here: this file also runs as a script in .venv-brats, without `tasks`

    python = reference_python()
    if python is None:
        raise SliceWiseError("evaluate.organisers_check is true but the organisers' brats-evaluation environment is "
                             "missing or its install did not finish: run `make brats-env` (or set "
                             "evaluate.organisers_check: false)", VENV)
    return python


def reference_scores(folder: Path, python: Path) -> dict[str, dict[str, dict[str, float | None]]]:
    """{case: {region: {dice, hd95, nsd, lesion_dice, lesion_hd95, lesion_nsd}}} from the organisers' package."""
    done = subprocess.run([str(python), str(Path(__file__).resolve()), str(folder)], capture_output=True, text=True,
                          timeout=TIMEOUT_SECONDS)
    if done.returncode != 0:
        raise RuntimeError(f"brats-evaluation failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _number(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    if math.isinf(value):
        return EMPTY_HD95_MM
    return None if math.isnan(value) else value


def _evaluate(folder: Path) -> dict:
    import tempfile

    import nibabel as nib
    import numpy as np
    from brats_evaluation import config_path, evaluate_single_exam
    from panoptica import Panoptica_Evaluator

    evaluator = Panoptica_Evaluator.load_from_config(str(config_path("gli")))
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for truth_path in sorted(folder.glob("*_truth.nii.gz")):
            case = truth_path.name[: -len("_truth.nii.gz")]
            converted = {}
            for kind, path in (("truth", truth_path), ("label_map", folder / f"{case}_label_map.nii.gz")):
                image = nib.load(path)
                labels = np.asarray(image.dataobj).astype(np.uint8)
                labels[labels == 4] = 3  # 2020 → 2023 convention, as the gli config expects
                converted[kind] = Path(tmp) / f"{case}_{kind}.nii.gz"
                nib.save(nib.Nifti1Image(labels, image.affine), converted[kind])
            result = evaluate_single_exam(str(converted["label_map"]), str(converted["truth"]), case, evaluator)
            if "error" in result:
                raise RuntimeError(f"{case}: {result['error']}")
            out[case] = {region: {name: _number(result[region].get(key)) for name, key in KEYS.items()}
                         for region in REGIONS}
    return out


if __name__ == "__main__":
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # the package prints progress; only the JSON goes to stdout
        scores = _evaluate(Path(sys.argv[1]))
    print(json.dumps(scores))
