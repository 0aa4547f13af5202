class PreprocessError(ValueError):
    """A per-item input error. `code` is one of sampleiqa.runtime.contracts.ERROR_CODES."""

    def __init__(self, code: str, message: str):
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.detail = message
