class PreprocessError(ValueError):
    """A per-item input error. `code` is one of sampleiqa.contracts.ERROR_CODES."""

    def __init__(self, code: str, message: str):
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.detail = message

    @staticmethod
    def split(message: str) -> tuple[str, str]:
        """Recover (code, detail) from a "[code] detail" message, e.g. one returned by Triton."""
        start = message.find("[")
        end = message.find("]", start)
        if start >= 0 and end > start:
            return message[start + 1 : end], message[end + 1 :].strip()
        return "server", message.strip()
