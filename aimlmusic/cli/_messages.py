"""The library's advice, said the command line's way.

The library's errors tell a Python caller what to pass (``api_key=``,
``allow_insecure_http=True``); a user of the ``aimlmusic`` command has flags and environment
variables instead. The library's texts stay as they are (Python users read them); the CLI
rewrites the advice before printing.
"""

from __future__ import annotations

__all__ = ["for_the_command_line"]

#: (Python advice as the library words it, what the command line says instead), applied in
#: order; tests/test_cli_messages.py checks each against the library's real message.
_REWRITES: tuple[tuple[str, str], ...] = (
    ("the API key given as api_key=", "the API key given with --api-key"),
    (
        "pass api_key= or set the AIML_API_KEY (or AIMLAPI_API_KEY) environment variable",
        "set the AIML_API_KEY (or AIMLAPI_API_KEY) environment variable, or pass --api-key",
    ),
    (
        "the API key is empty: pass a key, or set AIML_API_KEY (or AIMLAPI_API_KEY)",
        "the API key is empty: give a key with --api-key, or set AIML_API_KEY (or AIMLAPI_API_KEY)",
    ),
    (
        "use https, or pass allow_insecure_http=True",
        "use an https:// --base-url (or $AIMLMUSIC_BASE_URL)",
    ),
    ("or pass tag_mp3=False", "or pass --no-tag"),
    ("base URL ", "--base-url (or $AIMLMUSIC_BASE_URL) "),
)


#: Added to a missing key's message: how to try the command without one.
_NO_KEY = "no API key:"
_TRY_EMULATOR = " (or try it without a key: --emulator)"
_TRY_DEMO = " (or try aimlmusic without a key: aimlmusic demo)"


def for_the_command_line(message: str, *, has_emulator: bool = False) -> str:
    """``message`` with the library's Python advice replaced by flags and variables; a
    missing key also points at ``--emulator`` (if the command has it) or ``demo``."""
    for python, command_line in _REWRITES:
        message = message.replace(python, command_line)
    if message.startswith(_NO_KEY):
        message += _TRY_EMULATOR if has_emulator else _TRY_DEMO
    return message
