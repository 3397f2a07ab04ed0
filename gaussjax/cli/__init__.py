"""The command line: one parser over the library."""
