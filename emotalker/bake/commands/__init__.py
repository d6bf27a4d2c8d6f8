"""One module a command group; each exposes `add_parsers(subparsers)`."""
