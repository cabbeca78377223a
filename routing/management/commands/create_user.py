from __future__ import annotations

import getpass
import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from routing.dashboard.accounts import user_create_or_update
from routing.dashboard.roles import Role
from scope_site.errors import ApplicationError


class Command(BaseCommand):
    help = (
        "Create (or update) a web UI user with one role: operator, auditor or viewer. "
        "The password comes from SCOPE_USER_PASSWORD, else it is asked for."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--role", required=True, choices=[r.value for r in Role])
        parser.add_argument("--email", default="")

    def handle(self, *args: Any, **options: Any) -> None:
        password = os.environ.get("SCOPE_USER_PASSWORD", "")
        if not password:
            if not os.isatty(0):
                raise CommandError("set SCOPE_USER_PASSWORD or run interactively to type the password")
            password = getpass.getpass("Password: ")
            if password != getpass.getpass("Password (again): "):
                raise CommandError("the passwords differ")
        try:
            user, created = user_create_or_update(
                username=options["username"],
                role=Role(options["role"]),
                password=password,
                email=options["email"],
                actor="cli:create_user",
            )
        except ApplicationError as exc:
            raise CommandError(exc.message) from None
        verb = "created" if created else "updated"
        self.stdout.write(f"{verb} user {user.get_username()!r} with role {options['role']}")
