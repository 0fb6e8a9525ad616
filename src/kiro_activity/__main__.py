"""``python -m kiro_activity`` is the ``kiro-activity`` command."""

from .cli import main

main()
