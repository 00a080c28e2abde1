"""The foundation every layer stands on: errors, events, settings, verdicts, records, tags.

Nothing here imports the rest of modelship (``make lint`` checks it).
"""
