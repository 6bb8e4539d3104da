"""IPython profile names, checked before anything is created for them."""

from __future__ import annotations

import re

from ._errors import InvalidRequest

__all__ = ["check_profile_name"]

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
