"""Which Triton pipelines score a DICOM instance, decided from its header.

Hospitals fill BodyPartExamined inconsistently (empty, "EXTREMITY", local language), so the
decision looks at BodyPartExamined, then SeriesDescription, then StudyDescription (then
ProtocolName), and a site can put its own rules in front of the defaults. The first rule whose
pattern matches the first non-empty field it names wins; a rule may map to `null` to exclude a
body part explicitly (e.g. "CHEST" studies sent to the gateway by a broad PACS route).

Rule table file (JSON or YAML)::

    {"use_defaults": true,
     "rules": [{"field": "SeriesDescription", "pattern": "HANDGELENK", "body_part": "wrist"},
               {"field": "any", "pattern": "\\\\bCHEST\\\\b", "body_part": null}]}

Instances whose body part is not one of the seven MURA upper-limb parts are not scored: that is
logged by the caller and is not an error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from msk.constants import MURA_BODY_PARTS, MURA_ENSEMBLE_MODEL, WRIST_DETECT_MODEL

FIELDS: tuple[str, ...] = (
    "BodyPartExamined", "SeriesDescription", "StudyDescription", "ProtocolName",
)
"""Header attributes consulted, most specific first."""


@dataclass(frozen=True)
class Rule:
    """`pattern` (case-insensitive regex) on `field` ("any" = every FIELDS entry) -> body part."""

    field: str
    pattern: str
    body_part: str | None

    def __post_init__(self) -> None:
        if self.field != "any" and self.field not in FIELDS:
            raise ValueError(f"routing rule field {self.field!r} is not one of {FIELDS} or 'any'")
        if self.body_part is not None and self.body_part not in MURA_BODY_PARTS:
            raise ValueError(
                f"routing rule body_part {self.body_part!r} is not one of {MURA_BODY_PARTS} "
                "or null")
        try:
            re.compile(self.pattern)
        except re.error as exc:
            raise ValueError(f"routing rule pattern {self.pattern!r} is invalid: {exc}") from exc

    def matches(self, value: str) -> bool:
        return re.search(self.pattern, value, flags=re.IGNORECASE) is not None


def _default_rules() -> tuple[Rule, ...]:
    """English terms (DICOM CID 4031 defined terms first) for the seven MURA parts.

    Order matters: "forearm" before "arm", "wrist" before "hand" (a "HAND AND WRIST" series is
    scored as a wrist, which also runs the wrist detectors), "finger"/"thumb" before "hand".
    """
    terms = [
        ("forearm", r"\bforearm\b|\bradius\b|\bulna\b|\bunterarm\b"),
        ("wrist", r"\bwrist\b|\bcarpus\b|\bscaphoid\b|\bhandgelenk\b"),
        ("finger", r"\bfingers?\b|\bthumb\b|\bdigits?\b|\bphalan"),
        ("hand", r"\bhands?\b"),
        ("elbow", r"\belbow\b|\bolecranon\b"),
        ("humerus", r"\bhumerus\b|\bupper ?arm\b|\barm\b"),
        ("shoulder", r"\bshoulder\b|\bscapula\b|\bclavicle\b"),
    ]
    rules: list[Rule] = []
    for name in FIELDS:
        rules.extend(Rule(name, pattern, part) for part, pattern in terms)
    return tuple(rules)


DEFAULT_RULES: tuple[Rule, ...] = _default_rules()


@dataclass(frozen=True)
class Route:
    """The decision for one instance: body part (None = not scored), pipelines, and why."""

    body_part: str | None
    pipelines: tuple[str, ...]
    reason: str

    @property
    def scored(self) -> bool:
        return bool(self.pipelines)


@dataclass
class Router:
    """Applies a rule table; `wrist_detect_available` adds the detector for wrists."""

    rules: tuple[Rule, ...] = DEFAULT_RULES
    wrist_detect_available: bool = False
    extra: tuple[Rule, ...] = field(default_factory=tuple)

    def route(self, header: Mapping[str, object] | object) -> Route:
        """Route a pydicom Dataset (or any mapping of the FIELDS keywords to strings)."""
        values = {name: _text(header, name) for name in FIELDS}
        for rule in (*self.extra, *self.rules):
            names = FIELDS if rule.field == "any" else (rule.field,)
            for name in names:
                value = values[name]
                if value and rule.matches(value):
                    return self._decide(rule.body_part, f"{name} matched {rule.pattern!r}")
        present = [n for n in FIELDS if values[n]]
        why = f"no rule matched {present}" if present else "no body part information"
        return Route(None, (), why)

    def _decide(self, body_part: str | None, reason: str) -> Route:
        if body_part is None:
            return Route(None, (), f"excluded: {reason}")
        pipelines = [MURA_ENSEMBLE_MODEL]
        if body_part == "wrist" and self.wrist_detect_available:
            pipelines.append(WRIST_DETECT_MODEL)
        return Route(body_part, tuple(pipelines), reason)

    @classmethod
    def from_file(cls, path: str | Path | None, wrist_detect_available: bool = False
                  ) -> Router:
        """Load a rule table (JSON or YAML); None = defaults only."""
        if path is None:
            return cls(wrist_detect_available=wrist_detect_available)
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        try:
            if path.suffix.lower() in (".yaml", ".yml"):

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except (ValueError, yaml.YAMLError) as exc:  # JSONDecodeError is a ValueError
            raise ValueError(f"routing rules {path}: cannot parse ({exc})") from exc
        return cls.from_mapping(data, wrist_detect_available, source=str(path))

    @classmethod
    def from_mapping(cls, data: object, wrist_detect_available: bool = False,
                     source: str = "<rules>") -> Router:
        if not isinstance(data, Mapping) or not isinstance(data.get("rules", []), list):
            raise ValueError(f"routing rules {source}: expected an object with a 'rules' list")
        rules: list[Rule] = []
        for i, item in enumerate(data.get("rules", [])):
            try:
                rules.append(Rule(str(item.get("field", "any")), str(item["pattern"]),
                                  item.get("body_part")))
            except (KeyError, AttributeError, ValueError) as exc:
                raise ValueError(f"routing rules {source}: rule {i}: {exc}") from exc
        defaults = DEFAULT_RULES if data.get("use_defaults", True) else ()
        return cls(rules=defaults, extra=tuple(rules),
                   wrist_detect_available=wrist_detect_available)


def _text(header: Mapping[str, object] | object, name: str) -> str:
    """A header value as stripped text; underscores read as spaces ("UPPER_ARM")."""
    if isinstance(header, Mapping):
        value = header.get(name)
    else:
        value = getattr(header, name, None) if hasattr(header, name) else None
    if value is None:
        return ""
    return str(value).replace("_", " ").replace("^", " ").strip()

