"""The command line: argparse only; each command is one call of a public function."""
