"""Sphinx configuration: MyST markdown pages, API reference from the package's docstrings.

The API page is assembled from ``aimlmusic.__all__`` (see ``_api_reference``): every public
name is documented exactly once, under a section chosen below or under "Other names", and a
name that does not exist (yet) is never referenced. Intersphinx stays off: builds run without
network access.
"""

from __future__ import annotations

import inspect
from typing import Any

import aimlmusic

project = "aimlmusic"
author = "aimlmusic developers"
copyright = "aimlmusic developers"
release = aimlmusic.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
nitpicky = False

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
python_use_unqualified_type_names = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "alabaster"
html_title = f"aimlmusic {release}"
html_static_path: list[str] = []

# Sections of the API page, in reading order. Names missing from __all__ are skipped, and public
# names listed nowhere here land under "Other names", so the page follows the package.
API_SECTIONS: dict[str, list[str]] = {
    "Client": ["AsyncMusicClient", "MusicClient", "SongResults"],
    "Requests": ["SongRequest", "AudioSetting"],
    "Generations": [
        "Generation",
        "GenerationStatus",
        "AudioFile",
        "GenerationError",
        "Usage",
        "MusicInfo",
    ],
    "Batches": ["SongResult", "SongTimings"],
    "Settings": ["Timeout", "RetryPolicy", "Limits"],
    "Polling": ["PollPolicy", "PollState", "FixedInterval", "LearnedPolicy"],
    "Clocks": ["Clock", "SystemClock", "ScaledClock"],
    "Beyond one process": ["SharedBudget"],
    "Exceptions": [
        "AimlMusicError",
        "ConfigurationError",
        "RequestValidationError",
        "APIError",
        "APIStatusError",
        "BadRequestError",
        "AuthenticationError",
        "PermissionDeniedError",
        "NotFoundError",
        "RateLimitError",
        "ServerError",
        "APIConnectionError",
        "APITimeoutError",
        "ResponseValidationError",
        "AmbiguousSubmissionError",
        "GenerationFailedError",
        "GenerationTimeoutError",
        "DownloadError",
        "SharedStateError",
    ],
}
# Replaced in docs/api.md by the generated reference.
API_MARKER = "<!-- api-reference -->"
NOT_DOCUMENTED = {"__version__"}


def _directive(name: str) -> str:
    # eval-rst: autodoc output is reStructuredText (the docstrings are), and MyST would read
    # it as Markdown inside a Markdown page.
    obj = getattr(aimlmusic, name)
    if inspect.isclass(obj):
        # Exceptions: where they sit in the tree matters; models: their properties.
        options = ["show-inheritance"] if issubclass(obj, BaseException) else ["members"]
        directive = f".. autoclass:: aimlmusic.{name}"
    elif callable(obj):
        options, directive = [], f".. autofunction:: aimlmusic.{name}"
    else:
        options, directive = [], f".. autodata:: aimlmusic.{name}"
    lines = [directive, *(f"   :{option}:" for option in options)]
    return "```{eval-rst}\n" + "\n".join(lines) + "\n```\n"


def _api_reference() -> str:
    public = [name for name in aimlmusic.__all__ if name not in NOT_DOCUMENTED]
    placed = {name for names in API_SECTIONS.values() for name in names}
    sections = dict(API_SECTIONS)
    sections["Other names"] = [name for name in public if name not in placed]
    parts = []
    for title, names in sections.items():
        present = [name for name in names if name in public]
        if present:
            parts.append(f"## {title}\n\n" + "\n".join(_directive(n) for n in present))
    return "\n".join(parts)


def _insert_api_reference(app: Any, docname: str, source: list[str]) -> None:
    if docname == "api":
        source[0] = source[0].replace(API_MARKER, _api_reference())


def setup(app: Any) -> dict[str, Any]:
    """Register the hook that fills the API page."""
    app.connect("source-read", _insert_api_reference)
    return {"parallel_read_safe": True}
