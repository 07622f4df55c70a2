"""r2v-bot: reference-to-video clips from a community's saved characters."""

__version__ = "0.1.0"
