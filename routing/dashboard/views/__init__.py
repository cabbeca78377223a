"""Thin dashboard views: parse, authorise (routing.dashboard.roles), call a selector or service, render."""
