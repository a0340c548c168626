"""Feature-job settings (environment only; see .env.example)."""

from shared.settings import CommonSettings


class Settings(CommonSettings):
    """``FTI_DATABASE_URL`` and ``FTI_DATA_DIR``; the source location lives in the spec."""
