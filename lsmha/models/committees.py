"""The paper's committees as member lists: (registry name, overrides) per member.

Table 5: four 7-component CCTs (committee 0.851). Table 6: six CCT-2/3x2 (first
five: 0.827). Table 7: five CCT-1/3x1 and five CCT-1/3x2 (0.811).
"""

from __future__ import annotations

from typing import Any

from .registry import model_spec
from .spec import CCTSpec

Member = tuple[str, dict[str, Any]]

PAPER_COMMITTEES: dict[str, list[Member]] = {
    "table5": [
        ("cct_7_3x1", {}),
        ("cct_7_3x1", {"heads": [4, 4, 4, 4, 4, 4, 16]}),
        ("cct_2_3x5", {"dim": 256, "heads": 16}),
        ("cct_2_3x5", {"dim": 512, "heads": 32}),
    ],
    "table6": [
        ("cct_2_3x2", {"dim": 1024, "heads": 64}),
        ("cct_2_3x2", {"dim": 1024, "heads": 32}),
        ("cct_2_3x2", {"dim": 512, "heads": 64}),
        ("cct_2_3x2", {"dim": 512, "heads": 8}),
        ("cct_2_3x2", {"dim": 512, "heads": 16}),
        ("cct_2_3x2", {"dim": 512, "heads": 32}),
    ],
    "table7": [
        ("cct_1_3x1", {"dim": 1536, "heads": 64}),
        ("cct_1_3x1", {"dim": 1024, "heads": 64}),
        ("cct_1_3x1", {"dim": 3072, "heads": 192}),
        ("cct_1_3x1", {"dim": 1023, "heads": 93}),
        ("cct_1_3x1", {"dim": 2048, "heads": 128}),
        ("cct_1_3x2", {"dim": 1536, "heads": 64}),
        ("cct_1_3x2", {"dim": 1024, "heads": 64}),
        ("cct_1_3x2", {"dim": 3072, "heads": 192}),
        ("cct_1_3x2", {"dim": 1023, "heads": 93}),
        ("cct_1_3x2", {"dim": 1014, "heads": 78}),
    ],
}


def parse_value(text: str) -> Any:
    """A CLI field value: true/false, per-block ints `4/4/16`, an int, a float, else the text."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if "/" in text:
        return [int(v) for v in text.split("/")]
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_committee(text: str) -> list[Member]:
    """Members from a CLI string.

    Forms: a paper committee (`table6`), its first k members (`table6:5`), or
    members separated by commas, each `name[:field=value...]` with `/` between
    per-block heads: `cct_2_3x2:dim=1024:heads=64,cct_2_3x2:heads=4/8`.
    """
    text = text.strip()
    name, _, rest = text.partition(":")
    if name in PAPER_COMMITTEES:
        members = PAPER_COMMITTEES[name]
        if rest:
            if not rest.isdigit() or not 1 <= int(rest) <= len(members):
                raise ValueError(f"{text!r}: after '{name}:' give a member count 1..{len(members)}")
            members = members[: int(rest)]
        return list(members)
    members: list[Member] = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, *fields = item.split(":")
        overrides = {}
        for f in fields:
            key, eq, value = f.partition("=")
            if not eq:
                raise ValueError(f"member {item!r}: expected field=value after ':', got {f!r}")
            overrides[key] = parse_value(value)
        members.append((name, overrides))
    if not members:
        raise ValueError(f"committee {text!r} names no members; e.g. table6:5 or cct_2_3x2:dim=512:heads=32")
    return members


def committee_specs(members: list[Member], **common: Any) -> list[CCTSpec]:
    """Validated specs of a member list; `common` overrides apply to every member."""
    return [model_spec(name, **{**overrides, **common}) for name, overrides in members]
