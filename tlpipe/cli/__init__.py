"""The command line: each module a group of commands, each command a few lines over the library."""
