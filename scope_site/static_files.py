"""Static files for the web UI: WhiteNoise, serving STATIC_ROOT only once collectstatic has filled it.

The project serves its assets two ways: from the finders (``static/`` and the apps' own files,
``WHITENOISE_USE_FINDERS``), so a fresh checkout, ``make run`` and the tests need no
collectstatic; and from STATIC_ROOT, which ``make serve`` fills. Stock WhiteNoise always indexes
STATIC_ROOT and warns "No directory at: …" when collectstatic has not run, although the finders
already serve every file it would hold. Here a missing STATIC_ROOT is skipped in that case only;
without finders it is still the misconfiguration WhiteNoise warns about.
"""

from __future__ import annotations

import os

from whitenoise.middleware import WhiteNoiseMiddleware


class StaticFilesMiddleware(WhiteNoiseMiddleware):
    def add_files(self, root: str, prefix: str | None = None) -> None:
        # WhiteNoiseMiddleware.__init__ sets use_finders and static_root before it adds STATIC_ROOT
        static_root = getattr(self, "static_root", None)
        uncollected = static_root is not None and os.fspath(root) == os.fspath(static_root)
        if uncollected and self.use_finders and not os.path.isdir(root):
            return
        super().add_files(root, prefix)
