"""The command-line interface and its TOML configurations."""
