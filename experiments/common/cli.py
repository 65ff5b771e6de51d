"""How the command-line tools report a usage error: one line, `<prog>: error: <message>`, on stderr, exit status 2
(argparse's convention), never a traceback."""

from __future__ import annotations

import sys
from typing import NoReturn


def one_line(error: BaseException | str) -> str:
    """An error's message on one line (a KeyError's without the quotes its str() adds)."""
    if isinstance(error, KeyError) and error.args:
        text = str(error.args[0])
    else:
        text = str(error)
    return " ".join(text.split()) or type(error).__name__


def usage_error(prog: str, error: BaseException | str) -> NoReturn:
    """Print `prog: error: message` to stderr and exit with status 2."""
    print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
    raise SystemExit(2)
