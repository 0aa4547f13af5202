"""Container images and Kubernetes manifests for SampleIQA (`python -m sampleiqa.deploy.render`)."""
