"""Command implementations behind `dcd <command>`."""
