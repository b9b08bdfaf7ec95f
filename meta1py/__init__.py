"""meta1py: a mail transfer agent following MeTA1's design."""

__version__ = "0.1.0"
