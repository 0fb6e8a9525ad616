"""``python -m kiro_activity`` is the ``kiro-activity`` command."""

if __name__ == "__main__":  # not when a batch checker process (spawn) imports __main__
    from .cli import main

    main()
