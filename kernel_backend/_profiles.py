"""IPython profile names, checked before anything is created for them; what
a profile's configuration says of its launchers."""

from __future__ import annotations

import re
from typing import Any

from ._errors import InvalidRequest

__all__ = ["check_profile_name", "launchers_set"]

# Letters (any script), digits, '.', '-', '_': what names a profile folder.
_NAME = re.compile(r"[\w.-]+")


def check_profile_name(profile: str | None) -> str | None:
    """``profile`` itself if it is a profile's name; None stays None.

    A profile lives in ``IPYTHONDIR/profile_<name>``; a separator or ``..``
    in the name would put its folder, and the cluster files written there,
    anywhere on the disk.

    Raises
    ------
    InvalidRequest
        For an empty name, or one with a path separator, ``..``, spaces or
        other characters a folder name should not carry.
    """
    if profile is None:
        return None
    if not isinstance(profile, str) or not _NAME.fullmatch(profile) or ".." in profile:
        raise InvalidRequest(
            "a profile is a name (letters, digits, '.', '-', '_'), not a path:"
            f" {profile!r}"
        )
    return profile


def launchers_set(config: Any, option: str, *kinds: str) -> bool:
    """Whether ``config`` (a profile's, with paracell's options merged in)
    sets ``option`` for any launcher class whose name ends with one of
    ``kinds`` (``"EngineLauncher"`` covers ``LocalEngineLauncher``,
    ``SSHEngineLauncher``, ...)."""
    return any(
        option in section for name, section in config.items() if name.endswith(kinds)
    )
