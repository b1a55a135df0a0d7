"""Thin routers: parse, check ownership, call stoker.client / the api services, render."""
