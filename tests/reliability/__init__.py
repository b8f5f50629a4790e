"""The reliability and security suite (issue 7): faults, storms, crashes, hostile input, secrets.

Fast versions run in the default ``pytest``; ``AIMLMUSIC_SOAK=full`` (set by ``nox -s
reliability``) runs the full-size soaks. See ``docs/reliability.md``.
"""
