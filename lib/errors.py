"""The kit's errors: problems a user can fix, each said on one line.

Every entrypoint catches ``KitError`` in one place, prints ``error: <message>`` and exits with code 2;
anything else is a bug and keeps its traceback. Each class also derives from the builtin it replaced
(ValueError, RuntimeError), so callers that caught those still do. Standard library only: the
entrypoints import this before torch.
"""


class KitError(Exception):
    """A problem with what the user gave (config, data, weights, sweep, source of a report or export)."""

    # one_line: fold the message onto one line (kinds whose text quotes files and other libraries); the
    # rest are written as one line, or as a first line and then details (an edited sweep's diff).
    one_line = False

    def __init__(self, message: str = ""):
        super().__init__(" ".join(str(message).split()) if self.one_line else str(message))


class ConfigError(KitError, ValueError):
    """A bad configuration key or value (before any work, before a run folder exists)."""


class DataError(KitError, ValueError):
    """The data cannot be used at all (no folder, fewer than two classes)."""


class WeightsError(KitError, RuntimeError):
    """Initial weights could not be found or loaded; the message says what to do."""


class RunBusy(KitError, RuntimeError):
    """Another live process holds the run folder; the message names it."""


class SweepError(KitError, ValueError):
    """A sweep file, study or sweep command that cannot run, said before any trial starts. Its first line
    says what; an edited sweep's refusal lists what changed on the lines after it."""


class SourceError(KitError, ValueError):
    """SOURCE is none of the forms a command reads (lib.sources), or not one this command reads."""

    one_line = True


class ReportError(KitError, ValueError):
    """The report cannot be made from what was given (no runs, unknown metric, ...)."""

    one_line = True


class ExportError(KitError, RuntimeError):
    """The run cannot be exported, or the export does not match PyTorch."""

    one_line = True


class PredictError(KitError, ValueError):
    """The model or the request cannot be used (no model, corrupt file, nothing to classify)."""

    one_line = True


def one_line(e: BaseException) -> str:
    """An exception from another library as ``Type: first line`` (at most 300 characters of it)."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


def yaml_problem(e: Exception) -> str:
    """What is wrong in a YAML file and where, on one line: ``line 5, column 9: expected ',' or ']', but
    got ':' (while parsing a flow sequence started at line 4, column 13)``. PyYAML's marks count from 0,
    editors from 1."""
    if isinstance(e, UnicodeDecodeError):
        return f"byte {e.start}: not UTF-8 text"

    def at(mark) -> str:
        return f"line {mark.line + 1}, column {mark.column + 1}"
    problem, mark = getattr(e, "problem", None), getattr(e, "problem_mark", None)
    context, context_mark = getattr(e, "context", None), getattr(e, "context_mark", None)
    if not problem or mark is None:
        return " ".join(str(e).split())
    where = f" started at {at(context_mark)}" if context_mark is not None else ""
    return f"{at(mark)}: {problem}" + (f" ({context}{where})" if context else "")
