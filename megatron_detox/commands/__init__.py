"""Command-line subcommands: each module parses arguments and calls a package."""
