"""Names listed in one line of a message: the first few, then how many more."""


def listed(names: list[str], shown: int = 4) -> str:
    """'a, b, c and 5 more' — or 'none' for no names."""
    head = ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")
    return head or "none"
