"""`msk evaluate mura|wrist`: evaluation reports (metrics with intervals, plots, Markdown).

`msk evaluate mura --ood-set DIR|CSV` (issue 21, item 7) is wired here rather than in
`training/mura_cli.py` because it needs what the training layer may not import: the one input
reader (`clients.inputs`) for the OOD set, and the export's reference set and statistics fit
(`export.ood_reference`, `export.ood_stats`), so that the OOD score evaluated is the one served.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from msk.commands._families import add_family_command


def register(subparsers: argparse._SubParsersAction) -> None:
    families = add_family_command(
        subparsers, "evaluate", "evaluate trained models and write a report",
        "Evaluate a model family on a labelled split and write a Markdown report with plots. "
        "`msk evaluate mura --help` / `msk evaluate wrist --help` list the options.",
        "register_evaluate",
    )
    _add_ood_options(families.choices["mura"])


def _add_ood_options(p: argparse.ArgumentParser) -> None:
    from msk.constants import OOD_DEFAULT_PERCENTILE, OOD_REFERENCE_CSV

    p.add_argument("--ood-set", action="append", default=[], metavar="DIR|CSV",
                   help="out-of-distribution images (folder, glob, file or CSV manifest as "
                   "msk score reads them; repeatable): the report adds the OOD score's AUROC "
                   "and FPR at 95%% TPR against the evaluated split, and the share each side "
                   f"flagged at the {OOD_DEFAULT_PERCENTILE:g}th-percentile threshold; needs "
                   "all four members")
    p.add_argument("--ood-reference", action="append", default=[], metavar="DIR|CSV",
                   help="reference set the OOD statistics are fitted on, as msk export "
                   f"--reference (default CHECKPOINTS/{OOD_REFERENCE_CSV}, the training images "
                   "msk train mura lists: the statistics msk export fits)")
    p.set_defaults(handler=run_evaluate_mura)


def run_evaluate_mura(args: argparse.Namespace) -> int:
    """`msk evaluate mura`, with the OOD set prepared when `--ood-set` is given."""
    from training.mura_cli import run_evaluate

    if not args.ood_set:
        return run_evaluate(args)
    try:
        ood = _ood_set(args)
    except ValueError as exc:
        print(f"msk evaluate mura: {exc}", file=sys.stderr)
        return 2
    return run_evaluate(args, ood=ood)


def _ood_set(args: argparse.Namespace):
    """The `training.mura_evaluate.OodSet` of `--ood-set` / `--ood-reference`."""
    from clients.inputs import image_set
    from export.ood_stats import fit_reference
    from msk.commands._ood_reference import ood_reference_set
    from msk.constants import OOD_DEFAULT_PERCENTILE, OOD_REFERENCE_CSV
    from training.mura_data import Record
    from training.mura_evaluate import OodSet

    items = image_set(args.ood_set, "--ood-set")
    reference = ood_reference_set(args.ood_reference, args.checkpoints, "--ood-reference")
    if reference is None:
        raise ValueError("--ood-set needs a reference set: --ood-reference DIR|CSV, or "
                         f"--checkpoints DIR with {OOD_REFERENCE_CSV} (written by msk train "
                         "mura)")

    def record(path: Path | str, label: int | None, part: str | None, index: int,
               source: str) -> Record:
        return Record(path=Path(path), label=int(label or 0), body_part=part or "",
                      patient=f"{source}:{index}", study=f"{source}:{index}", source=source)

    return OodSet(
        records=[record(i.path, None, i.body_part, n, "ood") for n, i in enumerate(items)],
        reference=[record(i.path, i.label, i.body_part, n, "reference")
                   for n, i in enumerate(reference.images)],
        reference_labels=[i.label for i in reference.images],
        fit=fit_reference, percentile=OOD_DEFAULT_PERCENTILE,
        description={"ood_set": ", ".join(args.ood_set), "reference": reference.source,
                     "reference_kind": reference.kind})
