"""SampleIQA: portrait image quality scoring."""

__version__ = "0.1.0"
