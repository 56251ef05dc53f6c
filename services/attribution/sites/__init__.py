"""Tracking pixels and site events: what visitors do on sponsors' sites."""
