"""The `emotalker` command line: one module a command group, each exposing `add_parsers(subparsers)`."""
