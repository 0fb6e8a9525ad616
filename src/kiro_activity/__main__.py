"""``python -m kiro_activity`` is the ``kiro-activity`` command."""

from .cli import main

if __name__ == "__main__":  # not when a batch checker process (spawn) looks at __main__
    main()
