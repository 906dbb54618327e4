"""The TOML file's values of the wrong type, which the lax validation would convert.

pydantic's lax mode reads `"160"` as 160 and `true` as 1: right for the environment, whose
values are all strings, and wrong for TOML, which has types (`lop_mmhg = "160"` is a typo
more often than a number). `wrongly_typed` validates the file's own data strictly, section
by section, and keeps those errors only, one line each.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError


def _toml_literal(text: str) -> str | None:
    """`text` as the TOML number or boolean it looks like (`"160"` → `160`), else None."""
    candidate = text.strip()
    try:
        value = tomllib.loads(f"v = {candidate}")["v"]
    except tomllib.TOMLDecodeError:
        return None
    return candidate if isinstance(value, int | float | bool) else None


def _type_problem(err: Any) -> str | None:
    """A strict-mode error worth its own line: a number or boolean written as a string, or a
    boolean where a number belongs. The lax validation accepts both silently (`"160"` is
    160, `true` is 1), which is right for the environment (every value a string) and wrong
    for TOML, which has types: `lop_mmhg = "160"` is a typo more often than a number."""
    value = err["input"]
    if err["type"] in ("float_type", "int_type"):
        if isinstance(value, str):
            literal = _toml_literal(value)
            if literal is not None:
                return f"must be a number, not the string {json.dumps(value)}: write {literal}"
            return None  # not a number at all: the lax validation says so
        if isinstance(value, bool):
            return f"must be a number, not {str(value).lower()}"
    if err["type"] == "bool_type" and isinstance(value, str):
        literal = _toml_literal(value)
        if literal in ("true", "false"):
            return f"must be true or false, not the string {json.dumps(value)}: write {literal}"
    return None


def wrongly_typed(
    data: Mapping[str, Any], sections: Mapping[str, TypeAdapter[Any]], *, team_alerts: str
) -> dict[str, str]:
    """{location: problem} for every value of the TOML file whose type is wrong (strict).

    `sections`: the adapter of each top-level table; `team_alerts`: the section a team's
    `[teams.T.alerts]` overrides are validated as (they are kept as given in the model).
    """
    found: dict[str, str] = {}

    def scan(adapter: TypeAdapter[Any], value: Any, prefix: tuple[str, ...]) -> None:
        try:
            adapter.validate_json(json.dumps(value, default=str), strict=True)
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                if (line := _type_problem(err)) is not None:
                    found[".".join([*prefix, *(str(p) for p in err["loc"])])] = line

    for key, adapter in sections.items():
        if isinstance(data.get(key), Mapping):
            scan(adapter, data[key], (key,))
    teams = data.get("teams")
    if isinstance(teams, Mapping):
        for team_id, team in teams.items():
            # a team's [alerts] overrides are kept as given and validated when merged
            if isinstance(team, Mapping) and isinstance(team.get("alerts"), Mapping):
                scan(sections[team_alerts], team["alerts"], ("teams", str(team_id), "alerts"))
    return found
