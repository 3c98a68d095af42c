"""Errors the course raises: each names the problem and the fix.

Every error a learner can meet through a helper is a :class:`CourseError` whose
message has two parts: what went wrong, and what to do about it. Notebooks and
widget panels print ``str(err)`` as it is, so the message must stand alone.
"""
from __future__ import annotations


class CourseError(Exception):
    """Base class: ``CourseError(problem, fix)`` renders as 'problem\\n  fix: fix'."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if not fix else f"{problem}\n  fix: {fix}")


class MissingToolError(CourseError):
    """A command-line tool (tcpdump, tshark, ip, ...) is not installed."""

    def __init__(self, tool: str, package: str | None = None, why: str = ""):
        package = package or tool
        super().__init__(
            f"`{tool}` is not installed{(' (' + why + ')') if why else ''}.",
            f"install it with `sudo apt-get install {package}` (Debian/Ubuntu), "
            f"or run `python3 course.py study` as root, which installs it for you.",
        )
        self.tool = tool


class PrivilegeError(CourseError):
    """A live experiment needs a capability this process does not have."""


class UnsafeTargetError(CourseError):
    """Traffic was about to go somewhere other than loopback or a course namespace."""


class BadPcapError(CourseError):
    """A capture file is missing, truncated, corrupt or of an unsupported kind."""


class ParameterError(CourseError, ValueError):
    """An experiment or widget parameter is out of range or of the wrong kind."""


class CorpusError(CourseError):
    """The recorded corpus has no file for a request, or a file fails verification."""
