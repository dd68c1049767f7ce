"""``python -m graphres``: the command line."""
from .cli import entry

entry()
