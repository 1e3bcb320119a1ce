"""The typer application object and the error boundary every command runs inside."""

from __future__ import annotations

import typer
from typer.core import TyperGroup

from featbench.devices import device_error_message
from featbench.diskspace import disk_full_message
from featbench.errors import FeatbenchError


class _CleanErrorGroup(TyperGroup):
    """Turns user errors, a GPU's out-of-memory or nondeterministic-kernel errors and a full disk no writer named
    into one line on stderr and exit code 2, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except FeatbenchError as err:
            typer.echo(f"featbench: error: {one_line(str(err))}", err=True)
            raise typer.Exit(code=2) from None
        except Exception as err:
            line = device_error_message(err) or disk_full_message(err)
            if line is None:
                raise
            typer.echo(f"featbench: error: {line}", err=True)
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt:
            typer.echo("featbench: interrupted (partial work is kept; run the same command to resume)", err=True)
            raise typer.Exit(code=130) from None


MAX_ERROR_CHARS = 2000


def one_line(message: str, limit: int = MAX_ERROR_CHARS) -> str:
    """An error message as one bounded line: a value echoed back must never flood the terminal."""
    text = " ".join(message.split())
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters cut)"


app = typer.Typer(
    cls=_CleanErrorGroup,
    name="featbench",
    help="Feature-cache-first few-shot adaptation of CLIP: extract features once, fit heads on a CPU in seconds.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def parse_int_list(value: str, flag: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4]; a clear error naming the flag otherwise."""
    try:
        out = [int(v) for v in str(value).split(",") if v.strip() != ""]
    except ValueError:
        raise FeatbenchError(f"{flag} expects comma-separated integers like 1,2,4; got {value!r}") from None
    if not out:
        raise FeatbenchError(f"{flag} is empty; give comma-separated integers like 1,2,4")
    return out


def parse_str_list(value: str) -> list[str]:
    """'a,b , c' -> ['a', 'b', 'c']."""
    return [v.strip() for v in str(value).split(",") if v.strip()]
