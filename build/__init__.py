"""SampleIQA build stage."""
