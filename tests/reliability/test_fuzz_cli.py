"""Bad options and values on the command line: exit code 2 and a message naming the option, never a traceback."""

from __future__ import annotations

import pytest
import typer
from hypothesis import assume
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError
from typer.testing import CliRunner

from mlplatform.cli import app
from tests.reliability.fuzz import Tally, run_generated, total_cases

#: (command path, option, value type) of the numeric options; a command this checkout lacks is left out.
NUMERIC_OPTIONS: list[tuple[tuple[str, ...], str, type]] = [
    (("run",), "--n-transactions", int),
    (("run",), "--n-days", int),
    (("run",), "--seed", int),
    (("run",), "--fraud-rate", float),
    (("run",), "--drift", float),
    (("run",), "--validation-days", int),
    (("run",), "--max-epochs", int),
    (("run",), "--batch-size", int),
    (("run",), "--learning-rate", float),
    (("deploy",), "--canary-percent", int),
    (("deploy",), "--port", int),
    (("serve",), "--port", int),
    (("pipeline", "submit", "--host", "http://127.0.0.1:9"), "--seed", int),
    (("webhook",), "--port", int),
    (("webhook",), "--cooldown-seconds", float),
    (("monitor", "show"), "--windows", int),
    (("monitor", "show"), "--window-seconds", float),
]
#: Values the option's type accepts are skipped (they would run the command).
_PARSERS = {int: TypeAdapter(int), float: TypeAdapter(float)}


def _commands() -> set[str]:
    group = typer.main.get_command(app)
    return set(group.list_commands(None))  # type: ignore[arg-type]


def _options() -> list[tuple[tuple[str, ...], str, type]]:
    present = _commands()
    return [o for o in NUMERIC_OPTIONS if o[0][0] in present]


def _invoke(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.output


@st.composite
def bad_values(draw: st.DrawFn) -> tuple[list[str], str]:
    """A numeric option given a value its type refuses (text, blanks, overflowing or out-of-range numbers)."""
    path, option, kind = draw(st.sampled_from(_options()))
    value = draw(
        st.text(min_size=0, max_size=30)
        | st.sampled_from(["", " ", "1e", "0x1G", "--", "1,5", "１２", "NaN!", "1.2.3", "∞", "\x00"])
        | st.integers().map(lambda i: f"{i}abc")
    )
    try:
        _PARSERS[kind].validate_python(value)
        assume(False)
    except ValidationError:
        pass
    return [*path, f"{option}={value}"], option


def test_generated_bad_option_values_exit_2_naming_the_option(tally: Tally) -> None:
    def send(case: tuple[list[str], str]) -> int:
        args, option = case
        code, output = _invoke(args)
        assert code == 2 and option in output, (args, code, output[-500:])
        return code

    run_generated("cli", bad_values(), send, max(20, total_cases() // 20), tally, seed_value=21)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["run", "--bogus-option"], "--bogus-option"),
        (["serve", "--port"], "--port"),
        (["deploy", "--canary-percent=101"], "--canary-percent"),
        (["deploy", "--canary-percent=-1"], "--canary-percent"),
        (["run", "--n-transactions=99999999999999999999999999999"], "n_transactions"),
        (["run", "--n-transactions=5"], "n_transactions"),
        (["run", "--fraud-rate=nan"], "fraud_rate"),
        (["run", "--drift=inf"], "drift"),
        (["pipeline", "submit"], "--host"),
        (["pipeline", "submit", "--host", "not a url"], "--host"),
        (["score", "--output"], "--output"),
        (["no-such-command"], "no-such-command"),
    ],
)
def test_bad_command_lines_exit_2_naming_what_is_wrong(args: list[str], named: str) -> None:
    code, output = _invoke(args)
    assert code == 2, output
    assert named in output, output
