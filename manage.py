#!/usr/bin/env python
from __future__ import annotations

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "scope_site.settings")
    from django.core.management import execute_from_command_line

    from scope_site.env import ConfigurationError

    try:
        execute_from_command_line(sys.argv)
    except ConfigurationError as exc:  # a bad environment variable: its one-line message, no traceback
        sys.exit(f"configuration error: {exc}")


if __name__ == "__main__":
    main()
