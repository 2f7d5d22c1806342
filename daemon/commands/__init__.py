"""acquirectl subcommands that live outside the core client (one module per family)."""
