"""The toolkit's version, recorded in every manifest it writes (kept equal to pyproject.toml's)."""
__version__ = "0.1.0"
