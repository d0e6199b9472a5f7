"""Which installable part of the project provides a missing module.

The project installs in parts, the extras of pyproject.toml (README, "Install a part"): a
client-only install has no torch, ONNX Runtime or Ultralytics. A command that needs another part
fails on its first missing import; the CLI then names the part to install instead of printing a
traceback. The parts and their dependencies are read from the installed distribution's metadata
(pyproject.toml in a source checkout that is not installed), so no dependency list is repeated
here.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "msk-triton"
# Extras that are not parts: every part together, and the test tools.
NOT_PARTS = ("all", "test")
# Top-level import names the project uses that differ from the distribution that provides them.
PROVIDED_BY = {
    "PIL": "pillow",
    "yaml": "pyyaml",
    "cv2": "opencv-python-headless",
    "sklearn": "scikit-learn",
    "grpc": "grpcio",
    "multipart": "python-multipart",
    "starlette": "fastapi",
    "botocore": "boto3",
}
_PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements() -> dict[str, list[str]]:
    """{extra or "" for the base dependencies: [distribution names it lists directly, and
    "[part]" for each part of this project it includes]}."""
    listed: dict[str, list[str]] = {}
    try:
        meta = metadata.metadata(DISTRIBUTION)
        for extra in meta.get_all("Provides-Extra") or []:
            listed[extra] = []
        lines = meta.get_all("Requires-Dist") or []
    except metadata.PackageNotFoundError:
        if not _PYPROJECT.exists():
            return {}
        project = tomllib.loads(_PYPROJECT.read_text())["project"]
        lines = list(project.get("dependencies", []))
        for extra, reqs in project.get("optional-dependencies", {}).items():
            listed[extra] = []
            lines += [f"{req}; extra == '{extra}'" for req in reqs]
    listed.setdefault("", [])
    for line in lines:
        name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line)
        extra = re.search(r"extra\s*==\s*[\"']([^\"']+)[\"']", line)
        if not name:
            continue
        entries = listed.setdefault(extra.group(1) if extra else "", [])
        if _canonical(name.group(1)) == DISTRIBUTION:       # msk-triton[client, ...]
            included = re.search(r"\[([^\]]*)\]", line)
            entries += [f"[{part.strip()}]" for part in included.group(1).split(",")] \
                if included else []
        else:
            entries.append(_canonical(name.group(1)))
    return listed


def parts() -> list[str]:
    """The installable parts, in pyproject.toml's order."""
    return [extra for extra in _requirements() if extra and extra not in NOT_PARTS]


def _provides(part: str, distribution: str, listed: dict[str, list[str]],
              seen: frozenset[str] = frozenset()) -> bool:
    """Whether `part` lists `distribution`, itself or through the parts it includes."""
    entries = listed.get(part, [])
    return distribution in entries or any(
        _provides(entry[1:-1], distribution, listed, seen | {part}) for entry in entries
        if entry.startswith("[") and entry[1:-1] not in seen | {part})


def part_providing(module: str, command: str = "") -> str | None:
    """The part to install for a missing `module` (a dotted import name): the command's own
    part when one has its name (`msk export` -> export), else the first part that provides
    it; "" for the base dependencies every part shares; None when no part names it."""
    top = module.split(".")[0]
    wanted = _canonical(PROVIDED_BY.get(top, top))
    listed = _requirements()
    if wanted in listed.get("", []):
        return ""
    candidates = [command] if command in parts() else []
    for part in candidates + parts():
        if _provides(part, wanted, listed):
            return part
    return None


def install_hint(part: str | None) -> str:
    """How to install `part` (pinned from its lock, or through pip's resolver)."""
    if part == "":
        return f"the base install is incomplete: pip install {DISTRIBUTION}"
    if part is None:
        return (f"install the part this command needs ({', '.join(parts())}), or every part: "
                f"pip install '{DISTRIBUTION}[all]'")
    return (f"it comes with the `{part}` part: pip install '{DISTRIBUTION}[{part}]' (pinned: pip "
            f"install --no-deps -r locks/{part}.lock)")


def parts_epilog() -> str:
    """The `msk --help` paragraph on parts."""
    names = ", ".join(parts())
    return (f"Installed in parts ({names}): pip install '{DISTRIBUTION}[PART]', pinned: pip "
            f"install --no-deps -r locks/PART.lock. The client part alone runs `msk score`, "
            f"`msk detect` and `msk publish` without torch; a command whose part is missing "
            f"says which part to install. '{DISTRIBUTION}[all]' is every part.")
