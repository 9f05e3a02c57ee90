"""The ``spatia`` command: wires the packages (world, model, server, client) into subcommands."""
