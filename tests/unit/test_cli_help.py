"""Every command's --help says what it does and shows an example; a bad argument is one line."""

from __future__ import annotations

import pytest

from fleetstream.cli import EXAMPLES, main


def _commands() -> list[list[str]]:
    # a command without an example fails every --help (EXAMPLES[name] in fleetstream.cli._document)
    nested = [["plan", "load"], ["plan", "publish"], ["plan", "show"], ["token", "add"], ["token", "list"]]
    return [[name] for name in EXAMPLES] + nested


@pytest.mark.parametrize("command", _commands(), ids=" ".join)
def test_every_command_has_help_with_an_example(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    usage, _, rest = text.partition("\n\n")
    assert usage.startswith(f"usage: fleetstream {' '.join(command)}")
    assert rest.split("\n\n")[0].strip() and not rest.startswith(("positional", "options"))  # what it does
    assert f"example:\n  fleetstream {command[0]}" in text or (command[0] == "db" and "example:\n  psql" in text)


def test_the_top_level_help_says_how_to_call_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert ".venv/bin/fleetstream, or ./run fleetstream" in capsys.readouterr().out
