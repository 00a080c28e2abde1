"""Files modelship ships as data: policies, compiled pipelines, Containerfiles.

Their sources are the repository's top-level folders (see pyproject's ``package-dir``); read them
with :mod:`modelship.core.assets`, never by a path relative to a source file.
"""
