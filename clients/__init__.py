"""SampleIQA clients stage."""
