"""The OOD reference set a command was given: one rule for `msk export --reference` and
`msk evaluate mura --ood-reference`, so that the statistics evaluated are fitted on the same
images, chosen the same way, as the ones an export of those checkpoints would serve."""

from __future__ import annotations

import logging
from pathlib import Path

from clients.inputs import image_set
from msk.constants import OOD_REFERENCE_CSV

log = logging.getLogger("msk.export")


def ood_reference_set(specs: list[str], checkpoints: Path | None, flag: str):
    """The reference set: `specs` (the command's `flag`), else the checkpoints' training-image
    list (written by `msk train mura`), else None (the demo's synthetic set, chosen by the
    export). Read by the one input expander."""
    from export.ood_reference import GIVEN_KIND, TRAINING_KIND, reference_from_files

    if specs:
        kind, source = GIVEN_KIND, ", ".join(specs)
    elif checkpoints is not None and (checkpoints / OOD_REFERENCE_CSV).is_file():
        kind, source = TRAINING_KIND, str(checkpoints / OOD_REFERENCE_CSV)
        specs = [source]
    else:
        if checkpoints is not None:
            log.warning("%s has no %s (written by `msk train mura`) and no %s was given: the "
                        "OOD statistics are fitted on the demo's synthetic images",
                        checkpoints, OOD_REFERENCE_CSV, flag)
        return None
    items = image_set(specs, flag)
    return reference_from_files(((item.path, item.label, item.body_part) for item in items),
                                kind, source)
