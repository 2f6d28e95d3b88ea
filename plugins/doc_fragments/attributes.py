# -*- coding: utf-8 -*-
# Copyright: pydeploy.web contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """The attributes every pydeploy.web module documents, with their meaning; a module
    adds C(support) and C(details) (extends_documentation_fragment: pydeploy.web.attributes
    and pydeploy.web.attributes.platform)."""

    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    description: Can run in check mode and return a prediction of the changed status without modifying the target.
  diff_mode:
    description: Returns details on what has changed (or would change in check mode) when run in diff mode.
"""

    PLATFORM = r"""
options: {}
attributes:
  platform:
    description: Target operating systems (families) the module can be run against.
    support: full
    platforms: posix
"""
