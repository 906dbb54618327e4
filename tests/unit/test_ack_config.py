"""`[ack]`: refused when dangerous, its secret checked before a command uses it."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import ConfigError, load_settings
from core.config_checks import file_problems

GOOD = "g" * 32
URL = "https://club.example/cw"


def problems(**ack: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(ack=ack)
    return info.value.problems


def test_off_by_default_and_needs_nothing() -> None:
    s = load_settings()
    assert not s.ack.enabled
    assert file_problems(s, "ack") == []


def test_a_secret_given_itself_must_be_long_enough() -> None:
    [line] = problems(secret="short")
    assert line.startswith("ack.secret: must be at least 32 bytes")
    assert "short" not in line


@pytest.mark.parametrize("url", ["ftp://club.example", "club.example", "https://x/?a=1",
                                 "https://x/#top"])
def test_public_url_must_be_a_plain_http_url(url: str) -> None:
    [line] = problems(public_url=url)
    assert line.startswith("ack.public_url: ")


def test_public_url_loses_its_trailing_slash() -> None:
    assert load_settings(ack={"public_url": URL + "/"}).ack.public_url == URL


def test_a_wrongly_typed_file_value_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[ack]\nport = "9109"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert [p.split(":")[0] for p in info.value.problems] == ["ack.port"]


def test_on_without_a_secret_is_one_line() -> None:
    s = load_settings(ack={"public_url": URL})
    [line] = file_problems(s, "ack")
    assert line.startswith("ack.secret: ack.public_url is set, so the links need a secret")
    assert file_problems(s, "broker") == []  # only commands that use the endpoint ask


def test_the_secret_file_is_read_and_judged(tmp_path: Path) -> None:
    short, good, empty = tmp_path / "short", tmp_path / "good", tmp_path / "empty"
    short.write_text("tooShort\n")
    good.write_text(GOOD + "\n")
    empty.write_text("\n")
    assert file_problems(load_settings(ack={"public_url": URL, "secret_file": str(good)}),
                         "ack") == []
    assert load_settings(ack={"secret_file": str(good)}).ack.secret_bytes() == GOOD.encode()
    assert file_problems(load_settings(ack={"public_url": URL, "secret_file": str(short)}),
                         "ack") == [f"ack.secret_file: {short}: the secret must be at least "
                                    "32 bytes"]
    assert file_problems(load_settings(ack={"public_url": URL, "secret_file": str(empty)}),
                         "ack") == [f"ack.secret_file: {empty}: is empty"]
    missing = tmp_path / "nope"
    assert file_problems(load_settings(ack={"public_url": URL, "secret_file": str(missing)}),
                         "ack") == [f"ack.secret_file: {missing}: no such file"]


def test_the_secret_from_the_environment_wins_over_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CUFFWATCH_ACK__SECRET", GOOD)
    s = load_settings(ack={"public_url": URL, "secret_file": str(tmp_path / "absent")})
    assert file_problems(s, "ack") == []
    assert s.ack.secret_bytes() == GOOD.encode()
