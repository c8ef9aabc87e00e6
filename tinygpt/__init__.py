"""The `tinygpt` command (tinygpt/cli.py) and the small-run profile (tinygpt/small.py)."""
