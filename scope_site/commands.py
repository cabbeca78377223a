"""A management command base that turns a user's mistakes into one clear line instead of a traceback.

A file that does not exist, is a directory, is not UTF-8 or is not in the expected format, and a
request the services refuse (ApplicationError), end the command with CommandError's message and
exit code 1. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from routing.predictor.dataset import RecordError
from scope_site.errors import ApplicationError


class ScopeCommand(BaseCommand):
    def execute(self, *args: Any, **options: Any) -> Any:
        try:
            return super().execute(*args, **options)
        except ApplicationError as exc:
            raise CommandError(exc.message) from None
        except RecordError as exc:
            raise CommandError(str(exc)) from None
        except UnicodeDecodeError as exc:
            raise CommandError(f"a file is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except OSError as exc:
            where = f" {exc.filename}" if exc.filename else ""
            raise CommandError(f"cannot use{where}: {exc.strerror or exc}") from None


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (seeds)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value
