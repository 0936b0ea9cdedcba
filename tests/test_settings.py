"""Settings: typed, from NEWSLETTER_* in the environment or .env, and every one documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from newsletter.errors import ConfigError
from newsletter.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_the_embedded_ones() -> None:
    settings = load_settings()
    assert settings.database_url == "sqlite:///newsletter.db"
    assert settings.email_backend == "file"
    assert settings.outbox_dir == Path("outbox")


def test_the_ranking_defaults_are_the_rankers_own() -> None:
    """bench/relevance.py measures the ranker with its own defaults; a default install must rank the same way."""
    from newsletter.score import lexical

    settings = Settings(_env_file=None)
    assert settings.trending_weight == lexical.TRENDING_WEIGHT
    assert settings.recency_penalty_per_day == lexical.RECENCY_PENALTY_PER_DAY


def test_environment_overrides_dotenv(tmp_path, monkeypatch) -> None:
    (tmp_path / ".env").write_text("NEWSLETTER_SMTP_HOST=relay.example.org\nNEWSLETTER_SMTP_PORT=2525\n")
    monkeypatch.setenv("NEWSLETTER_SMTP_PORT", "465")
    settings = load_settings()
    assert (settings.smtp_host, settings.smtp_port) == ("relay.example.org", 465)


def test_postgres_urls_use_psycopg_3(monkeypatch) -> None:
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", "postgresql://u@db/news")
    assert load_settings().database_url == "postgresql+psycopg://u@db/news"


def test_an_invalid_value_names_the_setting(monkeypatch) -> None:
    monkeypatch.setenv("NEWSLETTER_SMTP_SECURITY", "ssl-please")
    with pytest.raises(ConfigError, match="NEWSLETTER_SMTP_SECURITY is invalid"):
        load_settings()


def test_env_example_lists_every_setting_with_a_comment() -> None:
    text = (ROOT / ".env.example").read_text()
    listed = re.findall(r"^#?\s*NEWSLETTER_([A-Z_]+)=", text, flags=re.M)
    assert sorted(listed) == sorted(name.upper() for name in Settings.model_fields)
    for name in listed:
        assert re.search(rf"^# .+\n#?\s*NEWSLETTER_{name}=", text, flags=re.M), f"NEWSLETTER_{name} has no comment line"


def test_a_list_name_may_hold_any_printable_text_but_no_line_break() -> None:
    """A zero-width joiner belongs in an emoji, a ZWNJ in a Persian name; a line break would start a header."""
    for name in ("👩\u200d🔬 Papers", "خبرنامه\u200cی مقالات", "Paper digest"):
        assert Settings(list_name=name, _env_file=None).list_name == name
    for name in ("Digest\r\nBcc: x@y.org", "Digest\u2028Bcc: x", "Digest\x00"):
        with pytest.raises(ValidationError):
            Settings(list_name=name, _env_file=None)
