"""The operator and auditor web UI (server-rendered pages with HTMX partials)."""
