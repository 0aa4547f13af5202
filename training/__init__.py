"""SampleIQA training stage."""
