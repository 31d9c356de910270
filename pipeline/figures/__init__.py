"""Paper figures: one module per figure, each with a function tests call and a ``main(argv)`` CLI."""
