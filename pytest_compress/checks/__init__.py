"""Checks, pytest-free: the parsed request, the check runner, the result and the caches.

Built on every layer below; the plugin is its only caller in this package.
"""
