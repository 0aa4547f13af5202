"""Training data: datasets and the crops they feed the model."""
