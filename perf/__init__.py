"""SampleIQA perf stage."""
