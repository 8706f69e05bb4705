"""Library messages in the CLI's words: a fix a message gives as a Python argument, given as the option that sets it.

The library speaks to Python callers ("pass overwrite=True"); a shell user reads the option
(``--overwrite``) instead. Every such phrase the library uses is listed here (a test checks it).
"""

from __future__ import annotations

# Python argument phrase -> the same fix on the command line ("" drops it: no option does it).
CLI_FIXES = {
    "pass overwrite=True": "pass --overwrite",
    "pass unmapped='name'": "pass --name-unmapped",
    ", or pass backend=": "",  # the CLI picks the backend by suffix only
}


def in_cli_words(message: str) -> str:
    """``message`` with every Python-argument fix replaced by its CLI option."""
    for python_fix, cli_fix in CLI_FIXES.items():
        message = message.replace(python_fix, cli_fix)
    return message
