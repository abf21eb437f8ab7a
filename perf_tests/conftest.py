"""The decode suite's defaults; every value can be overridden on the command line."""
